//! Real redis-server processes on free ports (plain, TLS, mutual TLS), certificates made
//! with openssl, and raw commands to them.

use super::*;

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
        Redis::start_on(free_port, extra)
    }

    /// Starts `redis-server` on a port `pick` gives (another on a clash).
    pub fn start_on(pick: impl Fn() -> u16, extra: &[&str]) -> Redis {
        let args: Vec<String> = extra.iter().map(|s| s.to_string()).collect();
        for _ in 0..5 {
            let mut r = Redis {
                port: pick(),
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
pub fn openssl(dir: &Path, args: &[&str]) {
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
pub fn self_signed(dir: &Path, name: &str, subject: &str) {
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
