//! Shared test support: real `redis-server` processes on free ports, the sidecar binary, a
//! raw HTTP client, and polling. Every process started here is killed on drop, panics
//! included; nothing here touches a process it did not start.

#![allow(dead_code)]

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

pub const BIN: &str = env!("CARGO_BIN_EXE_redis-celery-sidecar");

/// Fast probes for tests: results within a second, and a timeout long enough that a busy
/// 2-core machine does not turn a healthy Redis into a failure.
/// No Celery workers are required: these tests are about Redis, and the celery check
/// (always on) would otherwise make /healthz unhealthy.
pub const FAST: &[(&str, &str)] = &[
    ("SIDECAR_PROBE_INTERVAL", "1s"),
    ("SIDECAR_PROBE_TIMEOUT", "800ms"),
    ("SIDECAR_LATENCY_SLO", "700ms"),
    ("SIDECAR_CELERY_MIN_WORKERS", "0"),
];

/// For one-shot `check` runs: a generous timeout, since nothing waits on a second probe.
pub const ONE_SHOT: &[(&str, &str)] = &[
    ("SIDECAR_PROBE_INTERVAL", "10s"),
    ("SIDECAR_PROBE_TIMEOUT", "5s"),
    ("SIDECAR_LATENCY_SLO", "4s"),
    ("SIDECAR_CELERY_MIN_WORKERS", "0"),
];

/// A directory under the system temp dir, removed on drop.
pub struct TempDir(PathBuf);

