//! Shared by the `e2e_*` tests: run the server on a temporary Unix socket
//! with a generated configuration, and talk HTTP/1.1 to it over the socket
//! (hyper's client on a tokio `UnixStream`).
//!
//! Two ways to run it: [`Server`] calls the daemon library's `server::run`
//! in this process (what the HTTP tests need: routes, streams, limits);
//! [`Daemon`] starts the real `medgemmad serve` binary (what needs a
//! process: the sandbox, signals, exit codes, the log). A [`Daemon`] is
//! killed when dropped; its stderr is echoed into the test's output and kept
//! for assertions.

#![allow(dead_code)] // each test file uses a different part

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use tokio::net::UnixStream;

pub const BIN: &str = env!("CARGO_BIN_EXE_medgemmad");
pub const HOST: &str = "localhost:6006";
pub const ORIGIN: &str = "http://localhost:6006";

/// A configuration to write; `Default` is a scripted engine.
#[derive(Debug, Clone)]
pub struct Setup {
    pub backend: &'static str,
    pub model_path: Option<PathBuf>,
    pub tokenizer_path: Option<PathBuf>,
    pub label: &'static str,
    pub demo: bool,
    pub context_length: usize,
    pub queue_length: usize,
    pub max_new_tokens: usize,
    pub idle_timeout_secs: u64,
    /// Raw TOML appended to `[engine]` (for broken-config tests).
    pub extra_engine: String,
}

impl Default for Setup {
    fn default() -> Self {
        Self {
            backend: "scripted",
            model_path: None,
            tokenizer_path: None,
            label: "Scripted test engine",
            demo: true,
            context_length: 4096,
            queue_length: 4,
            max_new_tokens: 1000,
            idle_timeout_secs: 600,
            extra_engine: String::new(),
        }
    }
}

/// The real Gemma 3 270M GGUF from `scripts/fetch-assets.sh`, if present.
/// With `MEDGEMMA_ASSETS` set, missing files are an error, not a skip.
pub fn real_model() -> Option<(PathBuf, PathBuf)> {
    let explicit = std::env::var_os("MEDGEMMA_ASSETS").map(PathBuf::from);
    let dir = explicit.clone().or_else(|| {
        std::env::var_os("HOME").map(|h| Path::new(&h).join(".cache/medgemma-assets"))
    })?;
    let gguf = dir.join("gemma-3-270m/gemma-3-270m-q4_k_m.gguf");
    let tok = dir.join("tokenizer/tokenizer.json");
    if gguf.is_file() && tok.is_file() {
        Some((gguf, tok))
    } else if explicit.is_some() {
        panic!(
            "MEDGEMMA_ASSETS={} lacks the 270M GGUF or tokenizer.json; run scripts/fetch-assets.sh",
            dir.display()
        );
    } else {
        eprintln!(
            "SKIP: real test assets not found; run scripts/fetch-assets.sh (or set MEDGEMMA_ASSETS)"
        );
        None
    }
}

/// Writes the configuration for `setup` into `dir`; returns its path.
pub fn write_config(dir: &Path, setup: &Setup) -> PathBuf {
    let model = match &setup.model_path {
        Some(p) => p.clone(),
        None => {
            let p = dir.join("placeholder.gguf");
            std::fs::write(&p, b"not a model").unwrap();
            p
        }
    };
    let audit = dir.join("audit");
    std::fs::create_dir_all(&audit).unwrap();
    // What `medgemmactl setup` makes: the chain key (initial key kept for
    // verification in `initial-key.txt`) and the content key.
    let keys = dir.join("audit-key");
    let key_file = keys.join("current");
    let content_key = keys.join("content");
    if !key_file.exists() {
        std::fs::create_dir_all(&keys).unwrap();
        let initial = medgemma_audit::create_key(&key_file).unwrap();
        std::fs::write(dir.join("initial-key.txt"), initial.display()).unwrap();
        medgemma_audit::create_content_key(&content_key).unwrap();
    }
    let tokenizer = setup
        .tokenizer_path
        .as_ref()
        .map(|t| format!("tokenizer_path = {:?}\n", t.display().to_string()))
        .unwrap_or_default();
    let text = format!(
        r#"[model]
path = {model:?}
{tokenizer}label = {label:?}
demo = {demo}

[engine]
backend = {backend:?}
context_length = {ctx}
queue_length = {queue}
max_new_tokens = {max_new}
{extra}

[server]
ui_socket = {sock:?}
listen_port = 6006
session_idle_timeout_secs = {idle}

[audit]
dir = {audit:?}
key_file = {key_file:?}
content_key_file = {content_key:?}
"#,
        model = model.display().to_string(),
        label = setup.label,
        demo = setup.demo,
        backend = setup.backend,
        ctx = setup.context_length,
        queue = setup.queue_length,
        max_new = setup.max_new_tokens,
        extra = setup.extra_engine,
        sock = dir.join("ui.sock").display().to_string(),
        idle = setup.idle_timeout_secs,
        audit = audit.display().to_string(),
        key_file = key_file.display().to_string(),
        content_key = content_key.display().to_string(),
    );
    let path = dir.join("medgemmad.toml");
    std::fs::write(&path, text).unwrap();
    path
}

