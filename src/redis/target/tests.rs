use super::*;

#[test]
fn railway_url_is_redacted_with_port_and_db() {
    let t = Target::parse(
        Role::Cache,
        "redis://default:s3cr3t@redis.railway.internal:6379",
    )
    .unwrap();
    assert_eq!(
        t.redacted(),
        "redis://default:***@redis.railway.internal:6379/0"
    );
    assert_eq!(t.user(), Some("default"));
    assert_eq!(t.password(), Some("s3cr3t"));
    assert!(!format!("{t:?}").contains("s3cr3t"));
}

#[test]
fn redaction_covers_every_form() {
    let cases = [
        ("redis://127.0.0.1", "redis://127.0.0.1:6379/0"),
        ("redis://:pw@h:1/2", "redis://:***@h:1/2"),
        ("rediss://u:p%40w@h/3", "rediss://u:***@h:6379/3"),
        ("redis://[::1]:6380/1", "redis://[::1]:6380/1"),
        ("redis://h?db=4", "redis://h:6379/4"),
        (
            "redis+unix:///run/redis.sock?db=2&pass=pw",
            "unix://:***@/run/redis.sock?db=2",
        ),
        (
            "unix:///tmp/r.sock?username=app&password=pw",
            "unix://app:***@/tmp/r.sock?db=0",
        ),
        (
            "unix://:pw@/tmp/r.sock?db=3",
            "unix://:***@/tmp/r.sock?db=3",
        ),
        (
            "rediss://h?ssl_ca_certs=/ca.pem&ssl_certfile=/c.pem&ssl_keyfile=/k.pem&ssl_check_hostname=false",
            "rediss://h:6379/0?ssl_check_hostname=false&ssl_ca_certs=/ca.pem&ssl_certfile=/c.pem&ssl_keyfile=/k.pem",
        ),
    ];
    for (input, want) in cases {
        let t = Target::parse(Role::Cache, input).unwrap();
        assert_eq!(t.redacted(), want, "{input}");
        assert!(!t.redacted().contains("pw"), "{input}");
    }
}

#[test]
fn tls_without_verification_is_shown() {
    for url in [
        "rediss://h:6380?ssl_cert_reqs=CERT_NONE",
        "rediss://h:6380/0#insecure",
    ] {
        let t = Target::parse(Role::Cache, url).unwrap();
        assert_eq!(
            t.redacted(),
            "rediss://h:6380/0?ssl_cert_reqs=none",
            "{url}"
        );
    }
    let t = Target::parse(Role::Cache, "rediss://h:6380?ssl_cert_reqs=required").unwrap();
    assert_eq!(t.redacted(), "rediss://h:6380/0");
}

#[test]
fn percent_encoded_password_is_decoded() {
    let t = Target::parse(Role::Cache, "rediss://u:p%40w@h/3").unwrap();
    assert_eq!(t.password(), Some("p@w"));
}

#[test]
fn bad_urls_are_refused_without_echoing_them() {
    let cases = [
        ("http://u:hunter2@h:6379", "scheme \"http\""),
        ("redis://u:hunter2@h:99999", "invalid port"),
        ("redis://u:hunter2@h:6379/-1", "database \"-1\""),
        ("redis://u:hunter2@h:6379?db=x", "database \"x\""),
        (
            "rediss://u:hunter2@h?ssl_cert_reqs=maybe",
            "ssl_cert_reqs \"maybe\"",
        ),
        (
            "rediss://u:hunter2@h?ssl_keyfile=/k.pem",
            "ssl_keyfile is given without",
        ),
        ("socket:///tmp/r.sock", "write redis+socket://"),
        ("redis+socket://", "no path"),
        ("hunter2", "not a valid URL"),
        ("redis+unix://", "no path"),
        ("redis://u:hunter2@h:0", "port 0"),
        ("redis://u:123/hunter2@h", "percent-encode the password"),
        (
            "redis://default:hunter2/w@h:6379/0",
            "percent-encode the password",
        ),
        ("redis://:hunter2#x@h:6379/0", "percent-encode the password"),
        ("redis://:hun?ter2@h:6379", "percent-encode the password"),
        (
            "redis://u:hunter2@h:6379/0/w@x",
            "percent-encode the password",
        ),
    ];
    for (input, want) in cases {
        let err = Target::parse(Role::Cache, input).unwrap_err();
        assert!(err.0.contains(want), "{input}: {}", err.0);
        assert!(!err.0.contains("hunter2"), "{input}: {}", err.0);
    }
}

