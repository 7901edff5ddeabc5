//! Redis Cluster as the app's cache, on a real 3-master cluster on loopback (made with
//! `redis-cli --cluster create`, password-protected): the probe finds every node, reports
//! `cluster_state`, the slots and each node's role and latency; a master killed (the seed
//! itself) fails the cluster, and the sidecar names it from another node. A cluster given
//! as Celery's broker is refused at start.

mod support;

use std::time::Duration;

use serde_json::Value;
use support::*;

fn cache(sidecar: &Sidecar) -> Value {
    sidecar.get("/healthz").json()["checks"]["redis:cache"].clone()
}

fn check(url: &str) -> (i32, Value) {
    let mut env = ONE_SHOT.to_vec();
    env.push(("REDIS_URL", url));
    let out = run(&["check", "--json"], &env);
    assert!(
        !format!("{out:?}").contains(CLUSTER_PASSWORD),
        "the password in check's output: {out:?}"
    );
    let doc: Value = serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("check --json is not JSON ({e}): {out:?}"));
    (out.status.code().unwrap_or(-1), doc)
}

fn steps<'a>(doc: &'a Value, name: &str) -> Vec<&'a Value> {
    doc["checks"]["redis:cache"]["steps"]
        .as_array()
        .unwrap_or_else(|| panic!("no steps: {doc:#}"))
        .iter()
        .filter(|s| s["step"] == name)
        .collect()
}

