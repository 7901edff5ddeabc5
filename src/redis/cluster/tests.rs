use super::*;

pub(crate) const INFO: &str = "cluster_enabled:1\r\ncluster_state:fail\r\ncluster_slots_assigned:16384\r\ncluster_slots_ok:10923\r\ncluster_slots_pfail:0\r\ncluster_slots_fail:5461\r\ncluster_known_nodes:4\r\ncluster_size:3\r\n";

pub(crate) const NODES: &str = "\
07c37dfeb235213a872192d90877d0cd55635b91 127.0.0.1:30004@40004,host4 slave e7d1eecce10fd6bb5eb35b9f99a514335d9ba9ca 0 1426238317239 4 connected
67ed2db8d677e59ec4a4cefb06858cf2a1a89fa1 127.0.0.1:30002@40002 master - 0 1426238316232 2 connected 5461-10922
292f8b365bb7edb5e285caf0b7e6ddc7265d2f4f 127.0.0.1:30003@40003 master,fail - 1426238316232 0 3 disconnected 10923-16383
e7d1eecce10fd6bb5eb35b9f99a514335d9ba9ca 127.0.0.1:30001@40001 myself,master - 0 0 1 connected 0-5460 [5461->-67ed2db8d677e59ec4a4cefb06858cf2a1a89fa1]
";

#[test]
fn cluster_info_and_nodes_are_read_as_redis_writes_them() {
    let v = parse(INFO, NODES, "127.0.0.1:30001");
    assert_eq!(v.state, "fail");
    assert_eq!(
        (v.slots_assigned, v.slots_ok, v.slots_fail),
        (16384, 10923, 5461)
    );
    assert_eq!((v.known_nodes, v.size), (4, 3));
    let summary: Vec<(&str, &str, u32, Option<&str>)> = v
        .nodes
        .iter()
        .map(|n| (n.address.as_str(), n.role, n.slots, n.failing()))
        .collect();
    assert_eq!(
        summary,
        vec![
            ("127.0.0.1:30001", "master", 5461, None),
            ("127.0.0.1:30002", "master", 5462, None),
            ("127.0.0.1:30003", "master", 5461, Some("fail")),
            ("127.0.0.1:30004", "replica", 0, None),
        ]
    );
    assert_eq!(v.nodes[3].master.as_deref(), Some("e7d1eecc"));
    assert_eq!(v.nodes[0].ranges, vec!["0-5460"]);
    assert_eq!(v.nodes[2].link, "disconnected");
}

#[test]
fn garbage_is_skipped_not_a_panic() {
    let v = parse(
        "nonsense",
        "a b\n\n\u{0}\u{0}\nid x y z 1 2 3 connected 5-a [x",
        "h:1",
    );
    assert_eq!(v.state, "");
    assert_eq!(v.nodes.len(), 1);
    assert_eq!(v.nodes[0].slots, 0);
}
