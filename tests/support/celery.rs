//! The pinned Celery virtual environment: workers, clients and Python helpers.

use super::*;

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