#[test]
fn a_cluster_cache_is_probed_node_by_node_and_a_dead_master_named() {
    let cluster = RedisCluster::start();
    let url = cluster.url();
    let seed = format!("127.0.0.1:{}", cluster.nodes[0].port);
    let mut env = FAST.to_vec();
    env.push(("REDIS_URL", &url));
    let sidecar = Sidecar::start(&env);

    // Healthy: every node found, its slots and latency; the state in the metrics.
    let c = wait_for(
        "a healthy cluster with its three nodes",
        Duration::from_secs(20),
        || {
            let c = cache(&sidecar);
            let nodes = c["details"]["cluster"]["nodes"].as_array()?.len();
            (c["status"] == "healthy" && nodes == 3).then_some(c)
        },
    );
    let view = &c["details"]["cluster"];
    assert_eq!(view["state"], "ok", "{c:#}");
    assert_eq!(view["slots_ok"], 16384, "{c:#}");
    let nodes = view["nodes"].as_array().unwrap();
    let slots: u64 = nodes.iter().map(|n| n["slots"].as_u64().unwrap()).sum();
    assert_eq!(slots, 16384, "{c:#}");
    for n in nodes {
        assert_eq!(n["role"], "master", "{c:#}");
        assert!(n["latency_ms"].as_f64().is_some(), "{c:#}");
    }
    let addresses: Vec<&str> = nodes.iter().filter_map(|n| n["address"].as_str()).collect();
    for redis in &cluster.nodes {
        assert!(
            addresses.contains(&format!("127.0.0.1:{}", redis.port).as_str()),
            "{c:#}"
        );
    }
    let m = sidecar
        .scrape_when("redis_cluster_state{role=\"cache\"}", 1.0)
        .body;
    assert_eq!(
        sample(&m, "redis_cluster_slots_assigned{role=\"cache\"}"),
        Some(16384.0)
    );
    assert_eq!(
        sample(&m, "redis_cluster_nodes_unreachable{role=\"cache\"}"),
        Some(0.0)
    );
    promtool_check_metrics(&m);

    let (code, doc) = check(&url);
    assert_eq!(code, 0, "{doc:#}");
    assert_eq!(steps(&doc, "cluster")[0]["status"], "ok", "{doc:#}");
    let node_steps = steps(&doc, "node");
    assert_eq!(node_steps.len(), 3, "{doc:#}");
    assert!(node_steps.iter().all(|s| s["status"] == "ok"), "{doc:#}");

    // One node with another password: the cluster serves, the sidecar cannot log in
    // there, and says so (degraded), not that the node is down.
    let other = &cluster.nodes[2];
    cluster.cli(other, &["CONFIG", "SET", "requirepass", "not-the-same-pw"]);
    let c = wait_for(
        "the node refusing the login",
        Duration::from_secs(20),
        || {
            let c = cache(&sidecar);
            (c["status"] == "degraded").then_some(c)
        },
    );
    let finding = format!("{c}");
    assert!(
        finding.contains(&format!("127.0.0.1:{} (master", other.port)),
        "{c:#}"
    );
    assert!(finding.contains("refused the login"), "{c:#}");
    assert!(finding.contains("the same on every node"), "{c:#}");
    other.cli(
        Some("not-the-same-pw"),
        &["CONFIG", "SET", "requirepass", CLUSTER_PASSWORD],
    );
    wait_for("healthy again", Duration::from_secs(20), || {
        (cache(&sidecar)["status"] == "healthy").then_some(())
    });

    // The seed, a master without a replica, killed: the cluster fails; the sidecar reaches
    // it through another node and names the dead one with its slots.
    let mut cluster = cluster;
    let dead = cluster.nodes[0].port;
    cluster.nodes[0].kill();
    let c = wait_for(
        "the cluster reported failed",
        Duration::from_secs(30),
        || {
            let c = cache(&sidecar);
            let error = c["error"].as_str()?.to_string();
            error.contains("cluster_state:fail").then_some(c)
        },
    );
    let error = c["error"].as_str().unwrap();
    assert_eq!(c["status"], "unhealthy", "{c:#}");
    assert!(error.contains(&format!("{seed} (master")), "{error}");
    assert!(
        !error.contains(&format!("on {seed}")),
        "asked another node: {error}"
    );
    assert!(
        c["fix"].as_str().unwrap().contains("redis-cli --cluster"),
        "{c:#}"
    );
    sidecar.scrape_when("redis_cluster_state{role=\"cache\"}", 0.0);
    let m = sidecar
        .scrape_when("redis_cluster_nodes_unreachable{role=\"cache\"}", 1.0)
        .body;
    promtool_check_metrics(&m);

    // check is one process with no earlier look: with the dead seed alone it cannot
    // reach the cluster, as redis-py's RedisCluster could not; given every node as a seed,
    // it reaches another and names the dead master as the server does.
    let (code, doc) = check(&url);
    assert_eq!(code, 1, "{doc:#}");
    let last = |doc: &Value| {
        doc["checks"]["redis:cache"]["steps"]
            .as_array()
            .and_then(|s| s.last())
            .cloned()
            .unwrap_or_default()
    };
    assert_eq!(last(&doc)["step"], "tcp", "{doc:#}");
    let seeds: Vec<String> = cluster
        .nodes
        .iter()
        .map(|n| format!("127.0.0.1:{}", n.port))
        .collect();
    let all = format!("redis+cluster://:{CLUSTER_PASSWORD}@{}", seeds.join(","));
    let (code, doc) = check(&all);
    assert_eq!(code, 1, "{doc:#}");
    let failed = last(&doc);
    assert_eq!(
        (&failed["step"], &failed["status"]),
        (&"cluster".into(), &"fail".into()),
        "{doc:#}"
    );
    let detail = failed["detail"].as_str().unwrap_or_default();
    assert!(
        detail.contains(&format!("127.0.0.1:{dead} (master")),
        "{doc:#}"
    );

    for text in [
        sidecar.logs(),
        sidecar.get("/healthz").body,
        sidecar.get("/metrics").body,
    ] {
        assert!(!text.contains(CLUSTER_PASSWORD), "{text}");
    }
}

#[test]
fn a_cluster_as_celerys_broker_is_refused_at_start() {
    let out = run(
        &["serve"],
        &[("CELERY_BROKER_URL", "redis+cluster://127.0.0.1:30001")],
    );
    assert_eq!(out.status.code(), Some(2), "{out:?}");
    let said = String::from_utf8_lossy(&out.stderr);
    assert!(
        said.contains("CELERY_BROKER_URL")
            && said.contains("kombu's Redis transport does not support Cluster"),
        "{said}"
    );
}