impl TempDir {
    pub fn new(tag: &str) -> TempDir {
        static N: AtomicUsize = AtomicUsize::new(0);
        let path = std::env::temp_dir().join(format!(
            "rcs-{tag}-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        ));
        std::fs::create_dir_all(&path).expect("create temp dir");
        TempDir(path)
    }

    pub fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A port nobody listens on right now.
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("bind an ephemeral port")
        .port()
}

/// Polls `f` every 50 ms until it returns `Some`, or panics after `limit` naming `what`.
pub fn wait_for<T>(what: &str, limit: Duration, mut f: impl FnMut() -> Option<T>) -> T {
    let start = Instant::now();
    loop {
        if let Some(v) = f() {
            return v;
        }
        if start.elapsed() > limit {
            panic!("timed out after {limit:?} waiting for {what}");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// A `redis-server` of our own.
pub struct Redis {
    pub port: u16,
    args: Vec<String>,
    child: Option<Child>,
    dir: TempDir,
}

impl Redis {
    /// Starts `redis-server` on a free port with `extra` arguments (e.g. `--requirepass`).
    pub fn start(extra: &[&str]) -> Redis {
        let args: Vec<String> = extra.iter().map(|s| s.to_string()).collect();
        for _ in 0..5 {
            let mut r = Redis {
                port: free_port(),
                args: args.clone(),
                child: None,
                dir: TempDir::new("redis"),
            };
            if r.spawn() {
                return r;
            }
        }
        panic!("redis-server did not start on any of 5 free ports");
    }

    fn spawn(&mut self) -> bool {
        let log = self.dir.path().join("redis.log");
        let child = Command::new("redis-server")
            .arg("--port")
            .arg(self.port.to_string())
            .args(["--bind", "127.0.0.1", "-::1"])
            .args(["--save", "", "--appendonly", "no", "--daemonize", "no"])
            .arg("--dir")
            .arg(self.dir.path())
            .arg("--logfile")
            .arg(&log)
            .args(&self.args)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| {
                panic!("cannot run redis-server ({e}): run scripts/test, which installs it")
            });
        self.child = Some(child);
        let started = Instant::now();
        while started.elapsed() < Duration::from_secs(10) {
            if self.answers() {
                return true;
            }
            if let Some(Ok(Some(_))) = self.child.as_mut().map(|c| c.try_wait()) {
                self.child = None;
                return false;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        panic!(
            "redis-server on port {} did not answer within 10s; log: {}",
            self.port,
            std::fs::read_to_string(&log).unwrap_or_default()
        );
    }

    /// True when the server replies anything to a PING (PONG, or NOAUTH).
    fn answers(&self) -> bool {
        let Ok(mut s) = TcpStream::connect(("127.0.0.1", self.port)) else {
            return false;
        };
        let _ = s.set_read_timeout(Some(Duration::from_secs(1)));
        let mut buf = [0u8; 64];
        s.write_all(b"PING\r\n").is_ok() && matches!(s.read(&mut buf), Ok(n) if n > 0)
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/0", self.port)
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().expect("redis-server is running").id()
    }

    /// Sends a Unix signal with `kill(1)`.
    fn signal(&self, sig: &str) {
        let status = Command::new("kill")
            .arg(format!("-{sig}"))
            .arg(self.pid().to_string())
            .status()
            .expect("run kill");
        assert!(status.success(), "kill -{sig} failed");
    }

    /// SIGSTOP: the server keeps its sockets but answers nothing.
    pub fn freeze(&self) {
        self.signal("STOP");
    }

    pub fn thaw(&self) {
        self.signal("CONT");
    }

    /// SIGKILL, and waits for the process to be gone.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Starts it again on the same port and directory, with the same arguments.
    pub fn restart(&mut self) {
        self.restart_with(&[]);
    }

    /// Starts it again with `extra` arguments added (for this start only).
    pub fn restart_with(&mut self, extra: &[&str]) {
        self.kill();
        let saved = self.args.clone();
        self.args.extend(extra.iter().map(|s| s.to_string()));
        let ok = self.spawn();
        self.args = saved;
        assert!(ok, "redis-server did not restart on port {}", self.port);
    }

    /// A server restarted to load `keys` keys at 200 µs each (`--key-load-delay`): it
    /// answers LOADING for about `keys` x 200 µs.
    pub fn loading(keys: u32) -> Redis {
        let mut redis = Redis::start(&["--enable-debug-command", "yes"]);
        let populate = keys.to_string();
        assert_eq!(
            redis.cli(None, &["DEBUG", "POPULATE", &populate]).trim(),
            "OK"
        );
        assert_eq!(redis.cli(None, &["SAVE"]).trim(), "OK");
        redis.restart_with(&[
            "--key-load-delay",
            "200",
            "--loading-process-events-interval-bytes",
            "1024",
        ]);
        redis
    }

    /// The directory it runs in (its `--dir`).
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// Runs a command with redis-cli (with `-a` when given) and returns its output.
    pub fn cli(&self, password: Option<&str>, args: &[&str]) -> String {
        let mut c = Command::new("redis-cli");
        c.args(["-p", &self.port.to_string()]);
        if let Some(pw) = password {
            c.args(["--no-auth-warning", "-a", pw]);
        }
        let out = c.args(args).output().expect("run redis-cli");
        String::from_utf8_lossy(&out.stdout).into_owned()
    }
}

impl Drop for Redis {
    fn drop(&mut self) {
        if let Some(c) = self.child.as_ref() {
            // A frozen process must be woken to die cleanly with its sockets.
            let _ = Command::new("kill")
                .arg("-CONT")
                .arg(c.id().to_string())
                .status();
        }
        self.kill();
    }
}

/// A TLS-only redis-server with a fresh self-signed certificate (openssl, from scripts/test).
pub fn tls_redis(dir: &TempDir) -> (Redis, u16) {
    self_signed(dir.path(), "cert", "/CN=localhost");
    let (cert, key) = (dir.path().join("cert.pem"), dir.path().join("cert.key"));
    let tls_port = free_port();
    let redis = Redis::start(&[
        "--tls-port",
        &tls_port.to_string(),
        "--tls-cert-file",
        cert.to_str().unwrap(),
        "--tls-key-file",
        key.to_str().unwrap(),
        "--tls-auth-clients",
        "no",
    ]);
    (redis, tls_port)
}

/// Runs openssl with `args` in `dir`; panics with its words when it fails.
fn openssl(dir: &Path, args: &[&str]) {
    let out = Command::new("openssl")
        .current_dir(dir)
        .args(args)
        .output()
        .unwrap_or_else(|e| {
            panic!("cannot run openssl ({e}): run scripts/test, which installs it")
        });
    assert!(
        out.status.success(),
        "openssl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A self-signed certificate for `subject` in `dir`: `<name>.pem` and its key `<name>.key`.
fn self_signed(dir: &Path, name: &str, subject: &str) {
    openssl(
        dir,
        &[
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-days",
            "2",
            "-subj",
            subject,
            "-keyout",
            &format!("{name}.key"),
            "-out",
            &format!("{name}.pem"),
        ],
    );
}

/// A private CA made by the test, a server certificate it signed for `localhost` only
/// (not 127.0.0.1), a client certificate it signed, and a second, unrelated CA.
pub struct Pki {
    pub ca: PathBuf,
    pub other_ca: PathBuf,
    pub server_cert: PathBuf,
    pub server_key: PathBuf,
    pub client_cert: PathBuf,
    pub client_key: PathBuf,
}

impl Pki {
    pub fn new(dir: &TempDir) -> Pki {
        let d = dir.path();
        self_signed(d, "ca", "/CN=Sidecar Test CA");
        self_signed(d, "other-ca", "/CN=Another CA");
        for (name, usage) in [("server", "serverAuth"), ("client", "clientAuth")] {
            let ext = d.join(format!("{name}.ext"));
            let san = if name == "server" {
                "subjectAltName=DNS:localhost\n"
            } else {
                ""
            };
            std::fs::write(
                &ext,
                format!("{san}extendedKeyUsage={usage}\nbasicConstraints=CA:FALSE\n"),
            )
            .unwrap();
            openssl(
                d,
                &[
                    "req",
                    "-newkey",
                    "rsa:2048",
                    "-nodes",
                    "-subj",
                    &format!("/CN={name}"),
                    "-keyout",
                    &format!("{name}.key"),
                    "-out",
                    &format!("{name}.csr"),
                ],
            );
            openssl(
                d,
                &[
                    "x509",
                    "-req",
                    "-in",
                    &format!("{name}.csr"),
                    "-CA",
                    "ca.pem",
                    "-CAkey",
                    "ca.key",
                    "-CAcreateserial",
                    "-days",
                    "2",
                    "-out",
                    &format!("{name}.pem"),
                    "-extfile",
                    &format!("{name}.ext"),
                ],
            );
        }
        Pki {
            ca: d.join("ca.pem"),
            other_ca: d.join("other-ca.pem"),
            server_cert: d.join("server.pem"),
            server_key: d.join("server.key"),
            client_cert: d.join("client.pem"),
            client_key: d.join("client.key"),
        }
    }

    /// redis-server arguments for a TLS port with this PKI's server certificate;
    /// `clients`: `tls-auth-clients` (yes for mutual TLS).
    pub fn redis_args(&self, tls_port: u16, clients: &str) -> Vec<String> {
        let p = |p: &PathBuf| p.to_str().unwrap().to_string();
        vec![
            "--tls-port".into(),
            tls_port.to_string(),
            "--tls-cert-file".into(),
            p(&self.server_cert),
            "--tls-key-file".into(),
            p(&self.server_key),
            "--tls-ca-cert-file".into(),
            p(&self.ca),
            "--tls-auth-clients".into(),
            clients.into(),
        ]
    }
}

/// Runs a script of tests/celery with the pinned venv's python, in a clean environment
/// plus `env`.
pub fn python(script: &str, args: &[&str], env: &[(&str, &str)]) -> Output {
    celery_command("python", env)
        .arg(script)
        .args(args)
        .output()
        .expect("run the venv's python")
}

/// An HTTP response as the test sees it.
#[derive(Debug)]
pub struct Reply {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: String,
    /// The body's bytes as received (before any chunked decoding).
    pub raw: Vec<u8>,
}

impl Reply {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    pub fn json(&self) -> serde_json::Value {
        serde_json::from_str(&self.body).unwrap_or_else(|e| panic!("not JSON ({e}): {}", self.body))
    }
}

/// One HTTP/1.1 request with `Connection: close`; `extra` is added to the head as is.
pub fn http(addr: SocketAddr, method: &str, path: &str, extra: &str) -> std::io::Result<Reply> {
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(5))?;
    s.set_read_timeout(Some(Duration::from_secs(10)))?;
    write!(
        s,
        "{method} {path} HTTP/1.1\r\nHost: test\r\nConnection: close\r\n{extra}\r\n"
    )?;
    let mut raw = Vec::new();
    s.read_to_end(&mut raw)?;
    let text = String::from_utf8_lossy(&raw).into_owned();
    let raw_body = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .map(|at| raw[at + 4..].to_vec())
        .unwrap_or_default();
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let mut lines = head.lines();
    let status = lines
        .next()
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    let headers: Vec<(String, String)> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_string(), v.trim().to_string()))
        .collect();
    let chunked = headers.iter().any(|(k, v)| {
        k.eq_ignore_ascii_case("transfer-encoding") && v.eq_ignore_ascii_case("chunked")
    });
    let body = if chunked {
        dechunk(body)
    } else {
        body.to_string()
    };
    Ok(Reply {
        status,
        headers,
        body,
        raw: raw_body,
    })
}

/// A chunked body's data (Prometheus's HTTP API answers large results chunked).
fn dechunk(mut rest: &str) -> String {
    let mut out = String::new();
    while let Some((size, after)) = rest.split_once("\r\n") {
        let size = usize::from_str_radix(size.trim(), 16).unwrap_or(0);
        if size == 0 || after.len() < size {
            break;
        }
        out.push_str(&after[..size]);
        rest = after[size..].strip_prefix("\r\n").unwrap_or(&after[size..]);
    }
    out
}

/// `text` percent-encoded for a URL query value.
pub fn query_escape(text: &str) -> String {
    text.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// Collects a child's stdout and stderr lines as they come, on two threads.
fn capture(child: &mut Child) -> Arc<Mutex<Vec<String>>> {
    let logs = Arc::new(Mutex::new(Vec::new()));
    for stream in [
        Box::new(child.stderr.take().expect("stderr is piped")) as Box<dyn Read + Send>,
        Box::new(child.stdout.take().expect("stdout is piped")),
    ] {
        let logs = logs.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stream).lines().map_while(Result::ok) {
                logs.lock().unwrap().push(line);
            }
        });
    }
    logs
}

/// `check --json` with a one-shot timeout and `env` added: the exit code and the
/// `redis:cache` check.
pub fn check_cache(env: &[(&str, &str)]) -> (i32, serde_json::Value) {
    let mut all = ONE_SHOT.to_vec();
    all.extend_from_slice(env);
    let out = run(&["check", "--json"], &all);
    let doc: serde_json::Value = serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("check --json is not JSON ({e}): {out:?}"));
    (
        out.status.code().unwrap_or(-1),
        doc["checks"]["redis:cache"].clone(),
    )
}

/// The sidecar binary, serving on an ephemeral port.
pub struct Sidecar {
    pub addr: SocketAddr,
    child: Option<Child>,
    logs: Arc<Mutex<Vec<String>>>,
    _dir: TempDir,
}

/// A command for the binary with a clean environment (only PATH kept) in an empty
/// directory, so neither the machine's variables nor a stray `.env` leak in.
pub fn command(env: &[(&str, &str)], dir: &Path) -> Command {
    let mut c = Command::new(BIN);
    c.env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .current_dir(dir)
        .stdin(Stdio::null());
    for (k, v) in env {
        c.env(k, v);
    }
    c
}

/// Runs the binary to completion (for `check` and `config`).
pub fn run(args: &[&str], env: &[(&str, &str)]) -> Output {
    let dir = TempDir::new("cli");
    command(env, dir.path())
        .args(args)
        .output()
        .expect("run the sidecar binary")
}

impl Sidecar {
    /// Starts `serve` with `env` (plus `SIDECAR_LISTEN_ADDR=[::]:0` unless given) and
    /// waits for its "listening" log line.
    pub fn start(env: &[(&str, &str)]) -> Sidecar {
        let dir = TempDir::new("sidecar");
        let mut env = env.to_vec();
        if !env.iter().any(|(k, _)| *k == "SIDECAR_LISTEN_ADDR") {
            env.push(("SIDECAR_LISTEN_ADDR", "[::]:0"));
        }
        let mut child = command(&env, dir.path())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start the sidecar binary");
        let logs = capture(&mut child);
        let mut sidecar = Sidecar {
            addr: "127.0.0.1:1".parse().unwrap(),
            child: Some(child),
            logs,
            _dir: dir,
        };
        let port: u16 = wait_for(
            "the sidecar's listening line",
            Duration::from_secs(10),
            || {
                if let Some(Ok(Some(status))) = sidecar.child.as_mut().map(|c| c.try_wait()) {
                    panic!("sidecar exited with {status}: {}", sidecar.logs());
                }
                let logs = sidecar.logs.lock().unwrap();
                logs.iter().find_map(|l| listening_port(l))
            },
        );
        sidecar.addr = SocketAddr::from(([127, 0, 0, 1], port));
        sidecar
    }

    pub fn get(&self, path: &str) -> Reply {
        self.request("GET", path, "")
    }

    pub fn request(&self, method: &str, path: &str, extra: &str) -> Reply {
        http(self.addr, method, path, extra)
            .unwrap_or_else(|e| panic!("{method} {path} failed: {e}\nlogs:\n{}", self.logs()))
    }

    /// Polls `path` until its status is `code`; returns that reply.
    pub fn wait_status(&self, path: &str, code: u16) -> Reply {
        let mut last = None;
        wait_for(
            &format!("{path} to answer {code}"),
            Duration::from_secs(15),
            || {
                let r = self.get(path);
                if r.status == code {
                    return Some(r);
                }
                last = Some(r);
                None
            },
        )
    }

    /// Polls /metrics until `series` has `value` (the exposition is rendered just after
    /// each probe, so it can trail /readyz by a moment); returns that scrape.
    pub fn scrape_when(&self, series: &str, value: f64) -> Reply {
        wait_for(
            &format!("{series} = {value} in /metrics"),
            Duration::from_secs(15),
            || {
                let r = self.get("/metrics");
                (sample(&r.body, series) == Some(value)).then_some(r)
            },
        )
    }

    /// Everything it logged so far.
    pub fn logs(&self) -> String {
        self.logs.lock().unwrap().join("\n")
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().expect("sidecar is running").id()
    }

    /// Sends SIGTERM and waits (up to 10 s) for the exit; returns its status and how long
    /// it took.
    pub fn terminate(&mut self) -> (ExitStatus, Duration) {
        self.stop("TERM")
    }

    /// Sends `kill -<sig>` and waits (up to 10 s) for the exit; returns its status and how
    /// long it took.
    pub fn stop(&mut self, sig: &str) -> (ExitStatus, Duration) {
        let started = Instant::now();
        let status = Command::new("kill")
            .arg(format!("-{sig}"))
            .arg(self.pid().to_string())
            .status()
            .expect("run kill");
        assert!(status.success());
        let mut child = self.child.take().expect("sidecar is running");
        let exit = wait_for("the sidecar to exit", Duration::from_secs(10), || {
            child.try_wait().ok().flatten()
        });
        (exit, started.elapsed())
    }
}

/// The port in the "listening" log line, text (`addr=[::]:1234`) or JSON (`"addr":"..."`).
fn listening_port(line: &str) -> Option<u16> {
    let addr = if line.starts_with('{') {
        let v: serde_json::Value = serde_json::from_str(line).ok()?;
        if v["message"] != "listening" {
            return None;
        }
        v["addr"].as_str()?.to_string()
    } else {
        if !line.contains(" listening ") {
            return None;
        }
        line.split("addr=")
            .nth(1)?
            .split_whitespace()
            .next()?
            .to_string()
    };
    addr.parse::<SocketAddr>().ok().map(|a| a.port())
}

impl Drop for Sidecar {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// The value of the sample `name` (with its labels, exactly as printed) in a scrape.
pub fn sample(scrape: &str, series: &str) -> Option<f64> {
    scrape.lines().find_map(|l| {
        l.strip_prefix(series)?
            .strip_prefix(' ')?
            .trim()
            .parse()
            .ok()
    })
}

/// `promtool check metrics` on a scrape: panics with promtool's complaints, or when
/// promtool is missing (scripts/test installs it).
pub fn promtool_check_metrics(scrape: &str) {
    let mut child = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| {
            panic!("cannot run promtool ({e}): run scripts/test, which installs it")
        });
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(scrape.as_bytes())
        .expect("write to promtool");
    let out = child.wait_with_output().expect("promtool runs");
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        out.status.success() && said.trim().is_empty(),
        "promtool check metrics: {said}"
    );
}

/// The pinned Celery virtual environment that scripts/test prepares.
pub fn celery_venv() -> PathBuf {
    let venv = std::env::var_os("SIDECAR_TEST_CELERY_VENV")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("target/celery-venv"));
    assert!(
        venv.join("bin/celery").exists(),
        "no Celery virtual environment at {}: run scripts/test, which prepares it",
        venv.display()
    );
    venv
}

