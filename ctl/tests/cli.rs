//! CLI tests of `medgemmactl`: every command and its documented exit codes,
//! against a real `medgemmad serve` where a daemon is needed.
//!
//! The daemon binary: `$MEDGEMMAD` if set, else `medgemmad` next to this
//! package's binary in the target directory. It must be built with the
//! scripted engine first:
//! `cargo build -p medgemmad --features test-engine` (scripts/test.sh does).
//! The `setup` tests that need a tokenizer use `scripts/fetch-assets.sh`'s
//! `tokenizer.json` (`$MEDGEMMA_ASSETS` or `~/.cache/medgemma-assets`) and
//! skip without it.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

const CTL: &str = env!("CARGO_BIN_EXE_medgemmactl");

fn daemon_bin() -> PathBuf {
    if let Some(p) = std::env::var_os("MEDGEMMAD") {
        return PathBuf::from(p);
    }
    let p = Path::new(CTL).with_file_name("medgemmad");
    assert!(
        p.is_file(),
        "{} not found: run `cargo build -p medgemmad --features test-engine` first, or set MEDGEMMAD",
        p.display()
    );
    p
}

fn ctl(args: &[&str]) -> Output {
    Command::new(CTL)
        .args(args)
        .output()
        .expect("run medgemmactl")
}

