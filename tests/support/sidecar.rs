//! The sidecar binary: one-shot commands and a serving process.

use super::*;

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
pub fn listening_port(line: &str) -> Option<u16> {
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
