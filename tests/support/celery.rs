//! The pinned Celery virtual environment: workers, clients and Python helpers.

use super::*;
use serde_json::Value;

/// Runs a script of tests/celery with the pinned venv's python, in a clean environment
/// plus `env`.
pub fn python(script: &str, args: &[&str], env: &[(&str, &str)]) -> Output {
    celery_command("python", env)
        .arg(script)
        .args(args)
        .output()
        .expect("run the venv's python")
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
pub fn celery_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/celery")
}

pub fn celery_command(program: &str, env: &[(&str, &str)]) -> Command {
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
        let mut all = vec!["worker", "--without-mingle", "--hostname", hostname];
        all.extend_from_slice(args);
        Worker::spawn(env, hostname, &all)
    }

    /// `celery -A tasks beat` with `args` (e.g. `-S redbeat.RedBeatScheduler`); `env`
    /// carries BROKER_URL and BEAT_EVERY.
    pub fn beat(env: &[(&str, &str)], args: &[&str]) -> Worker {
        let mut all = vec!["beat"];
        all.extend_from_slice(args);
        Worker::spawn(env, "beat", &all)
    }

    fn spawn(env: &[(&str, &str)], name: &str, args: &[&str]) -> Worker {
        use std::os::unix::process::CommandExt;
        let mut child = celery_command("celery", env)
            .args(["-A", "tasks"])
            .args(&args[..1])
            .args(["--loglevel", "INFO"])
            .args(&args[1..])
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .process_group(0)
            .spawn()
            .unwrap_or_else(|e| panic!("start celery {name}: {e}"));
        let logs = capture(&mut child);
        Worker {
            hostname: name.to_string(),
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

/// The sidecar's celery check, from /healthz.
pub fn celery(sidecar: &Sidecar) -> Value {
    sidecar.get("/healthz").json()["checks"]["celery"].clone()
}

/// Polls the celery check until `ok` holds; returns it.
pub fn wait_celery(sidecar: &Sidecar, what: &str, ok: impl Fn(&Value) -> bool) -> Value {
    let mut last = Value::Null;
    let found = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        wait_for(what, Duration::from_secs(40), || {
            let c = celery(sidecar);
            last = c.clone();
            ok(&c).then_some(c)
        })
    }));
    match found {
        Ok(c) => c,
        Err(_) => panic!(
            "timed out waiting for {what}; last celery check:\n{last:#}\nlogs:\n{}",
            sidecar.logs()
        ),
    }
}

/// The check's first warning that contains `part`.
pub fn warning(c: &Value, part: &str) -> Option<String> {
    c["warnings"]
        .as_array()?
        .iter()
        .filter_map(Value::as_str)
        .find(|w| w.contains(part))
        .map(String::from)
}

/// The sidecar's environment: fast probes plus `extra`.
pub fn env<'a>(url: &'a str, extra: &[(&'a str, &'a str)]) -> Vec<(&'a str, &'a str)> {
    let mut v: Vec<(&str, &str)> = FAST
        .iter()
        .copied()
        .filter(|(k, _)| *k != "SIDECAR_CELERY_MIN_WORKERS")
        .collect();
    v.push(("CELERY_BROKER_URL", url));
    v.extend_from_slice(extra);
    v
}
