//! A real Sentinel topology on loopback: a master, a replica and three sentinels, every
//! one with a password, as Redis's Sentinel documentation sets them up (`masterauth` on
//! both servers, `sentinel auth-pass` for the master, `requirepass` and `sentinel
//! sentinel-pass` on the sentinels). Two more names are monitored for `check`'s faults:
//! `ghost`, announced at an address where nothing listens, and `big`, whose quorum (5) the
//! three sentinels cannot reach.

use super::*;

pub const MASTER_NAME: &str = "mymaster";
pub const MASTER_PASSWORD: &str = "master-pw-8e41c";
pub const SENTINEL_PASSWORD: &str = "sentinel-pw-93d0a";

/// One `redis-server --sentinel` of our own, killed on drop.
pub struct SentinelServer {
    pub port: u16,
    child: Option<Child>,
    dir: TempDir,
}

impl SentinelServer {
    fn start(config: &str) -> SentinelServer {
        for _ in 0..5 {
            let port = free_port();
            let dir = TempDir::new("sentinel");
            let conf = dir.path().join("sentinel.conf");
            std::fs::write(
                &conf,
                format!(
                    "port {port}\nbind 127.0.0.1\ndaemonize no\nlogfile {}\ndir {}\n{config}",
                    dir.path().join("sentinel.log").display(),
                    dir.path().display()
                ),
            )
            .expect("write sentinel.conf");
            let child = Command::new("redis-server")
                .arg(&conf)
                .arg("--sentinel")
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .expect("run redis-server --sentinel: scripts/test installs it");
            let mut s = SentinelServer {
                port,
                child: Some(child),
                dir,
            };
            let up = (0..200).any(|_| {
                std::thread::sleep(Duration::from_millis(25));
                s.cli(&["PING"]) == "PONG"
            });
            if up {
                return s;
            }
            s.kill();
        }
        panic!("no sentinel started on any of 5 free ports");
    }

    /// `redis-cli` against this sentinel, logged in; the output trimmed.
    pub fn cli(&self, args: &[&str]) -> String {
        let out = Command::new("redis-cli")
            .args(["-p", &self.port.to_string(), "--no-auth-warning"])
            .args(["-a", SENTINEL_PASSWORD])
            .args(args)
            .output()
            .expect("run redis-cli: scripts/test installs it");
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    }

    /// The master's address this sentinel gives for `name`, as `host:port`.
    pub fn master_of(&self, name: &str) -> String {
        self.cli(&["SENTINEL", "GET-MASTER-ADDR-BY-NAME", name])
            .lines()
            .collect::<Vec<_>>()
            .join(":")
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("sentinel.log")).unwrap_or_default()
    }

    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl Drop for SentinelServer {
    fn drop(&mut self) {
        self.kill();
    }
}

pub struct Topology {
    pub master: Redis,
    pub replica: Redis,
    pub sentinels: Vec<SentinelServer>,
    /// Monitored as `big`, whose quorum cannot be reached.
    pub lonely: Redis,
    /// Where `ghost` is announced: nothing listens there.
    pub ghost_port: u16,
}

impl Topology {
    /// Starts the servers and sentinels and waits until the sentinels know each other and
    /// the replica (so that `SENTINEL FAILOVER` has a replica to promote).
    pub fn start() -> Topology {
        let auth = [
            "--requirepass",
            MASTER_PASSWORD,
            "--masterauth",
            MASTER_PASSWORD,
        ];
        let master = Redis::start(&auth);
        let port = master.port.to_string();
        let mut replica_args = auth.to_vec();
        replica_args.extend_from_slice(&["--replicaof", "127.0.0.1", &port]);
        let replica = Redis::start(&replica_args);
        let lonely = Redis::start(&[]);
        let ghost_port = free_port();
        let config = format!(
            "requirepass {SENTINEL_PASSWORD}\n\
             sentinel sentinel-pass {SENTINEL_PASSWORD}\n\
             sentinel monitor {MASTER_NAME} 127.0.0.1 {} 2\n\
             sentinel auth-pass {MASTER_NAME} {MASTER_PASSWORD}\n\
             sentinel down-after-milliseconds {MASTER_NAME} 2000\n\
             sentinel failover-timeout {MASTER_NAME} 10000\n\
             sentinel monitor ghost 127.0.0.1 {ghost_port} 2\n\
             sentinel monitor big 127.0.0.1 {} 5\n",
            master.port, lonely.port
        );
        let sentinels: Vec<SentinelServer> =
            (0..3).map(|_| SentinelServer::start(&config)).collect();
        let topology = Topology {
            master,
            replica,
            sentinels,
            lonely,
            ghost_port,
        };
        for s in &topology.sentinels {
            wait_for(
                "each sentinel to see the other two and the replica",
                Duration::from_secs(30),
                || {
                    let quorum = s.cli(&["SENTINEL", "CKQUORUM", MASTER_NAME]);
                    let replicas = s.cli(&["SENTINEL", "REPLICAS", MASTER_NAME]);
                    (quorum.contains("3 usable Sentinels")
                        && replicas.contains(&topology.replica.port.to_string()))
                    .then_some(())
                },
            );
        }
        topology
    }

    /// The broker URL as Celery writes it: the master's password in the first URL, one
    /// `sentinel://` per sentinel, the database in each.
    pub fn url(&self) -> String {
        let urls: Vec<String> = self
            .sentinels
            .iter()
            .enumerate()
            .map(|(i, s)| {
                let auth = if i == 0 {
                    format!(":{MASTER_PASSWORD}@")
                } else {
                    String::new()
                };
                format!("sentinel://{auth}127.0.0.1:{}/0", s.port)
            })
            .collect();
        urls.join(";")
    }

    /// The address every sentinel gives for the master, once they agree.
    pub fn agreed_master(&self) -> Option<String> {
        let first = self.sentinels[0].master_of(MASTER_NAME);
        self.sentinels[1..]
            .iter()
            .all(|s| s.master_of(MASTER_NAME) == first)
            .then_some(first)
    }

    pub fn logs(&self) -> String {
        self.sentinels
            .iter()
            .map(|s| format!("--- sentinel {}:\n{}", s.port, s.log()))
            .collect()
    }
}