fn code(o: &Output) -> i32 {
    o.status.code().expect("exit code")
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn json(o: &Output) -> serde_json::Value {
    serde_json::from_slice(&o.stdout).unwrap_or_else(|_| {
        panic!(
            "not JSON: {}\n{}",
            stdout(o),
            String::from_utf8_lossy(&o.stderr)
        )
    })
}

/// A scripted daemon with an admin socket and audit keys in a temp dir.
struct Daemon {
    child: Child,
    dir: tempfile::TempDir,
    log: Arc<Mutex<String>>,
}

impl Daemon {
    fn config(&self) -> String {
        self.dir.path().join("medgemmad.toml").display().to_string()
    }
    fn admin(&self) -> String {
        self.dir.path().join("admin.sock").display().to_string()
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn start_daemon() -> Daemon {
    start_daemon_with("open", None)
}

/// A daemon with `auth.mode = auth`; `before` runs on its directory (after
/// the configuration is written) before the daemon starts.
fn start_daemon_with(auth: &str, before: Option<&dyn Fn(&Path)>) -> Daemon {
    let dir = tempfile::Builder::new().prefix("mgctl").tempdir().unwrap();
    let d = dir.path();
    let keys = d.join("audit-key");
    std::fs::create_dir_all(&keys).unwrap();
    std::fs::create_dir_all(d.join("audit")).unwrap();
    let initial = medgemma_audit::create_key(&keys.join("current")).unwrap();
    std::fs::write(d.join("initial-key.txt"), initial.display()).unwrap();
    medgemma_audit::create_content_key(&keys.join("content")).unwrap();
    let pk8 = medgemma_audit::generate_signing_key().unwrap();
    std::fs::write(d.join("signing.pk8"), &pk8).unwrap();
    let public = medgemma_audit::signing_public_key(&pk8).unwrap();
    std::fs::write(d.join("signing.pub"), hex::encode(public)).unwrap();
    std::fs::write(d.join("placeholder.gguf"), b"not a model").unwrap();
    let p = |name: &str| format!("{:?}", d.join(name).display().to_string());
    let text = format!(
        "[model]\npath = {}\nlabel = \"Scripted\"\ndemo = true\n\n[engine]\nbackend = \"scripted\"\ncontext_length = 4096\nmax_new_tokens = 100\n\n[server]\nui_socket = {}\nadmin_socket = {}\n\n[audit]\ndir = {}\nkey_file = {}\ncontent_key_file = {}\nsigning_key_file = {}\n\n[answers]\nterms_dir = {}\n\n[auth]\nmode = \"{auth}\"\naccounts_dir = {}\n",
        p("placeholder.gguf"),
        p("ui.sock"),
        p("admin.sock"),
        p("audit"),
        p("audit-key/current"),
        p("audit-key/content"),
        p("signing.pk8"),
        p("terms"),
        p("accounts"),
    );
    std::fs::write(d.join("medgemmad.toml"), text).unwrap();
    if let Some(before) = before {
        before(d);
    }
    let mut child = Command::new(daemon_bin())
        .args(["serve", "--insecure-no-sandbox", "--config"])
        .arg(d.join("medgemmad.toml"))
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start medgemmad");
    let log = Arc::new(Mutex::new(String::new()));
    let sink = Arc::clone(&log);
    let stderr = child.stderr.take().unwrap();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            eprintln!("[daemon] {line}");
            let mut l = sink.lock().unwrap();
            l.push_str(&line);
            l.push('\n');
        }
    });
    let daemon = Daemon { child, dir, log };
    let t0 = Instant::now();
    let mut daemon = daemon;
    loop {
        let ready = daemon.log.lock().unwrap().contains("medgemmad: ready:");
        if ready && daemon.dir.path().join("admin.sock").exists() {
            return daemon;
        }
        if let Some(s) = daemon.child.try_wait().unwrap() {
            panic!(
                "medgemmad exited ({s}); it must be built with --features test-engine:\n{}",
                daemon.log.lock().unwrap()
            );
        }
        assert!(t0.elapsed() < Duration::from_secs(30), "daemon not ready");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// One chat turn over the UI socket (raw HTTP/1.1), so the log has answers.
fn chat(sock: &Path) {
    use std::io::{Read, Write};
    let body = r#"{"message":"CANARY-ctl fake patient text","max_new_tokens":3}"#;
    let mut s = std::os::unix::net::UnixStream::connect(sock).unwrap();
    write!(
        s,
        "POST /api/chat HTTP/1.1\r\nHost: localhost:6006\r\nOrigin: http://localhost:6006\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )
    .unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).unwrap();
    assert!(out.contains("event: done"), "{out}");
}

#[test]
fn status_of_a_running_daemon_is_degraded_without_sandbox_then_not_running() {
    let mut d = start_daemon();
    chat(&d.dir.path().join("ui.sock"));
    let t0 = Instant::now();
    let o = ctl(&["--config", &d.config(), "status"]);
    eprintln!("status took {:?}", t0.elapsed());
    // --insecure-no-sandbox: degraded, exit 1, and the reason is named.
    assert_eq!(code(&o), 1, "{}", stdout(&o));
    assert!(stdout(&o).contains("sandbox"), "{}", stdout(&o));
    // The scripted engine answers one turn at a time.
    assert!(stdout(&o).contains(" running of 1, "), "{}", stdout(&o));
    let o = ctl(&["--json", "status", "--socket", &d.admin()]);
    assert_eq!(code(&o), 1);
    let v = json(&o);
    assert_eq!(v["running"], true);
    assert_eq!(v["health"]["status"], "degraded");
    assert_eq!(v["queue"]["served"], 1);
    assert_eq!(v["queue"]["max_concurrent"], 1);
    assert!(
        v["audit"]["chain"]["next_seq"].as_u64().unwrap() >= 4,
        "{v}"
    );
    assert!(v["backend"]["reason"].is_string());
    assert!(v["memory"]["rss_bytes"].as_u64().unwrap() > 0);
    assert!(!v.to_string().contains("CANARY"));

    // Stopped: exit 2.
    let _ = d.child.kill();
    let _ = d.child.wait();
    let o = ctl(&["--json", "status", "--socket", &d.admin()]);
    assert_eq!(code(&o), 2);
    assert_eq!(json(&o)["running"], false);
}

#[test]
fn status_without_a_daemon_exits_2() {
    let o = ctl(&["status", "--socket", "/nonexistent/admin.sock"]);
    assert_eq!(code(&o), 2);
    assert!(stdout(&o).contains("not running"), "{}", stdout(&o));
}

#[test]
fn audit_export_and_verify_name_the_first_bad_line() {
    let d = start_daemon();
    chat(&d.dir.path().join("ui.sock"));
    chat(&d.dir.path().join("ui.sock"));
    let dir = d.dir.path();
    let out = dir.join("export");
    let o = ctl(&[
        "--config",
        &d.config(),
        "--json",
        "audit",
        "export",
        "--since",
        "2020-01-01",
        "--until",
        "now",
        "--out",
        out.to_str().unwrap(),
    ]);
    assert_eq!(
        code(&o),
        0,
        "{}{}",
        stdout(&o),
        String::from_utf8_lossy(&o.stderr)
    );
    assert!(json(&o)["records"].as_u64().unwrap() >= 6);

    let key_file = dir.join("initial-key.txt");
    let pub_file = dir.join("signing.pub");
    let verify = |path: &Path| {
        ctl(&[
            "audit",
            "verify",
            path.to_str().unwrap(),
            "--initial-key-file",
            key_file.to_str().unwrap(),
        ])
    };
    let o = verify(&dir.join("audit"));
    assert_eq!(code(&o), 0, "{}", stdout(&o));
    assert!(stdout(&o).starts_with("OK:"), "{}", stdout(&o));
    let o = ctl(&[
        "--json",
        "audit",
        "verify",
        out.to_str().unwrap(),
        "--initial-key-file",
        key_file.to_str().unwrap(),
        "--public-key",
        pub_file.to_str().unwrap(),
    ]);
    assert_eq!(code(&o), 0, "{}", stdout(&o));
    let v = json(&o);
    assert_eq!(v["checks"]["signature"], true);
    assert_eq!(v["checks"]["macs"], true);

    // Tamper with line 3 of the export: verify names it, exit 1.
    let file = std::fs::read_dir(&out)
        .unwrap()
        .map(|e| e.unwrap().path())
        .find(|p| p.extension().is_some_and(|e| e == "jsonl"))
        .unwrap();
    let text = std::fs::read_to_string(&file).unwrap();
    let mut lines: Vec<String> = text.lines().map(str::to_owned).collect();
    lines[2] = lines[2].replacen("\"seq\":2", "\"seq\":2 ", 1).replacen(
        "latency_ms\":",
        "latency_ms\":1",
        1,
    );
    std::fs::write(&file, lines.join("\n") + "\n").unwrap();
    let o = ctl(&[
        "audit",
        "verify",
        out.to_str().unwrap(),
        "--initial-key-file",
        key_file.to_str().unwrap(),
    ]);
    assert_eq!(code(&o), 1, "{}", stdout(&o));
    assert!(stdout(&o).starts_with("FAILED:"), "{}", stdout(&o));
    assert!(
        stdout(&o).contains(file.file_name().unwrap().to_str().unwrap()),
        "{}",
        stdout(&o)
    );

    // A malformed key cannot run: exit 3.
    let o = ctl(&[
        "audit",
        "verify",
        out.to_str().unwrap(),
        "--initial-key",
        "nonsense",
    ]);
    assert_eq!(code(&o), 3);
    // The export directory must be new: exit 3.
    let o = ctl(&[
        "--config",
        &d.config(),
        "audit",
        "export",
        "--since",
        "2020-01-01",
        "--out",
        out.to_str().unwrap(),
    ]);
    assert_eq!(code(&o), 3);
}

#[test]
fn gpu_without_a_driver_explains_the_cpu_fallback() {
    let o = ctl(&["--config", "/nonexistent.toml", "gpu"]);
    if code(&o) == 2 {
        assert!(stdout(&o).contains("CPU"), "{}", stdout(&o));
        let o = ctl(&["--config", "/nonexistent.toml", "--json", "gpu"]);
        assert_eq!(json(&o)["fallback"], "cpu");
    } else {
        // A machine with a driver: a GPU list.
        assert!(stdout(&o).contains("GPU"), "{}", stdout(&o));
    }
}

#[test]
fn doctor_reports_each_check_with_a_fix() {
    let d = start_daemon();
    let o = ctl(&["--config", &d.config(), "--json", "doctor"]);
    let v = json(&o);
    let checks = v["checks"].as_array().unwrap();
    let names: Vec<&str> = checks.iter().map(|c| c["name"].as_str().unwrap()).collect();
    for n in [
        "nvidia driver",
        "/dev/nvidia-uvm",
        "gpu memory",
        "model pins",
        "disk space",
        "admin socket",
        "landlock",
        "seccomp",
        "audit log",
        "clock",
    ] {
        assert!(names.contains(&n), "{n} missing: {names:?}");
    }
    for c in checks {
        if c["level"] != "ok" {
            assert!(c["fix"].as_str().is_some_and(|f| f.len() > 10), "{c}");
        }
    }
    let by = |n: &str| checks.iter().find(|c| c["name"] == n).unwrap()["level"].clone();
    assert_eq!(by("audit log"), "ok");
    assert_eq!(by("admin socket"), "ok");
    // Exit code: the worst level.
    let expected = match v["result"].as_str().unwrap() {
        "ok" => 0,
        "warn" => 1,
        _ => 2,
    };
    assert_eq!(code(&o), expected);
    // Without configuration: failures, exit 2.
    let o = ctl(&["--config", "/nonexistent.toml", "doctor"]);
    assert_eq!(code(&o), 2);
    assert!(
        stdout(&o).contains("fix: run medgemmactl setup"),
        "{}",
        stdout(&o)
    );
}

fn tokenizer_asset() -> Option<PathBuf> {
    let dir = std::env::var_os("MEDGEMMA_ASSETS")
        .map(PathBuf::from)
        .or_else(|| {
            std::env::var_os("HOME").map(|h| Path::new(&h).join(".cache/medgemma-assets"))
        })?;
    let t = dir.join("tokenizer/tokenizer.json");
    if t.is_file() {
        Some(t)
    } else {
        eprintln!("SKIP: no tokenizer.json; run scripts/fetch-assets.sh");
        None
    }
}

#[test]
fn setup_pins_creates_keys_once_and_refuses_an_altered_model() {
    let fixture = Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/fixtures/tiny_a");
    let tmp = tempfile::tempdir().unwrap();
    let model = tmp.path().join("model");
    std::fs::create_dir_all(&model).unwrap();
    for f in [
        "config.json",
        "model-00001-of-00002.safetensors",
        "model-00002-of-00002.safetensors",
        "model.safetensors.index.json",
    ] {
        std::fs::copy(fixture.join(f), model.join(f)).unwrap();
    }
    let state = tmp.path().join("state");
    let config = tmp.path().join("etc/medgemmad.toml");
    let args = |tok: Option<&Path>| {
        let mut a = vec![
            "--config".to_owned(),
            config.display().to_string(),
            "--json".to_owned(),
            "setup".to_owned(),
            "--model".to_owned(),
            model.display().to_string(),
            "--state-dir".to_owned(),
            state.display().to_string(),
            "--run-dir".to_owned(),
            tmp.path().display().to_string(),
        ];
        if let Some(t) = tok {
            a.push("--tokenizer".to_owned());
            a.push(t.display().to_string());
        }
        a
    };
    let run = |a: Vec<String>| Command::new(CTL).args(a).output().unwrap();

    // No tokenizer: the model does not validate, exit 1, the sentence says what to give.
    let o = run(args(None));
    assert_eq!(code(&o), 1, "{}", stdout(&o));
    assert!(json(&o)["error"].as_str().unwrap().contains("--tokenizer"));
    // A missing model: exit 3.
    let o = ctl(&[
        "setup",
        "--model",
        "/nonexistent/model",
        "--state-dir",
        state.to_str().unwrap(),
    ]);
    assert_eq!(code(&o), 3);

    let Some(tok) = tokenizer_asset() else { return };
    let o = run(args(Some(&tok)));
    assert_eq!(
        code(&o),
        0,
        "{}{}",
        stdout(&o),
        String::from_utf8_lossy(&o.stderr)
    );
    let v = json(&o);
    // Every decoder tensor was checked by the engine's loader (tiny_a: 7 layers).
    assert!(
        v["validation"]
            .as_str()
            .unwrap()
            .contains(&format!("{} tensors checked", 1 + 7 * 13 + 1)),
        "{v}"
    );
    // No NVIDIA driver here: the CPU, and the reason says so.
    if !Path::new("/dev/nvidiactl").exists() {
        assert_eq!(v["backend"]["kind"], "cpu", "{v}");
        assert!(
            v["backend"]["reason"]
                .as_str()
                .unwrap()
                .contains("no NVIDIA driver"),
            "{v}"
        );
        // One conversation at a time on the CPU.
        assert_eq!(v["backend"]["max_concurrent_generations"], 1, "{v}");
        let text = std::fs::read_to_string(&config).unwrap();
        let written: toml::Table = text.parse().unwrap();
        assert_eq!(written["engine"]["backend"].as_str(), Some("cpu"), "{text}");
        assert_eq!(
            written["engine"]["max_concurrent_generations"].as_integer(),
            Some(1),
            "{text}"
        );
    }
    let initial = v["initial_key"].as_str().expect("initial key shown once");
    assert!(medgemma_audit::InitialKey::parse(initial).is_ok());
    assert_eq!(v["pins"].as_array().unwrap().len(), 5);
    assert!(config.is_file() && state.join("audit-key/current").is_file());
    let text = std::fs::read_to_string(&config).unwrap();
    assert!(
        text.contains("pins_file") && text.contains("signing_key_file"),
        "{text}"
    );

    // Re-run: keys kept, the initial key not shown again, pins re-verified.
    let o = run(args(Some(&tok)));
    assert_eq!(code(&o), 0, "{}", stdout(&o));
    assert!(json(&o)["initial_key"].is_null());

    // Alter one byte at the end of a shard: exit 1 naming the file.
    let shard = model.join("model-00002-of-00002.safetensors");
    let mut bytes = std::fs::read(&shard).unwrap();
    let last = bytes.len() - 1;
    bytes[last] ^= 0x55;
    std::fs::write(&shard, &bytes).unwrap();
    let o = run(args(Some(&tok)));
    assert_eq!(code(&o), 1, "{}", stdout(&o));
    let err = json(&o)["error"].as_str().unwrap().to_owned();
    assert!(
        err.contains("model-00002-of-00002.safetensors") && err.contains("altered"),
        "{err}"
    );
    // Half copied: size differs.
    bytes.truncate(last);
    std::fs::write(&shard, &bytes).unwrap();
    let o = run(args(Some(&tok)));
    assert_eq!(code(&o), 1);
    assert!(json(&o)["error"].as_str().unwrap().contains("half copied"));
}

#[test]
fn usage_errors_exit_64_and_help_exits_0() {
    assert_eq!(code(&ctl(&["frobnicate"])), 64);
    assert_eq!(code(&ctl(&["audit", "export"])), 64);
    let o = ctl(&["--help"]);
    assert_eq!(code(&o), 0);
    assert!(stdout(&o).contains("Exit codes"));
}

#[test]
fn man_pages_and_completions_come_from_the_cli_definition() {
    let tmp = tempfile::tempdir().unwrap();
    let o = ctl(&["man", "--out", tmp.path().to_str().unwrap()]);
    assert_eq!(code(&o), 0);
    for page in [
        "medgemmactl.1",
        "medgemmactl-status.1",
        "medgemmactl-audit-verify.1",
    ] {
        let text = std::fs::read_to_string(tmp.path().join(page)).unwrap();
        assert!(text.contains(".TH"), "{page}");
    }
    let o = ctl(&["completions", "bash"]);
    assert_eq!(code(&o), 0);
    assert!(stdout(&o).contains("medgemmactl"));
    assert_eq!(code(&ctl(&["completions", "tcsh"])), 64);
}

/// Every record of the log in `dir`, oldest first.
fn records(dir: &Path) -> Vec<serde_json::Value> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| {
            p.extension().is_some_and(|e| e == "jsonl")
                && p.file_name()
                    .is_some_and(|n| n.to_string_lossy().starts_with("audit-"))
        })
        .collect();
    files.sort();
    files
        .iter()
        .flat_map(|f| {
            std::fs::read_to_string(f)
                .unwrap()
                .lines()
                .map(|l| serde_json::from_str(l).unwrap())
                .collect::<Vec<_>>()
        })
        .collect()
}