/// Each form as redis-py (cache), kombu (broker) and Celery (result backend) read it,
/// from their 2026 releases (redis 8.1, kombu 5.7, celery 5.7; checked against them in
/// tests/urls.rs): the redacted URL, or "warn:" and a piece of the warning.
#[test]
fn forms_are_read_as_each_library_reads_them() {
    let cases: &[(&str, [&str; 3])] = &[
        (
            "redis://h:6380/2",
            ["redis://h:6380/2", "redis://h:6380/2", "redis://h:6380/2"],
        ),
        // redis-py and Celery let ?db= win over the path; kombu refuses the parameter.
        (
            "redis://h/2?db=3",
            ["redis://h:6379/3", "redis://h:6379/2", "redis://h:6379/3"],
        ),
        (
            "redis+socket:///tmp/r.sock?virtual_host=2",
            [
                "unix:///tmp/r.sock?db=2",
                "unix:///tmp/r.sock?db=2",
                "unix:///tmp/r.sock?db=2",
            ],
        ),
        (
            "redis+socket:///tmp/r.sock?db=2",
            [
                "unix:///tmp/r.sock?db=2",
                "unix:///tmp/r.sock?db=0",
                "unix:///tmp/r.sock?db=2",
            ],
        ),
        (
            "unix://:pw@/tmp/r.sock?db=2",
            [
                "unix://:***@/tmp/r.sock?db=2",
                "unix://:***@/tmp/r.sock?db=2",
                "unix://:***@/tmp/r.sock?db=2",
            ],
        ),
        // kombu: rediss:// without ssl options does not verify; redis-py does.
        (
            "rediss://h",
            [
                "rediss://h:6379/0",
                "rediss://h:6379/0?ssl_cert_reqs=none",
                "rediss://h:6379/0",
            ],
        ),
        // kombu makes TLS of a redis:// URL with ssl_ parameters.
        (
            "redis://h?ssl_cert_reqs=required",
            ["redis://h:6379/0", "rediss://h:6379/0", "redis://h:6379/0"],
        ),
        (
            "rediss://h?ssl_cert_reqs=CERT_NONE",
            ["rediss://h:6379/0?ssl_cert_reqs=none"; 3],
        ),
        // Celery lets ?password= override the URL's; redis-py only fills a missing one.
        ("redis://u:p@h/0?password=q", ["redis://u:***@h:6379/0"; 3]),
    ];
    for (input, want) in cases {
        for (role, want) in [Role::Cache, Role::Broker, Role::ResultBackend]
            .into_iter()
            .zip(want)
        {
            let t =
                Target::parse(role, input).unwrap_or_else(|e| panic!("{input} {role:?}: {e:?}"));
            assert_eq!(t.redacted(), *want, "{input} as {role:?}");
        }
    }
    let pw = |role, input| {
        Target::parse(role, input)
            .unwrap()
            .password()
            .map(str::to_string)
    };
    assert_eq!(
        pw(Role::Cache, "redis://u:p@h/0?password=q").as_deref(),
        Some("p")
    );
    assert_eq!(
        pw(Role::ResultBackend, "redis://u:p@h/0?password=q").as_deref(),
        Some("q")
    );
    assert_eq!(
        pw(Role::Cache, "unix:///s?password=a+b%2B").as_deref(),
        Some("a b+")
    );
}

