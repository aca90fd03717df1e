//! End-to-end: `medgemmad serve` refuses a bad configuration, naming the key,
//! and a model that cannot be loaded, with a clear message; both before
//! anything is served, with the documented non-zero exit codes (2: config,
//! 3: model load). No model assets needed.

mod e2e_support;

use std::time::Duration;

use e2e_support::*;

const EXIT: Duration = Duration::from_secs(60);

fn cpu() -> Setup {
    Setup {
        backend: "cpu",
        ..Setup::default()
    }
}

/// Runs with the generated config after `edit`; returns (exit code, stderr).
fn run_edited(setup: &Setup, edit: impl Fn(String) -> String) -> (i32, String) {
    let dir = tempfile::tempdir().unwrap();
    let path = write_config(dir.path(), setup);
    let text = edit(std::fs::read_to_string(&path).unwrap());
    let (status, log) = run_to_exit(Some(&text), None, EXIT);
    (status.code().expect("exit code, not a signal"), log)
}

#[test]
fn unknown_key_is_named_and_exits_2() {
    let (code, log) = run_edited(&cpu(), |t| t.replace("queue_length", "queue_lenght"));
    assert_eq!(code, 2, "{log}");
    assert!(log.contains("queue_lenght"), "{log}");
    assert!(!log.contains("ready:"), "nothing started");
}

#[test]
fn out_of_range_value_is_named_and_exits_2() {
    let (code, log) = run_edited(&cpu(), |t| {
        t.replace("queue_length = 4", "queue_length = 0")
    });
    assert_eq!(code, 2, "{log}");
    assert!(log.contains("`engine.queue_length`"), "{log}");
}

#[test]
fn missing_required_key_is_named_and_exits_2() {
    let (code, log) = run_edited(&cpu(), |t| t.replace("demo = true\n", ""));
    assert_eq!(code, 2, "{log}");
    assert!(log.contains("demo"), "{log}");
}

#[test]
fn missing_model_file_names_model_path_and_exits_2() {
    let (code, log) = run_edited(&cpu(), |t| t.replace("placeholder.gguf", "absent.gguf"));
    assert_eq!(code, 2, "{log}");
    assert!(
        log.contains("`model.path`") && log.contains("does not exist"),
        "{log}"
    );
}

#[test]
fn wrong_type_is_named_and_exits_2() {
    let (code, log) = run_edited(&cpu(), |t| {
        t.replace("context_length = 4096", "context_length = \"big\"")
    });
    assert_eq!(code, 2, "{log}");
    assert!(log.contains("context_length"), "{log}");
}

#[test]
fn cuda_backend_is_refused_clearly() {
    let (code, log) = run_edited(&cpu(), |t| {
        t.replace("backend = \"cpu\"", "backend = \"cuda\"")
    });
    assert_eq!(code, 2, "{log}");
    assert!(
        log.contains("`engine.backend`") && log.contains("this build has no CUDA support"),
        "{log}"
    );
}

#[test]
fn relative_socket_path_is_refused() {
    let (code, log) = run_edited(&cpu(), |t| {
        let start = t.find("ui_socket = ").unwrap();
        let end = start + t[start..].find('\n').unwrap();
        format!("{}ui_socket = \"ui.sock\"{}", &t[..start], &t[end..])
    });
    assert_eq!(code, 2, "{log}");
    assert!(log.contains("`server.ui_socket`"), "{log}");
}

#[test]
fn missing_file_is_a_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    let out = std::process::Command::new(BIN)
        .args(["serve", "--config"])
        .arg(dir.path().join("nope.toml"))
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let log = String::from_utf8_lossy(&out.stderr);
    assert!(log.contains("cannot read the configuration file"), "{log}");
}

#[test]
fn load_failure_exits_3_with_a_clear_message() {
    // The placeholder .gguf passes validation (it exists) but is not a model.
    let (status, log) = run_to_exit(None, Some(&cpu()), EXIT);
    assert_eq!(status.code(), Some(3), "{log}");
    assert!(log.contains("cannot load the model"), "{log}");
    assert!(!log.contains("ready:"), "{log}");
}

#[cfg(not(feature = "test-engine"))]
#[test]
fn scripted_backend_is_refused_without_the_test_feature() {
    let (code, log) = run_edited(&Setup::default(), |t| t);
    assert_eq!(code, 2, "{log}");
    assert!(log.contains("`engine.backend`"), "{log}");
}