fn my_uid() -> u32 {
    use std::os::unix::fs::MetadataExt;
    std::fs::metadata("/proc/self").unwrap().uid()
}

/// An export is itself audited: through the daemon's admin socket while it
/// runs, a failed attempt too, and written directly while it is stopped;
/// the chain still verifies and the daemon starts again on that log.
#[test]
fn audit_export_is_recorded_through_the_daemon_or_directly() {
    let mut d = start_daemon();
    chat(&d.dir.path().join("ui.sock"));
    let dir = d.dir.path().to_path_buf();
    let config = d.config();
    let export = |out: &Path| {
        ctl(&[
            "--config",
            &config,
            "--json",
            "audit",
            "export",
            "--since",
            "2020-01-01",
            "--out",
            out.to_str().unwrap(),
        ])
    };
    let actor = format!("uid-{}", my_uid());

    let o = export(&dir.join("export-1"));
    assert_eq!(code(&o), 0, "{}", stdout(&o));
    assert_eq!(json(&o)["recorded"], "by medgemmad");
    let last = records(&dir.join("audit")).pop().unwrap();
    assert_eq!(last["event"], "export", "{last}");
    assert_eq!(last["kind"], "audit_log", "{last}");
    assert_eq!(last["outcome"], "ok", "{last}");
    assert_eq!(last["actor"], actor.as_str(), "{last}");

    // The same (now non-empty) directory again: the export fails, exit 3,
    // and the failed attempt is recorded too.
    let o = export(&dir.join("export-1"));
    assert_eq!(code(&o), 3, "{}", stdout(&o));
    let last = records(&dir.join("audit")).pop().unwrap();
    assert_eq!(
        (&last["event"], &last["outcome"]),
        (&"export".into(), &"error".into()),
        "{last}"
    );

    // Stopped (killed: the admin socket file stays, nobody listens): the
    // record is written directly.
    let _ = d.child.kill();
    let _ = d.child.wait();
    let before = records(&dir.join("audit")).len();
    let o = export(&dir.join("export-2"));
    assert_eq!(code(&o), 0, "{}", stdout(&o));
    assert_eq!(json(&o)["recorded"], "directly: medgemmad is not running");
    let all = records(&dir.join("audit"));
    assert_eq!(all.len(), before + 1, "one export record: {all:?}");
    let last = all.last().unwrap();
    assert_eq!(
        (&last["event"], &last["outcome"]),
        (&"export".into(), &"ok".into())
    );

    let key_file = dir.join("initial-key.txt");
    let o = ctl(&[
        "--json",
        "audit",
        "verify",
        dir.join("audit").to_str().unwrap(),
        "--initial-key-file",
        key_file.to_str().unwrap(),
    ]);
    assert_eq!(code(&o), 0, "{}", stdout(&o));
    assert_eq!(json(&o)["records"].as_u64().unwrap(), all.len() as u64);
}