/// `tests/celery`, where the test app (`tasks.py`) and client (`send.py`) live.
fn celery_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/celery")
}

fn celery_command(program: &str, env: &[(&str, &str)]) -> Command {
    let mut c = Command::new(celery_venv().join("bin").join(program));
    c.current_dir(celery_dir())
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .env("C_FORCE_ROOT", "1")
        .env("PYTHONDONTWRITEBYTECODE", "1")
        .stdin(Stdio::null());
    for (k, v) in env {
        c.env(k, v);
    }
    c
}

/// A real Celery worker of the test app, in its own process group (killed whole on drop).
pub struct Worker {
    pub hostname: String,
    child: Option<Child>,
    logs: Arc<Mutex<Vec<String>>>,
}

impl Worker {
    /// `celery -A tasks worker -n <hostname>` with `args` (e.g. `-E`, `-Q emails`,
    /// `-P solo`); `env` carries BROKER_URL and the transport options.
    pub fn start(env: &[(&str, &str)], hostname: &str, args: &[&str]) -> Worker {
        use std::os::unix::process::CommandExt;
        let mut child = celery_command("celery", env)
            .args([
                "-A",
                "tasks",
                "worker",
                "--loglevel",
                "INFO",
                "--without-mingle",
            ])
            .args(["--hostname", hostname])
            .args(args)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .process_group(0)
            .spawn()
            .expect("start a celery worker");
        let logs = capture(&mut child);
        Worker {
            hostname: hostname.to_string(),
            child: Some(child),
            logs,
        }
    }

