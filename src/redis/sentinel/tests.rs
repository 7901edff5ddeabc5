use super::*;
use crate::redis::target::Role;

fn sentinels(t: &Target) -> &Sentinels {
    t.sentinels().expect("a Sentinel target")
}

fn node(host: &str, port: u16) -> Node {
    Node {
        host: host.into(),
        port,
    }
}

#[test]
fn kombu_urls_give_every_sentinel_and_the_first_urls_credentials_and_db() {
    let t = Target::parse(
        Role::Broker,
        "sentinel://:m%40ster@h1:26380/2;sentinel://h2;sentinel://[::1]:26381/5",
    )
    .unwrap();
    let s = sentinels(&t);
    assert_eq!(
        s.nodes,
        vec![
            node("h1", 26380),
            node("h2", DEFAULT_PORT),
            node("::1", 26381)
        ]
    );
    assert_eq!(t.db(), 2);
    assert_eq!(t.password(), Some("m@ster"));
    assert!(s.master.is_empty());
    assert_eq!(
        t.redacted(),
        "sentinel://:***@h1:26380/2;sentinel://h2:26379/2;sentinel://[::1]:26381/2 master_name="
    );
}

#[test]
fn redis_sentinel_urls_name_the_master_in_the_path() {
    let mut t = Target::parse(
        Role::Cache,
        "redis+sentinel://:pw@h1:26379,h2:26380/mymaster/3",
    )
    .unwrap();
    assert_eq!(sentinels(&t).master, "mymaster");
    assert_eq!(sentinels(&t).nodes.len(), 2);
    assert_eq!(t.db(), 3);
    // The URL's name wins over the setting; the sentinel password is never shown.
    t.configure_sentinels(Some("other"), None, Some("sentinelpw".into()));
    assert_eq!(sentinels(&t).master, "mymaster");
    assert!(
        t.redacted()
            .ends_with("master_name=mymaster sentinel_password=***"),
        "{}",
        t.redacted()
    );
    assert!(!t.redacted().contains("sentinelpw"));
}

#[test]
fn the_master_address_is_read_from_the_sentinels_reply() {
    let fields = |flags: &str| {
        let pairs = [
            ("name", "mymaster"),
            ("ip", "10.0.0.7"),
            ("port", "6379"),
            ("flags", flags),
            ("config-epoch", "3"),
        ];
        Reply::Array(Some(
            pairs
                .iter()
                .flat_map(|(k, v)| [k, v])
                .map(|t| Reply::Bulk(Some(t.as_bytes().to_vec())))
                .collect(),
        ))
    };
    assert_eq!(
        master_addr(&fields("master")),
        Ok(Master {
            node: node("10.0.0.7", 6379),
            epoch: 3
        })
    );
    // Down in this sentinel's eyes: redis-py asks the next one.
    assert_eq!(
        master_addr(&fields("s_down,master")),
        Err(Miss::Down("s_down,master".into()))
    );
    assert_eq!(
        master_addr(&Reply::Error("ERR No such master with that name".into())),
        Err(Miss::UnknownName)
    );
    // Whatever else is cut short before it reaches /healthz.
    let Err(Miss::Said(text)) = master_addr(&Reply::Simple("x".repeat(10_000))) else {
        panic!("not a sentinel's answer")
    };
    assert!(text.len() < 300, "{}", text.len());
    assert_eq!(
        master_addr(&Reply::Error("NOAUTH Authentication required.".into())),
        Err(Miss::Auth("NOAUTH Authentication required.".into()))
    );
}

#[test]
fn no_master_names_the_most_telling_cause_and_each_sentinel() {
    let mut t = Target::parse(Role::Broker, "sentinel://a:1;sentinel://b:2").unwrap();
    t.configure_sentinels(Some("mymaster"), None, None);
    let s = sentinels(&t);
    let (a, b) = (&s.nodes[0], &s.nodes[1]);
    let f = no_master(
        s,
        &[
            (a, Miss::Unreachable("refused the connection".into())),
            (b, Miss::UnknownName),
        ],
    );
    assert_eq!(f.reason, Reason::Other);
    assert_eq!(
        f.message,
        "no sentinel named the master \"mymaster\": a:1 refused the connection; b:2 knows no master named \"mymaster\""
    );
    let f = no_master(
        s,
        &[
            (a, Miss::Auth("WRONGPASS".into())),
            (b, Miss::Unreachable("x".into())),
        ],
    );
    assert_eq!(f.reason, Reason::Auth);
    let f = no_master(s, &[(a, Miss::Unreachable("x".into()))]);
    assert_eq!(f.reason, Reason::Connect);
}

#[test]
fn a_new_master_counts_as_a_failover_and_the_first_does_not() {
    let t = Target::parse(Role::Broker, "sentinel://a:1").unwrap();
    let s = sentinels(&t);
    let at = |host: &str, epoch| Master {
        node: node(host, 6379),
        epoch,
    };
    assert!(!s.learn(&at("10.0.0.1", 0)));
    assert!(!s.learn(&at("10.0.0.1", 0)));
    assert!(s.learn(&at("10.0.0.2", 1)));
    // A sentinel that has not heard of the failover (an older epoch) does not move it back.
    assert!(!s.learn(&at("10.0.0.1", 0)));
    let state = s.state();
    assert_eq!(state.failovers, 1);
    assert!(state.changed_at.is_some());
    // Clones share what was learned.
    assert_eq!(
        t.clone().sentinels().unwrap().current(),
        Some(node("10.0.0.2", 6379))
    );
}