/// The admin socket authorizes each connection by its peer credentials, not
/// only by the socket file's mode: with the file opened to everyone (0666),
/// an unprivileged user (uid 65534, no groups) is still disconnected without
/// an answer, `status` says so (exit 2), and the daemon logs the refusal.
/// Needs root (to run as another user); otherwise prints SKIPPED.
#[test]
fn status_from_a_non_admin_user_is_refused_by_peer_credentials() {
    use std::os::unix::fs::PermissionsExt;
    if my_uid() != 0 || !Path::new("/usr/bin/setpriv").exists() {
        eprintln!(
            "SKIPPED status_from_a_non_admin_user_is_refused_by_peer_credentials: needs root and setpriv"
        );
        return;
    }
    let d = start_daemon();
    std::fs::set_permissions(d.admin(), std::fs::Permissions::from_mode(0o666)).unwrap();
    std::fs::set_permissions(d.dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let o = Command::new("/usr/bin/setpriv")
        .args(["--reuid=65534", "--regid=65534", "--clear-groups", CTL])
        .args(["--json", "status", "--socket", &d.admin()])
        .output()
        .unwrap();
    assert_eq!(
        code(&o),
        2,
        "{}{}",
        stdout(&o),
        String::from_utf8_lossy(&o.stderr)
    );
    let v = json(&o);
    assert_eq!(v["running"], false, "{v}");
    assert!(v.to_string().contains("access refused"), "{v}");
    let t0 = Instant::now();
    while !d
        .log
        .lock()
        .unwrap()
        .contains("admin: refused a connection from uid 65534")
    {
        assert!(
            t0.elapsed() < Duration::from_secs(10),
            "{}",
            d.log.lock().unwrap()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    // Root, on the same socket, is answered.
    let o = ctl(&["--json", "status", "--socket", &d.admin()]);
    assert_eq!(json(&o)["running"], true);
}

/// `medgemmactl` with `stdin` on its standard input.
fn ctl_stdin(stdin: &str, args: &[&str]) -> Output {
    use std::io::Write;
    let mut child = Command::new(CTL)
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run medgemmactl");
    child
        .stdin
        .take()
        .unwrap()
        .write_all(stdin.as_bytes())
        .unwrap();
    child.wait_with_output().unwrap()
}

/// One login over the UI socket; the session cookie (`mgd_session=…`).
fn ui_login(sock: &Path, user: &str, password: &str) -> Result<String, String> {
    use std::io::{Read, Write};
    let body = serde_json::json!({ "user": user, "password": password }).to_string();
    let mut s = std::os::unix::net::UnixStream::connect(sock).unwrap();
    write!(
        s,
        "POST /api/login HTTP/1.1\r\nHost: localhost:6006\r\nOrigin: http://localhost:6006\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )
    .unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).unwrap();
    out.lines()
        .find_map(|l| l.strip_prefix("set-cookie: "))
        .map(|c| c.split(';').next().unwrap().to_owned())
        .ok_or(out)
}

const LI_PASSWORD: &str = "CANARY-ctl-pw-li-correct-horse";

#[test]
fn users_are_added_listed_disabled_and_audited_without_a_daemon() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let keys = d.join("audit-key");
    std::fs::create_dir_all(&keys).unwrap();
    std::fs::create_dir_all(d.join("audit")).unwrap();
    let initial = medgemma_audit::create_key(&keys.join("current")).unwrap();
    let text = format!(
        "[model]\npath = \"/srv/m.gguf\"\nlabel = \"M\"\ndemo = true\n\n[server]\nadmin_socket = {:?}\n\n[audit]\ndir = {:?}\nkey_file = {:?}\n\n[auth]\naccounts_dir = {:?}\n",
        d.join("admin.sock").display().to_string(),
        d.join("audit").display().to_string(),
        keys.join("current").display().to_string(),
        d.join("accounts").display().to_string(),
    );
    let config = d.join("medgemmad.toml");
    std::fs::write(&config, text).unwrap();
    let config = config.display().to_string();

    // No terminal and no --password-stdin: refused, nothing written.
    let o = ctl_stdin("", &["--config", &config, "user", "add", "dr.li"]);
    assert_eq!(code(&o), 3, "{}", String::from_utf8_lossy(&o.stderr));
    assert!(String::from_utf8_lossy(&o.stderr).contains("--password-stdin"));
    let o = ctl_stdin(
        "short\n",
        &[
            "--config",
            &config,
            "user",
            "add",
            "dr.li",
            "--password-stdin",
        ],
    );
    assert_eq!(code(&o), 3, "a password under 10 characters is refused");
    let o = ctl_stdin(
        &format!("{LI_PASSWORD}\n"),
        &[
            "--config",
            &config,
            "--json",
            "user",
            "add",
            "dr.li",
            "--password-stdin",
        ],
    );
    assert_eq!(code(&o), 0, "{}", String::from_utf8_lossy(&o.stderr));
    let id = json(&o)["id"].as_str().unwrap().to_owned();
    assert!(id.starts_with("acct-"), "{id}");
    let o = ctl_stdin(
        &format!("{LI_PASSWORD}\n"),
        &[
            "--config",
            &config,
            "user",
            "add",
            "dr.li",
            "--password-stdin",
        ],
    );
    assert_eq!(code(&o), 3, "a second dr.li");
    let o = ctl(&[
        "--config",
        &config,
        "--json",
        "user",
        "add",
        "audit.kim",
        "--role",
        "auditor",
        "--no-password",
    ]);
    assert_eq!(code(&o), 0);
    let o = ctl(&["--config", &config, "user", "disable", "dr.li"]);
    assert_eq!(code(&o), 0, "{}", stdout(&o));
    let o = ctl(&["--config", &config, "--json", "user", "list"]);
    let list = json(&o);
    assert_eq!(list["accounts"][0]["name"], "dr.li");
    assert_eq!(list["accounts"][0]["enabled"], false);
    assert_eq!(list["accounts"][1]["role"], "auditor");
    assert_eq!(list["accounts"][1]["password"], false);
    let o = ctl(&[
        "--config", &config, "--json", "user", "token", "create", "dr.li", "--label", "scripts",
    ]);
    let token = json(&o)["token"].as_str().unwrap().to_owned();
    let token_id = json(&o)["id"].as_str().unwrap().to_owned();
    let o = ctl(&[
        "--config", &config, "--json", "user", "token", "list", "dr.li",
    ]);
    assert_eq!(json(&o)["tokens"][0]["id"], token_id.as_str());
    assert!(!stdout(&o).contains(&token), "a token is shown once only");
    let o = ctl(&[
        "--config", &config, "user", "token", "revoke", "dr.li", &token_id,
    ]);
    assert_eq!(code(&o), 0);

    // Every change is in the chain, under the pseudonymous id; the names sit beside it.
    let recs = records(&d.join("audit"));
    let changes: Vec<&str> = recs
        .iter()
        .filter(|r| r["event"] == "account_change")
        .map(|r| r["change"].as_str().unwrap())
        .collect();
    assert_eq!(
        changes,
        [
            "created",
            "created",
            "disabled",
            "token_created",
            "token_revoked"
        ]
    );
    assert_eq!(
        recs.iter()
            .find(|r| r["event"] == "account_change")
            .unwrap()["account"],
        id.as_str()
    );
    let names = std::fs::read_to_string(d.join("audit/account-names.jsonl")).unwrap();
    assert!(names.contains("\"dr.li\"") && names.contains(&id));
    let report = medgemma_audit::verify(&d.join("audit"), Some(&initial), None).unwrap();
    assert!(report.is_ok(), "{:?}", report.failure);
    // No password and no token anywhere on disk.
    let secret = token.rsplit('_').next().unwrap();
    let mut stack = vec![d.to_path_buf()];
    while let Some(p) = stack.pop() {
        for e in std::fs::read_dir(&p).unwrap() {
            let p = e.unwrap().path();
            if p.is_dir() {
                stack.push(p);
            } else {
                let bytes = String::from_utf8_lossy(&std::fs::read(&p).unwrap()).into_owned();
                assert!(
                    !bytes.contains("CANARY-ctl-pw") && !bytes.contains(secret),
                    "{}",
                    p.display()
                );
            }
        }
    }
}

#[test]
fn with_a_daemon_account_changes_end_sessions_status_counts_them_and_exports_filter_by_user() {
    let d = start_daemon_with(
        "accounts",
        Some(&|dir: &Path| {
            let config = dir.join("medgemmad.toml").display().to_string();
            for name in ["dr.li", "dr.wang"] {
                let o = ctl_stdin(
                    &format!("{LI_PASSWORD}\n"),
                    &["--config", &config, "user", "add", name, "--password-stdin"],
                );
                assert_eq!(code(&o), 0, "{}", String::from_utf8_lossy(&o.stderr));
            }
            let o = ctl(&[
                "--config",
                &config,
                "user",
                "add",
                "audit.kim",
                "--role",
                "auditor",
                "--no-password",
            ]);
            assert_eq!(code(&o), 0);
        }),
    );
    let config = d.config();
    let sock = d.dir.path().join("ui.sock");
    ui_login(&sock, "dr.li", LI_PASSWORD).unwrap();
    ui_login(&sock, "dr.li", LI_PASSWORD).unwrap();
    ui_login(&sock, "dr.wang", LI_PASSWORD).unwrap();
    let o = ctl(&["--config", &config, "--json", "status"]);
    let sessions = json(&o)["accounts"]["sessions"].clone();
    assert_eq!(
        sessions,
        serde_json::json!([{"user": "dr.li", "sessions": 2}, {"user": "dr.wang", "sessions": 1}])
    );
    let o = ctl(&["--config", &config, "status"]);
    assert!(
        stdout(&o).contains("sessions: dr.li 2, dr.wang 1"),
        "{}",
        stdout(&o)
    );

    // Disabled through the daemon: recorded by it, and li's sessions end at once.
    let o = ctl(&["--config", &config, "--json", "user", "disable", "dr.li"]);
    assert_eq!(json(&o)["recorded"], "by medgemmad", "{}", stdout(&o));
    let o = ctl(&["--config", &config, "--json", "status"]);
    assert_eq!(
        json(&o)["accounts"]["sessions"],
        serde_json::json!([{"user": "dr.wang", "sessions": 1}])
    );
    assert!(ui_login(&sock, "dr.li", LI_PASSWORD).is_err());

    // The export for li holds li's records only, and verifies with the initial key.
    let out = d.dir.path().join("export-li");
    let o = ctl(&[
        "--config",
        &config,
        "audit",
        "export",
        "--since",
        "2000-01-01",
        "--out",
        &out.display().to_string(),
        "--user",
        "dr.li",
    ]);
    assert_eq!(
        code(&o),
        0,
        "{}{}",
        stdout(&o),
        String::from_utf8_lossy(&o.stderr)
    );
    let li = serde_json::from_str::<serde_json::Value>(
        &std::fs::read_to_string(d.dir.path().join("accounts/accounts.json")).unwrap(),
    )
    .unwrap()["accounts"][0]["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let exported = records(&out);
    assert!(exported.len() >= 4, "{exported:?}");
    for r in &exported {
        assert!(
            r["actor"] == li.as_str() || r["account"] == li.as_str(),
            "{r}"
        );
    }
    let o = ctl(&[
        "--json",
        "audit",
        "verify",
        &out.display().to_string(),
        "--initial-key-file",
        &d.dir.path().join("initial-key.txt").display().to_string(),
        "--public-key",
        &d.dir.path().join("signing.pub").display().to_string(),
    ]);
    assert_eq!(code(&o), 0, "{}", stdout(&o));
    assert_eq!(json(&o)["checks"]["macs"], true);

    // An auditor's token lets the daemon verify its own log through the admin socket.
    let o = ctl(&[
        "--config",
        &config,
        "--json",
        "user",
        "token",
        "create",
        "audit.kim",
    ]);
    let token_file = d.dir.path().join("kim.token");
    std::fs::write(&token_file, json(&o)["token"].as_str().unwrap()).unwrap();
    let o = ctl(&[
        "--config",
        &config,
        "audit",
        "verify",
        "--daemon",
        "--token-file",
        &token_file.display().to_string(),
        "--initial-key-file",
        &d.dir.path().join("initial-key.txt").display().to_string(),
        "ignored",
    ]);
    assert_eq!(
        code(&o),
        0,
        "{}{}",
        stdout(&o),
        String::from_utf8_lossy(&o.stderr)
    );
    assert!(
        stdout(&o).contains("verified by medgemmad") && stdout(&o).contains("macs"),
        "{}",
        stdout(&o)
    );
}

#[test]
fn terms_are_imported_listed_reloaded_and_removed() {
    let fixtures = Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/fixtures/terms");
    let d = start_daemon();
    let config = d.config();
    for (kind, file) in [
        ("icd11", "SimpleTabulation-ICD-11-MMS-en.txt"),
        ("icd11", "SimpleTabulation-ICD-11-MMS-zh.txt"),
        ("icd10", "icd10cm-codes-2025.txt"),
        ("snomed", "sct2_Description_Snapshot-en_INT_20240101.txt"),
        ("synonyms", "synonyms.tsv"),
    ] {
        let o = ctl(&[
            "--config",
            &config,
            "--json",
            "terms",
            "import",
            kind,
            &fixtures.join(file).display().to_string(),
        ]);
        assert_eq!(
            code(&o),
            0,
            "{file}: {}{}",
            stdout(&o),
            String::from_utf8_lossy(&o.stderr)
        );
        assert!(
            json(&o)["daemon"].as_str().unwrap().contains("now knows"),
            "{}",
            stdout(&o)
        );
    }
    let o = ctl(&["--config", &config, "--json", "terms", "list"]);
    let names: Vec<&str> = json(&o)["tables"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["name"].as_str().unwrap())
        .collect::<Vec<_>>()
        .into_iter()
        .map(|s| Box::leak(s.to_owned().into_boxed_str()) as &str)
        .collect();
    assert_eq!(
        names,
        ["icd10", "icd11-en", "icd11-zh", "snomed-en", "synonyms"]
    );
    let o = ctl(&["--config", &config, "--json", "status"]);
    let systems = json(&o)["terms"]["systems"].clone();
    assert_eq!(
        systems,
        serde_json::json!(["ICD-10-CM", "ICD-11", "SNOMED CT"])
    );
    let o = ctl(&["--config", &config, "terms", "remove", "snomed-en"]);
    assert_eq!(code(&o), 0);
    let o = ctl(&["--config", &config, "--json", "status"]);
    assert_eq!(
        json(&o)["terms"]["systems"],
        serde_json::json!(["ICD-10-CM", "ICD-11"])
    );
    let o = ctl(&[
        "--config",
        &config,
        "terms",
        "import",
        "icd11",
        &fixtures.join("synonyms.tsv").display().to_string(),
    ]);
    assert_eq!(code(&o), 3, "a synonyms file is no ICD-11 tabulation");
}

/// One chat turn over the UI socket (raw HTTP/1.1); the `done` event's data.
fn chat_done(sock: &Path, message: &str) -> serde_json::Value {
    use std::io::{Read, Write};
    let body = serde_json::json!({ "message": message, "max_new_tokens": 3 }).to_string();
    let mut s = std::os::unix::net::UnixStream::connect(sock).unwrap();
    write!(
        s,
        "POST /api/chat HTTP/1.1\r\nHost: localhost:6006\r\nOrigin: http://localhost:6006\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )
    .unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).unwrap();
    let data = out
        .split("event: done\n")
        .nth(1)
        .and_then(|rest| rest.lines().next())
        .and_then(|l| l.strip_prefix("data: "))
        .unwrap_or_else(|| panic!("no done event: {out}"));
    serde_json::from_str(data).unwrap()
}

/// Every byte of every file under `dir`, as text.
fn all_text_under(dir: &Path) -> String {
    let mut out = String::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(p) = stack.pop() {
        for e in std::fs::read_dir(&p).unwrap() {
            let p = e.unwrap().path();
            if p.is_dir() {
                stack.push(p);
            } else if let Ok(bytes) = std::fs::read(&p) {
                out.push_str(&String::from_utf8_lossy(&bytes));
            }
        }
    }
    out
}

const LI_NEW_PASSWORD: &str = "CANARY-ctl-pw-li-battery-staple";
const WRONG_GUESS: &str = "CANARY-ctl-pw-wrong-guess";

#[test]
fn passwd_enable_and_a_clinician_token_through_the_daemon_never_show_a_secret() {
    let d = start_daemon_with(
        "accounts",
        Some(&|dir: &Path| {
            let config = dir.join("medgemmad.toml").display().to_string();
            let o = ctl_stdin(
                &format!("{LI_PASSWORD}\n"),
                &[
                    "--config",
                    &config,
                    "user",
                    "add",
                    "dr.li",
                    "--password-stdin",
                ],
            );
            assert_eq!(code(&o), 0, "{}", String::from_utf8_lossy(&o.stderr));
        }),
    );
    let config = d.config();
    let sock = d.dir.path().join("ui.sock");
    // Everything medgemmactl prints, on either stream, is kept and searched.
    let mut printed = String::new();
    let mut keep = |o: Output| -> Output {
        printed.push_str(&String::from_utf8_lossy(&o.stdout));
        printed.push_str(&String::from_utf8_lossy(&o.stderr));
        o
    };

    ui_login(&sock, "dr.li", LI_PASSWORD).unwrap();
    assert!(ui_login(&sock, "dr.li", WRONG_GUESS).is_err());

    // A new password, set through the daemon: the old one stops working,
    // the new one works, li's sessions end.
    let o = keep(ctl_stdin(
        &format!("{LI_NEW_PASSWORD}\n"),
        &[
            "--config",
            &config,
            "--json",
            "user",
            "passwd",
            "dr.li",
            "--password-stdin",
        ],
    ));
    assert_eq!(code(&o), 0, "{}", String::from_utf8_lossy(&o.stderr));
    assert_eq!(json(&o)["recorded"], "by medgemmad", "{}", stdout(&o));
    let o = keep(ctl(&["--config", &config, "--json", "status"]));
    assert_eq!(
        json(&o)["accounts"]["sessions"],
        serde_json::json!([]),
        "a new password ends the account's sessions"
    );
    assert!(ui_login(&sock, "dr.li", LI_PASSWORD).is_err());
    ui_login(&sock, "dr.li", LI_NEW_PASSWORD).unwrap();
    // A short password is refused, and the refusal does not repeat it.
    let o = keep(ctl_stdin(
        "CANARY-9\n",
        &[
            "--config",
            &config,
            "user",
            "passwd",
            "dr.li",
            "--password-stdin",
        ],
    ));
    assert_eq!(code(&o), 3);
    assert!(!String::from_utf8_lossy(&o.stderr).contains("CANARY-9"));

    // Disabled: no login; enabled again: the (new) password works.
    let o = keep(ctl(&["--config", &config, "user", "disable", "dr.li"]));
    assert_eq!(code(&o), 0);
    assert!(ui_login(&sock, "dr.li", LI_NEW_PASSWORD).is_err());
    let o = keep(ctl(&[
        "--config", &config, "--json", "user", "enable", "dr.li",
    ]));
    assert_eq!(code(&o), 0, "{}", String::from_utf8_lossy(&o.stderr));
    assert_eq!(json(&o)["recorded"], "by medgemmad", "{}", stdout(&o));
    ui_login(&sock, "dr.li", LI_NEW_PASSWORD).unwrap();
    let o = keep(ctl(&["--config", &config, "--json", "user", "list"]));
    assert_eq!(json(&o)["accounts"][0]["enabled"], true);

    // A clinician's token is no auditor's: the daemon refuses to verify for it.
    // (`token create` shows the token once, by design: not kept.)
    let o = ctl(&[
        "--config", &config, "--json", "user", "token", "create", "dr.li",
    ]);
    assert_eq!(code(&o), 0, "{}", String::from_utf8_lossy(&o.stderr));
    let token = json(&o)["token"].as_str().unwrap().to_owned();
    let secret = token.rsplit('_').next().unwrap().to_owned();
    assert!(secret.len() >= 32, "{token}");
    let token_file = d.dir.path().join("li.token");
    std::fs::write(&token_file, &token).unwrap();
    // The token is what authorizes on the admin socket only for a peer that
    // is not an administrator by its uid: run medgemmactl as nobody.
    let as_nobody = my_uid() == 0 && Path::new("/usr/bin/setpriv").exists();
    if as_nobody {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(d.dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
        std::fs::set_permissions(d.admin(), std::fs::Permissions::from_mode(0o666)).unwrap();
        std::fs::set_permissions(&token_file, std::fs::Permissions::from_mode(0o644)).unwrap();
    } else {
        eprintln!("SKIPPED the token checks as a non-admin peer: needs root and setpriv");
    }
    let verify = |file: &Path| {
        Command::new("/usr/bin/setpriv")
            .args(["--reuid=65534", "--regid=65534", "--clear-groups", CTL])
            .args([
                "--config",
                &config,
                "audit",
                "verify",
                "--daemon",
                "--token-file",
                &file.display().to_string(),
                "--initial-key-file",
                &d.dir.path().join("initial-key.txt").display().to_string(),
                "ignored",
            ])
            .output()
            .unwrap()
    };
    if as_nobody {
        let o = keep(verify(&token_file));
        assert_ne!(code(&o), 0, "a clinician's token: {}", stdout(&o));
        assert!(!stdout(&o).contains("verified by medgemmad"));
    }
    // A revoked token (an auditor's) is refused too.
    let o = keep(ctl(&[
        "--config",
        &config,
        "user",
        "add",
        "audit.kim",
        "--role",
        "auditor",
        "--no-password",
    ]));
    assert_eq!(code(&o), 0);
    let o = ctl(&[
        "--config",
        &config,
        "--json",
        "user",
        "token",
        "create",
        "audit.kim",
    ]);
    let kim_token = json(&o)["token"].as_str().unwrap().to_owned();
    let kim_id = json(&o)["id"].as_str().unwrap().to_owned();
    let kim_file = d.dir.path().join("kim.token");
    std::fs::write(&kim_file, &kim_token).unwrap();
    if as_nobody {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&kim_file, std::fs::Permissions::from_mode(0o644)).unwrap();
        let o = keep(verify(&kim_file));
        assert_eq!(
            code(&o),
            0,
            "an auditor's token: {}{}",
            stdout(&o),
            String::from_utf8_lossy(&o.stderr)
        );
        assert!(
            stdout(&o).contains("verified by medgemmad"),
            "{}",
            stdout(&o)
        );
    }
    let o = keep(ctl(&[
        "--config",
        &config,
        "user",
        "token",
        "revoke",
        "audit.kim",
        &kim_id,
    ]));
    assert_eq!(code(&o), 0);
    if as_nobody {
        let o = keep(verify(&kim_file));
        assert_ne!(code(&o), 0, "a revoked token: {}", stdout(&o));
    }
    let kim_secret = kim_token.rsplit('_').next().unwrap().to_owned();

    // The chain has every change and the refused login, under the account's id.
    let li = serde_json::from_str::<serde_json::Value>(
        &std::fs::read_to_string(d.dir.path().join("accounts/accounts.json")).unwrap(),
    )
    .unwrap()["accounts"][0]["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let recs = records(&d.dir.path().join("audit"));
    let changes: Vec<&str> = recs
        .iter()
        .filter(|r| r["event"] == "account_change" && r["account"] == li.as_str())
        .map(|r| r["change"].as_str().unwrap())
        .collect();
    assert_eq!(
        changes,
        [
            "created",
            "password_changed",
            "disabled",
            "enabled",
            "token_created"
        ]
    );
    let logins: Vec<&str> = recs
        .iter()
        .filter(|r| r["event"] == "login" && r["actor"] == li.as_str())
        .map(|r| r["outcome"].as_str().unwrap())
        .collect();
    assert_eq!(
        logins,
        ["ok", "rejected", "rejected", "ok", "rejected", "ok"],
        "{recs:#?}"
    );

    // No password and no token in the daemon's log, medgemmactl's output,
    // the audit log, the accounts file or anything else on disk.
    let log = d.log.lock().unwrap().clone();
    for (what, text) in [
        ("the daemon's log", &log),
        ("medgemmactl's output", &printed),
    ] {
        for s in [
            LI_PASSWORD,
            LI_NEW_PASSWORD,
            WRONG_GUESS,
            "CANARY-9",
            &secret,
            &kim_secret,
        ] {
            assert!(!text.contains(s), "{s} in {what}");
        }
    }
    // (The test itself wrote the tokens to li.token and kim.token.)
    std::fs::remove_file(&token_file).unwrap();
    std::fs::remove_file(&kim_file).unwrap();
    let stored = all_text_under(d.dir.path());
    for s in [
        LI_PASSWORD,
        LI_NEW_PASSWORD,
        WRONG_GUESS,
        "CANARY-9",
        &secret,
        &kim_secret,
    ] {
        assert!(!stored.contains(s), "{s} stored on disk");
    }
}

#[test]
fn terms_in_every_layout_are_found_in_a_chat() {
    let fixtures = Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/fixtures/terms");
    let d = start_daemon();
    let config = d.config();
    let f = |name: &str| fixtures.join(name).display().to_string();
    let imports: [Vec<String>; 4] = [
        vec![
            "icd10".into(),
            f("icd10-clinical-zh.tsv"),
            "--name".into(),
            "icd10-zh".into(),
            "--system".into(),
            "ICD-10".into(),
        ],
        vec![
            "snomed".into(),
            f("sct2_Description_Snapshot-en_INT_20240101.txt"),
            "--language-refset".into(),
            f("der2_cRefset_LanguageSnapshot-en_INT_20240101.txt"),
        ],
        vec!["icd10".into(), f("icd10cm-codes-2025.txt")],
        vec!["synonyms".into(), f("synonyms.tsv")],
    ];
    for args in &imports {
        let mut all = vec!["--config", &config, "--json", "terms", "import"];
        all.extend(args.iter().map(String::as_str));
        let o = ctl(&all);
        assert_eq!(
            code(&o),
            0,
            "{args:?}: {}{}",
            stdout(&o),
            String::from_utf8_lossy(&o.stderr)
        );
        let v = json(&o);
        assert!(v["phrases"].as_u64().unwrap() > 0, "{v}");
        assert!(v["daemon"].as_str().unwrap().contains("now knows"), "{v}");
    }
    let o = ctl(&["--config", &config, "--json", "terms", "list"]);
    let tables = json(&o)["tables"].clone();
    let names: Vec<&str> = tables
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["icd10", "icd10-zh", "snomed-en", "synonyms"]);

    // The daemon finds them: a colloquial Chinese phrase (synonyms), the
    // Chinese clinical list's title, and SNOMED CT's preferred term.
    let done = chat_done(
        &d.dir.path().join("ui.sock"),
        "心梗 还是 肺栓塞? Myocardial infarction",
    );
    let terms = done["terms"].as_array().expect("terms in done").clone();
    let has = |system: &str, code: &str| {
        terms
            .iter()
            .any(|t| t["system"] == system && t["code"].as_str().unwrap_or("").starts_with(code))
    };
    assert!(
        has("ICD-10-CM", "I21"),
        "心梗 through the synonyms: {terms:?}"
    );
    assert!(
        has("ICD-10", "I26"),
        "肺栓塞 from the Chinese list: {terms:?}"
    );
    assert!(has("SNOMED CT", ""), "SNOMED CT's term: {terms:?}");

    // Removed: gone from the list and from the answers.
    let o = ctl(&["--config", &config, "terms", "remove", "icd10-zh"]);
    assert_eq!(code(&o), 0);
    let o = ctl(&["--config", &config, "terms", "remove", "no-such-table"]);
    assert_ne!(code(&o), 0);
    let done = chat_done(&d.dir.path().join("ui.sock"), "肺栓塞");
    assert!(
        !done["terms"]
            .as_array()
            .unwrap()
            .iter()
            .any(|t| t["system"] == "ICD-10"),
        "{done}"
    );
}
