//! A real Redis Cluster on loopback: three masters made with `redis-cli --cluster
//! create`, each with a password (`requirepass` and `masterauth`, as Redis's cluster
//! tutorial sets them), `cluster-node-timeout` 2000 ms so that a dead master fails the
//! cluster in seconds. Ports below 55000: a node's bus port is its port + 10000.

use super::*;

pub const CLUSTER_PASSWORD: &str = "cluster-pw-5c7e2";

/// A port below 55000 whose bus port (+10000) is free too.
pub fn cluster_port() -> u16 {
    static NEXT: AtomicUsize = AtomicUsize::new(0);
    let base = 20000 + (std::process::id() as usize * 97) % 20000;
    for _ in 0..5000 {
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let port = (base + n * 7) % 35000 + 20000;
        let free = |p: usize| TcpListener::bind(("127.0.0.1", p as u16)).is_ok();
        if free(port) && free(port + 10000) {
            return port as u16;
        }
    }
    panic!("no free port below 55000 with its bus port free, in 5000 tries");
}

pub struct RedisCluster {
    pub nodes: Vec<Redis>,
}

impl RedisCluster {
    pub fn start() -> RedisCluster {
        let args = [
            "--cluster-enabled",
            "yes",
            "--cluster-config-file",
            "nodes.conf",
            "--cluster-node-timeout",
            "2000",
            "--requirepass",
            CLUSTER_PASSWORD,
            "--masterauth",
            CLUSTER_PASSWORD,
        ];
        let nodes: Vec<Redis> = (0..3)
            .map(|_| Redis::start_on(cluster_port, &args))
            .collect();
        let addresses: Vec<String> = nodes
            .iter()
            .map(|n| format!("127.0.0.1:{}", n.port))
            .collect();
        let out = Command::new("redis-cli")
            .args([
                "--no-auth-warning",
                "-a",
                CLUSTER_PASSWORD,
                "--cluster",
                "create",
            ])
            .args(&addresses)
            .args(["--cluster-replicas", "0", "--cluster-yes"])
            .output()
            .expect("run redis-cli: scripts/test installs it");
        assert!(
            out.status.success(),
            "redis-cli --cluster create failed: {}",
            String::from_utf8_lossy(&out.stdout)
        );
        let cluster = RedisCluster { nodes };
        for n in &cluster.nodes {
            wait_for(
                "cluster_state:ok on every node",
                Duration::from_secs(30),
                || {
                    cluster
                        .cli(n, &["CLUSTER", "INFO"])
                        .contains("cluster_state:ok")
                        .then_some(())
                },
            );
        }
        cluster
    }

    pub fn cli(&self, node: &Redis, args: &[&str]) -> String {
        node.cli(Some(CLUSTER_PASSWORD), args)
    }

    /// `redis+cluster://` with the password and the first node as the seed.
    pub fn url(&self) -> String {
        format!(
            "redis+cluster://:{CLUSTER_PASSWORD}@127.0.0.1:{}",
            self.nodes[0].port
        )
    }
}