#[test]
fn what_the_app_would_refuse_is_a_warning_and_nothing_is_dropped_silently() {
    let warned = |role, input: &str, want: &str| {
        let read = Target::read(role, "V", input).unwrap();
        let all = [read.warnings.clone(), read.notes.clone()]
            .concat()
            .join(" | ");
        assert!(all.contains(want), "{input} {role:?}: {all}");
        assert!(!all.contains("s3cret"), "{all}");
    };
    warned(
        Role::Cache,
        "redis://h/abc",
        "redis-py ignores it and uses database 0",
    );
    warned(
        Role::Cache,
        "redis://:s3cret@:6379/0",
        "connects to localhost",
    );
    warned(
        Role::Cache,
        "redis+socket:///s?virtual_host=1",
        "redis-py refuses redis+socket://",
    );
    warned(Role::Cache, "REDIS://h", "only in lowercase");
    warned(
        Role::Cache,
        "redis://h?foo=s3cret",
        "unknown parameter \"foo\"",
    );
    warned(
        Role::Cache,
        "redis://h?socket_timeout=2",
        "V ?socket_timeout: not used by the probe",
    );
    warned(
        Role::Cache,
        "rediss://h?ssl_cert_reqs=CERT_NONE",
        "redis-py refuses ssl_cert_reqs=CERT_NONE",
    );
    warned(
        Role::Cache,
        "redis://h?ssl_ca_certs=/x",
        "refuses TLS parameters in a redis:// URL",
    );
    warned(
        Role::Broker,
        "redis://h?socket_timeout=2",
        "kombu refuses the parameter \"socket_timeout\"",
    );
    warned(Role::Broker, "unix:///s", "No such transport: unix");
    warned(Role::Broker, "redis+unix:///s", "127.0.0.1:6379");
    warned(Role::Broker, "rediss://h", "WITHOUT verifying");
    warned(Role::Broker, "redis://h/0;redis://h2/0", "failover URLs");
    warned(
        Role::Broker,
        "sentinel://h:26379;redis://h2:26379",
        "redis:// after a ';' is not a sentinel",
    );
    warned(
        Role::Cache,
        "rediss+cluster://h:7000",
        "Redis Cluster over TLS",
    );
    warned(
        Role::ResultBackend,
        "redis+cluster://h:7000",
        "does not support Redis Cluster",
    );
    let t = Target::parse(Role::Cache, "redis+cluster://:pw@h1:7000,h2/0").unwrap();
    assert_eq!(t.redacted(), "redis+cluster://:***@h1:7000,h2:6379/0");
    assert_eq!(t.cluster().unwrap().seeds.len(), 2);
    assert!(
        Target::parse(Role::Cache, "redis+cluster://h1:7000/3")
            .unwrap_err()
            .0
            .contains("only database 0")
    );
    let Err(refused) = Target::read(Role::Broker, "V", "redis+cluster://h:7000") else {
        panic!("a cluster broker is refused")
    };
    assert!(
        refused
            .0
            .contains("kombu's Redis transport does not support Cluster"),
        "{}",
        refused.0
    );
    warned(
        Role::ResultBackend,
        "rediss://h",
        "Celery refuses a rediss:// result backend without ssl_cert_reqs",
    );
    warned(
        Role::ResultBackend,
        "redis://h?ssl_cert_reqs=none",
        "Celery refuses TLS parameters",
    );
    warned(Role::ResultBackend, "unix:///s", "Celery refuses unix://");
    warned(
        Role::ResultBackend,
        "REDIS://h",
        "Celery accepts the scheme only in lowercase",
    );
    warned(Role::Cache, " redis://h", "whitespace around it");
    warned(
        Role::Cache,
        "redis://h?timeout=3",
        "unknown parameter \"timeout\"",
    );
    warned(
        Role::Cache,
        "unix:///s?socket_keepalive=1",
        "redis-py refuses the parameter \"socket_keepalive\" for this kind",
    );
    warned(
        Role::Cache,
        "redis://h?ssl_ciphers=x",
        "redis-py refuses the parameter \"ssl_ciphers\"",
    );
    warned(
        Role::Cache,
        "rediss://h?ssl_ciphers=x",
        "V ?ssl_ciphers: not used by the probe",
    );
    warned(
        Role::ResultBackend,
        "redis://h/1?virtual_host=2",
        "Celery ignores it here",
    );
    warned(
        Role::Broker,
        "redis://h?credential_provider=x",
        "cannot run a Python credential_provider",
    );
    // A "user" without a password may be the password: never shown.
    warned(Role::Cache, "redis://s3cret@h", "a user and no password");
    let t = Target::parse(Role::Cache, "redis://s3cret@h").unwrap();
    assert_eq!(t.redacted(), "redis://***@h:6379/0");
    assert_eq!(t.user_shown(), "***");
    assert_eq!(t.auth(), Some((Some("s3cret"), "")));
    assert_eq!(
        Target::parse(Role::Cache, "redis://h").unwrap().auth(),
        None
    );
    assert_eq!(
        Target::parse(Role::Cache, "redis://:pw@h").unwrap().auth(),
        Some((None, "pw"))
    );
    for bad in [
        "redis://:s3c[ret@h:6379/0",
        "redis://:s3[c]ret@h:6379/0",
        "unix://:s3cr/et@/run/redis.sock",
        "redis://:12?s3cret=x@h:6379/0",
    ] {
        let e = Target::parse(Role::Cache, bad).unwrap_err().0;
        assert!(e.contains("percent-encode"), "{bad}: {e}");
        assert!(!e.contains("s3c"), "{e}");
    }
    let read = Target::read(Role::Broker, "V", "sentinel://:s3cret@h:26379").unwrap();
    let t = read.target.unwrap();
    assert!(!t.redacted().contains("s3cret"), "{}", t.redacted());
    assert!(!format!("{t:?} {}", t.address()).contains("s3cret"));
    // The broker's db comes from the path, as kombu's virtual host.
    assert!(
        Target::parse(Role::Broker, "redis://h/abc")
            .unwrap_err()
            .0
            .contains("database \"abc\"")
    );
}