    pub fn logs(&self) -> String {
        self.logs.lock().unwrap().join("\n")
    }

    /// Waits until the worker logged that it is ready to consume.
    pub fn wait_ready(&self) {
        wait_for(
            &format!("worker {} to be ready", self.hostname),
            Duration::from_secs(30),
            || self.logs().contains(" ready.").then_some(()),
        );
    }

    /// Sends `sig` to the worker's whole process group (main process and pool children).
    fn signal_group(&self, sig: &str) {
        if let Some(c) = self.child.as_ref() {
            kill(sig, &format!("-{}", c.id()));
        }
    }

    /// SIGKILL to the main process only: what an OOM kill does; no worker-offline is sent.
    /// The pool's children are then killed too, so that nothing of ours is left running.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            kill("KILL", &c.id().to_string());
            let _ = c.wait();
            kill("KILL", &format!("-{}", c.id()));
        }
    }

    /// SIGTERM (warm shutdown: worker-offline at once), then waits for the exit.
    pub fn terminate(&mut self) {
        self.signal_group("TERM");
        if let Some(mut c) = self.child.take() {
            let pid = c.id();
            let _ = wait_for("the worker to exit", Duration::from_secs(30), || {
                c.try_wait().ok().flatten()
            });
            kill("KILL", &format!("-{pid}"));
        }
    }
}

