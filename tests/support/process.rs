//! Processes and files: temporary directories, free ports, polling, captured output.

use super::*;

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

/// Collects a child's stdout and stderr lines as they come, on two threads.
pub fn capture(child: &mut Child) -> Arc<Mutex<Vec<String>>> {
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

/// `kill -s SIG -- TARGET`; a negative target is a process group.
pub fn kill(sig: &str, target: &str) {
    let _ = Command::new("kill")
        .args(["-s", sig, "--", target])
        .stderr(Stdio::null())
        .status();
}