#[test]
fn same_connection_merges_roles_in_fixed_order() {
    let mut broker = Target::parse(Role::Broker, "redis://:pw@h:6379/0").unwrap();
    let cache = Target::parse(Role::Cache, "redis://:pw@h:6379").unwrap();
    let backend = Target::parse(Role::ResultBackend, "redis://:pw@h:6379/1").unwrap();
    let other_pw = Target::parse(Role::ResultBackend, "redis://:other@h:6379/0").unwrap();
    assert!(broker.same_connection(&cache));
    assert!(!broker.same_connection(&backend));
    assert!(!broker.same_connection(&other_pw));
    broker.absorb(&cache);
    assert_eq!(broker.roles(), [Role::Cache, Role::Broker]);
    assert_eq!(broker.check_names(), ["redis:cache", "redis:broker"]);
}

#[test]
fn an_unencoded_at_sign_alone_is_read_as_the_app_reads_it() {
    // The last @ ends the user information, as in Python's urllib.
    let t = Target::parse(Role::Cache, "redis://default:p@ss@h:6379/0").unwrap();
    assert_eq!(t.password(), Some("p@ss"));
    assert_eq!(t.redacted(), "redis://default:***@h:6379/0");
}

#[test]
fn fixes_name_the_variables_that_were_set() {
    let url = Target::parse(Role::Cache, "redis://h").unwrap();
    assert_eq!(
        url.clone().with_source("REDIS_URL").password_fix(),
        "put it in the URL of REDIS_URL (redis://default:PASSWORD@host:port)"
    );
    let mut parts = Target::from_parts("h", 6379, None, None);
    assert_eq!(parts.password_fix(), "set REDISPASSWORD");
    assert_eq!(parts.credentials_home(), "REDISUSER/REDISPASSWORD");
    parts.absorb(&url.with_source("CELERY_BROKER_URL"));
    assert_eq!(
        parts.password_fix(),
        "set REDISPASSWORD; put it in the URL of CELERY_BROKER_URL (redis://default:PASSWORD@host:port)"
    );
    assert_eq!(
        parts.credentials_home(),
        "REDISUSER/REDISPASSWORD and the URL in CELERY_BROKER_URL"
    );
}

#[test]
fn parts_build_a_redacted_url() {
    let t = Target::from_parts("redis.railway.internal", 6379, Some("default"), Some("pw"));
    assert_eq!(
        t.redacted(),
        "redis://default:***@redis.railway.internal:6379/0"
    );
    let t = Target::from_parts("::1", 6380, None, None);
    assert_eq!(t.redacted(), "redis://[::1]:6380/0");
}