/// The daemon's server in this process: the same `server::run` that
/// `medgemmad serve` calls, on a runtime of its own, without the sandbox (as
/// `--insecure-no-sandbox`, and reported as such).
pub struct Server {
    pub dir: tempfile::TempDir,
    pub socket: PathBuf,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Server {
    /// Starts the engine and the server; returns once the socket accepts.
    pub fn start(setup: &Setup) -> Server {
        use medgemmad::engine::load::{EngineJob, loader};
        let dir = tempfile::Builder::new()
            .prefix("mgd-e2e")
            .tempdir()
            .unwrap();
        let config = write_config(dir.path(), setup);
        medgemma_sandbox::declare_insecure_no_sandbox();
        let settings = Arc::new(medgemmad::config::Settings::load(&config).unwrap());
        let fingerprint = medgemmad::audit_log::label_fingerprint(&settings.model.label);
        let audit =
            Arc::new(medgemmad::audit_log::Auditor::open(&settings.audit, fingerprint).unwrap());
        let engine = medgemmad::engine::worker::start(
            loader(EngineJob::new(&settings), None),
            settings.engine.queue_length,
        )
        .unwrap();
        let socket = dir.path().join("ui.sock");
        let listener = std::os::unix::net::UnixListener::bind(&socket).unwrap();
        listener.set_nonblocking(true).unwrap();
        let config = medgemmad::server::ServerConfig {
            settings,
            sandbox: medgemmad::lockdown::sandbox_status,
            audit,
            admin: None,
        };
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let thread = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .enable_all()
                .build()
                .unwrap();
            rt.block_on(async move {
                let listener = tokio::net::UnixListener::from_std(listener).unwrap();
                let shutdown = async {
                    let _ = stopped.await;
                };
                medgemmad::server::run(listener, engine, config, shutdown)
                    .await
                    .unwrap();
            });
        });
        Server {
            dir,
            socket,
            stop: Some(stop),
            thread: Some(thread),
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// A running `medgemmad serve`.
pub struct Daemon {
    child: Child,
    pub dir: tempfile::TempDir,
    pub socket: PathBuf,
    log: Arc<Mutex<String>>,
}

/// What the HTTP-level tests pass: they test the server, not the sandbox
/// (`e2e_sandbox.rs` starts the daemon sandboxed, as root dropping to an
/// unprivileged user), and their temporary directories are root's.
pub const UNSANDBOXED: &[&str] = &["--insecure-no-sandbox"];

fn spawn_logged(config: &Path, args: &[&str]) -> (Child, Arc<Mutex<String>>) {
    let mut child = Command::new(BIN)
        .args(["serve", "--config"])
        .arg(config)
        .args(args)
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
    (child, log)
}

impl Daemon {
    /// Starts the daemon and waits (up to `timeout`) until it says it is ready.
    pub fn start(setup: &Setup, timeout: Duration) -> Daemon {
        let dir = tempfile::Builder::new()
            .prefix("mgd-e2e")
            .tempdir()
            .unwrap();
        let config = write_config(dir.path(), setup);
        Self::start_with(dir, &config, UNSANDBOXED, timeout)
    }

    /// Starts the daemon on an existing configuration in `dir` (whose
    /// `ui.sock` it serves) with extra `serve` arguments, and waits (up to
    /// `timeout`) until it says it is ready.
    pub fn start_with(
        dir: tempfile::TempDir,
        config: &Path,
        args: &[&str],
        timeout: Duration,
    ) -> Daemon {
        let (child, log) = spawn_logged(config, args);
        let mut d = Daemon {
            child,
            socket: dir.path().join("ui.sock"),
            dir,
            log,
        };
        let t0 = Instant::now();
        loop {
            if d.log().contains("medgemmad: ready:") && d.socket.exists() {
                return d;
            }
            if let Some(status) = d.child.try_wait().unwrap() {
                panic!("medgemmad exited before ready ({status}):\n{}", d.log());
            }
            assert!(
                t0.elapsed() < timeout,
                "medgemmad not ready after {timeout:?}:\n{}",
                d.log()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Everything the daemon wrote to stderr so far.
    pub fn log(&self) -> String {
        self.log.lock().unwrap().clone()
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Waits for the process to exit (after a signal).
    pub fn wait_exit(&mut self, timeout: Duration) -> ExitStatus {
        let t0 = Instant::now();
        loop {
            if let Some(s) = self.child.try_wait().unwrap() {
                return s;
            }
            assert!(
                t0.elapsed() < timeout,
                "medgemmad still running after {timeout:?}"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Runs `medgemmad serve` with a configuration file holding `text` until it
/// exits (it must, within `timeout`); returns the status and stderr.
pub fn run_to_exit(
    config_text: Option<&str>,
    setup: Option<&Setup>,
    timeout: Duration,
) -> (ExitStatus, String) {
    let dir = tempfile::Builder::new()
        .prefix("mgd-e2e")
        .tempdir()
        .unwrap();
    let config = match (config_text, setup) {
        (Some(text), _) => {
            let p = dir.path().join("medgemmad.toml");
            std::fs::write(&p, text).unwrap();
            p
        }
        (None, Some(setup)) => write_config(dir.path(), setup),
        (None, None) => panic!("give a config"),
    };
    let (mut child, log) = spawn_logged(&config, UNSANDBOXED);
    let t0 = Instant::now();
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        if t0.elapsed() > timeout {
            let _ = child.kill();
            panic!(
                "medgemmad did not exit within {timeout:?}:\n{}",
                log.lock().unwrap()
            );
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    // Let the reader thread drain the pipe.
    std::thread::sleep(Duration::from_millis(100));
    let text = log.lock().unwrap().clone();
    (status, text)
}

/// Sends one request on a new connection.
pub async fn send(socket: &Path, req: Request<Full<Bytes>>) -> Response<Incoming> {
    let stream = UnixStream::connect(socket)
        .await
        .expect("connect to the UI socket");
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .unwrap();
    tokio::spawn(conn);
    sender.send_request(req).await.expect("response")
}

/// A request builder with the browser's Host.
pub fn request(method: &str, path: &str) -> hyper::http::request::Builder {
    Request::builder()
        .method(method)
        .uri(path)
        .header("host", HOST)
}

/// A JSON POST as the web UI sends it (same-origin Origin).
pub fn post_json(path: &str, body: &serde_json::Value) -> Request<Full<Bytes>> {
    request("POST", path)
        .header("origin", ORIGIN)
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from(body.to_string())))
        .unwrap()
}

/// A GET.
pub fn get(path: &str) -> Request<Full<Bytes>> {
    request("GET", path).body(Full::new(Bytes::new())).unwrap()
}

/// Reads the whole body.
pub async fn body_bytes(resp: Response<Incoming>) -> Bytes {
    resp.into_body().collect().await.unwrap().to_bytes()
}

/// Status and JSON body.
pub async fn json_of(resp: Response<Incoming>) -> (StatusCode, serde_json::Value) {
    let status = resp.status();
    let bytes = body_bytes(resp).await;
    let v = serde_json::from_slice(&bytes)
        .unwrap_or_else(|_| panic!("not JSON: {}", String::from_utf8_lossy(&bytes)));
    (status, v)
}

/// Asserts the API's error shape and returns the code.
pub async fn error_code(resp: Response<Incoming>, status: StatusCode) -> String {
    assert_eq!(resp.headers()["content-type"], "application/json");
    let (s, v) = json_of(resp).await;
    assert_eq!(s, status, "{v}");
    let msg = v["error"]["message"].as_str().expect("error.message");
    assert!(msg.len() > 10, "message says what to do: {msg}");
    v["error"]["code"].as_str().expect("error.code").to_owned()
}

/// Server-sent events read incrementally from a response.
pub struct Sse {
    body: Incoming,
    buf: Vec<u8>,
}

/// One event: name (or "message") and data.
#[derive(Debug, Clone)]
pub struct Event {
    pub name: String,
    pub data: String,
}

impl Event {
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_str(&self.data)
            .unwrap_or_else(|_| panic!("event data is not JSON: {}", self.data))
    }
}

impl Sse {
    pub fn new(resp: Response<Incoming>) -> Sse {
        assert_eq!(resp.status(), StatusCode::OK);
        assert!(
            resp.headers()["content-type"]
                .to_str()
                .unwrap()
                .starts_with("text/event-stream")
        );
        Sse {
            body: resp.into_body(),
            buf: Vec::new(),
        }
    }

    /// The next event, or `None` at the end of the stream.
    pub async fn next(&mut self) -> Option<Event> {
        loop {
            if let Some(pos) = self.buf.windows(2).position(|w| w == b"\n\n") {
                let raw: Vec<u8> = self.buf.drain(..pos + 2).collect();
                let text = String::from_utf8(raw).expect("utf-8 events");
                let mut name = "message".to_owned();
                let mut data = String::new();
                for line in text.lines() {
                    if let Some(v) = line.strip_prefix("event: ") {
                        name = v.to_owned();
                    } else if let Some(v) = line.strip_prefix("data: ") {
                        data.push_str(v);
                    }
                }
                return Some(Event { name, data });
            }
            match self.body.frame().await {
                Some(Ok(frame)) => {
                    if let Ok(data) = frame.into_data() {
                        self.buf.extend_from_slice(&data);
                    }
                }
                Some(Err(e)) => panic!("stream failed: {e}"),
                None => return None,
            }
        }
    }

    /// All remaining events.
    pub async fn collect(mut self) -> Vec<Event> {
        let mut out = Vec::new();
        while let Some(e) = self.next().await {
            out.push(e);
        }
        out
    }
}

/// Checks the /api/chat event order: conversation, deltas, then done or error.
pub fn assert_chat_order(events: &[Event]) {
    let names: Vec<&str> = events.iter().map(|e| e.name.as_str()).collect();
    assert!(!names.is_empty(), "no events");
    assert_eq!(names[0], "conversation", "{names:?}");
    let last = *names.last().unwrap();
    assert!(last == "done" || last == "error", "{names:?}");
    for n in &names[1..names.len() - 1] {
        assert!(*n == "reasoning" || *n == "answer", "{names:?}");
    }
    // Reasoning, when present, comes before any answer text.
    if let Some(first_answer) = names.iter().position(|n| *n == "answer") {
        assert!(
            !names[first_answer..].contains(&"reasoning"),
            "reasoning after answer: {names:?}"
        );
    }
}

/// Sends a chat and collects every event.
pub async fn chat(socket: &Path, body: serde_json::Value) -> Vec<Event> {
    let resp = send(socket, post_json("/api/chat", &body)).await;
    let events = Sse::new(resp).collect().await;
    assert_chat_order(&events);
    events
}

/// The `done` event's data.
pub fn done(events: &[Event]) -> serde_json::Value {
    let last = events.last().expect("events");
    assert_eq!(
        last.name, "done",
        "expected done, got {} {}",
        last.name, last.data
    );
    last.json()
}

/// Concatenated deltas of one kind.
pub fn text(events: &[Event], kind: &str) -> String {
    events
        .iter()
        .filter(|e| e.name == kind)
        .map(|e| e.json()["delta"].as_str().unwrap().to_owned())
        .collect()
}