/// `kill -s SIG -- TARGET`; a negative target is a process group.
fn kill(sig: &str, target: &str) {
    let _ = Command::new("kill")
        .args(["-s", sig, "--", target])
        .stderr(Stdio::null())
        .status();
}

impl Drop for Worker {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            kill("KILL", &format!("-{}", c.id()));
            let _ = c.wait();
        }
    }
}
/// Sends tasks with the real Celery client (`send.py`); returns the task ids.
pub fn send(env: &[(&str, &str)], sends: &str) -> Vec<String> {
    let out = celery_command("python", env)
        .arg("send.py")
        .arg(sends)
        .output()
        .expect("run send.py");
    assert!(
        out.status.success(),
        "send.py failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(str::to_string)
        .collect()
}

/// What Celery itself counts in each queue (kombu's queue size: LLEN over the app's own
/// priority steps), with the app's settings in `env`.
pub fn celery_count(
    env: &[(&str, &str)],
    queues: &[&str],
) -> std::collections::BTreeMap<String, u64> {
    let out = celery_command("python", env)
        .arg("count.py")
        .args(queues)
        .output()
        .expect("run count.py");
    assert!(
        out.status.success(),
        "count.py failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("count.py prints JSON")
}

/// Sends one raw Redis command and returns the first reply line: enough to PUBLISH test
/// payloads without redis-cli's quoting getting in the way of binary bytes.
pub fn redis_command(port: u16, args: &[&[u8]]) -> String {
    redis_pipeline(port, &[args.to_vec()]).remove(0)
}

/// Sends many raw commands in one write on one connection, and returns the first line of
/// each reply (for commands whose replies are one line: PUBLISH, SET, SADD...).
pub fn redis_pipeline(port: u16, commands: &[Vec<&[u8]>]) -> Vec<String> {
    let mut s = TcpStream::connect(("127.0.0.1", port)).expect("connect to redis");
    let mut req = Vec::new();
    for args in commands {
        req.extend_from_slice(format!("*{}\r\n", args.len()).as_bytes());
        for a in args {
            req.extend_from_slice(format!("${}\r\n", a.len()).as_bytes());
            req.extend_from_slice(a);
            req.extend_from_slice(b"\r\n");
        }
    }
    s.write_all(&req).expect("write to redis");
    let mut reader = BufReader::new(s);
    commands
        .iter()
        .map(|_| {
            let mut line = String::new();
            reader.read_line(&mut line).expect("read from redis");
            line.trim_end().to_string()
        })
        .collect()
}
