//! Every URL form the app can use, read by the sidecar and by the app's own libraries
//! (redis-py for the cache, kombu for the broker, Celery for the result backend, from the
//! pinned venv), against real servers set up as their docs show: an ACL user with a
//! password full of URL delimiters, a default-user password, a Unix socket, TLS from a
//! private CA, and mutual TLS. For each: the sidecar's `check` says healthy, and the
//! server, database and user it names are the ones CLIENT INFO gave the Python client.

mod support;

use std::path::Path;
use std::time::Duration;

use support::{Pki, Redis, TempDir, free_port, python, run};

/// The ACL user's password: every character a URL treats specially, and a `$`.
const APP_PASSWORD: &str = "p@ss:w/rd#1$x+y%z?";
const APP_ENCODED: &str = "p%40ss%3Aw%2Frd%231%24x%2By%25z%3F";
const DEFAULT_PASSWORD: &str = "def-s3cret";

struct Servers {
    _dir: TempDir,
    pki: Pki,
    plain: Redis,
    tls_port: u16,
    socket: String,
    _mutual: Redis,
    mutual_port: u16,
}

fn servers() -> Servers {
    let dir = TempDir::new("urls");
    let pki = Pki::new(&dir);
    let socket = dir.path().join("redis.sock");
    let tls_port = free_port();
    let user = format!("app on >{APP_PASSWORD} ~* &* +@all");
    let mut args: Vec<String> = pki.redis_args(tls_port, "no");
    args.extend(
        [
            "--unixsocket",
            socket.to_str().unwrap(),
            "--unixsocketperm",
            "700",
            "--requirepass",
            DEFAULT_PASSWORD,
            "--user",
        ]
        .map(String::from),
    );
    args.extend(user.split(' ').map(String::from));
    let plain = Redis::start(&args.iter().map(String::as_str).collect::<Vec<_>>());
    support::wait_for("the unix socket", Duration::from_secs(5), || {
        socket.exists().then_some(())
    });
    let mutual_port = free_port();
    let mut margs = pki.redis_args(mutual_port, "yes");
    margs.extend(["--requirepass", DEFAULT_PASSWORD].map(String::from));
    let mutual = Redis::start(&margs.iter().map(String::as_str).collect::<Vec<_>>());
    Servers {
        pki,
        plain,
        tls_port,
        socket: socket.to_str().unwrap().to_string(),
        _mutual: mutual,
        mutual_port,
        _dir: dir,
    }
}

/// Who answered: the server's local address (`127.0.0.1:port` or the socket path), the
/// database and the user.
#[derive(Debug, PartialEq, Eq)]
struct Who {
    at: String,
    db: i64,
    user: String,
}

/// What the app's library connects to for `role` and `url`.
fn app_sees(role: &str, url: &str, env: &[(&str, &str)]) -> Who {
    let out = python("whoami.py", &[role, url], env);
    assert!(
        out.status.success(),
        "{role} {url}: the Python client failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("whoami.py JSON");
    let laddr = v["laddr"].as_str().unwrap();
    // A Unix socket's laddr is "path:0".
    let at = laddr.strip_suffix(":0").unwrap_or(laddr).to_string();
    Who {
        at,
        db: v["db"].as_i64().unwrap(),
        user: v["user"].as_str().unwrap().to_string(),
    }
}

/// What the sidecar's `check` connects to for `variable` = `url`: the check must be
/// healthy; its endpoint gives the address, database and user.
fn sidecar_sees(variable: &str, role: &str, url: &str, env: &[(&str, &str)]) -> (Who, String) {
    let mut all = vec![
        (variable, url),
        ("SIDECAR_PROBE_TIMEOUT", "3s"),
        ("SIDECAR_PROBE_INTERVAL", "5s"),
    ];
    all.extend_from_slice(env);
    let out = run(&["check", "--json"], &all);
    let doc: serde_json::Value = serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("check --json is not JSON ({e}): {out:?}"));
    let c = &doc["checks"][format!("redis:{role}")];
    assert_eq!(c["status"], "healthy", "{variable}={url}: {c:#}");
    let endpoint = c["endpoint"].as_str().unwrap().to_string();
    assert!(!endpoint.contains(APP_PASSWORD) && !endpoint.contains(DEFAULT_PASSWORD));
    let (scheme, rest) = endpoint.split_once("://").unwrap();
    let (userinfo, rest) = rest.rsplit_once('@').unwrap_or(("", rest));
    let user = userinfo
        .split(':')
        .next()
        .filter(|u| !u.is_empty())
        .unwrap_or("default");
    let who = if scheme == "unix" {
        let (path, query) = rest.split_once("?db=").unwrap();
        Who {
            at: path.to_string(),
            db: query.split('&').next().unwrap().parse().unwrap(),
            user: user.to_string(),
        }
    } else {
        let (hostport, tail) = rest.split_once('/').unwrap();
        let port = hostport.rsplit_once(':').unwrap().1;
        Who {
            at: format!("127.0.0.1:{port}"),
            db: tail.split('?').next().unwrap().parse().unwrap(),
            user: user.to_string(),
        }
    };
    let tls = c["steps"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["step"] == "tls")
        .map(|s| s["detail"].as_str().unwrap().to_string())
        .unwrap_or_default();
    (who, tls)
}

/// A role, a URL, extra environment, and what the TLS step must say.
type Case<'a> = (&'a str, String, Vec<(&'a str, &'a str)>, String);

fn variable(role: &str) -> &'static str {
    match role {
        "cache" => "REDIS_URL",
        "broker" => "CELERY_BROKER_URL",
        _ => "CELERY_RESULT_BACKEND",
    }
}

#[test]
fn every_form_reaches_the_server_the_app_reaches() {
    let s = servers();
    let (p, t, m, sock) = (s.plain.port, s.tls_port, s.mutual_port, s.socket.as_str());
    let ca = s.pki.ca.to_str().unwrap();
    let (cc, ck) = (
        s.pki.client_cert.to_str().unwrap(),
        s.pki.client_key.to_str().unwrap(),
    );
    // SSL_CERT_DIR as OpenSSL (and so the app's Python) reads it: hashed names.
    let ca_dir = s.pki.ca.parent().unwrap().join("ca-dir");
    std::fs::create_dir(&ca_dir).unwrap();
    std::fs::copy(&s.pki.ca, ca_dir.join("ca.pem")).unwrap();
    let rehash = std::process::Command::new("openssl")
        .arg("rehash")
        .arg(&ca_dir)
        .status()
        .expect("run openssl rehash");
    assert!(rehash.success());
    let ca_dir = ca_dir.to_str().unwrap();
    let e = APP_ENCODED;
    let d = DEFAULT_PASSWORD;
    // (role, URL, extra environment, what the TLS step must say)
    let cases: Vec<Case> = vec![
        (
            "cache",
            format!("redis://app:{e}@127.0.0.1:{p}/2"),
            vec![],
            String::new(),
        ),
        // redis-py: ?db= wins over the path; credentials may come as parameters.
        (
            "cache",
            format!("redis://127.0.0.1:{p}/7?db=3&username=app&password={e}"),
            vec![],
            String::new(),
        ),
        (
            "cache",
            format!("unix://app:{e}@{sock}?db=4"),
            vec![],
            String::new(),
        ),
        (
            "cache",
            format!("unix://{sock}?db=5&password={d}"),
            vec![],
            String::new(),
        ),
        (
            "cache",
            format!("rediss://app:{e}@localhost:{t}/1?ssl_ca_certs={ca}"),
            vec![],
            format!("verified by the CA in {ca} (ssl_ca_certs)"),
        ),
        (
            "cache",
            format!("rediss://:{d}@127.0.0.1:{t}/0?ssl_ca_certs={ca}&ssl_check_hostname=false"),
            vec![],
            "name not checked: ssl_check_hostname=false".to_string(),
        ),
        (
            "cache",
            format!("rediss://:{d}@localhost:{t}/0"),
            vec![("SSL_CERT_FILE", ca)],
            format!("verified by the CA in {ca} (SSL_CERT_FILE)"),
        ),
        (
            "cache",
            format!("rediss://:{d}@localhost:{t}/0"),
            vec![("SSL_CERT_DIR", ca_dir)],
            format!("verified by the CA in {ca_dir} (SSL_CERT_DIR)"),
        ),
        (
            "cache",
            format!("rediss://:{d}@127.0.0.1:{t}/6?ssl_cert_reqs=none"),
            vec![],
            "NOT verified".to_string(),
        ),
        (
            "cache",
            format!(
                "rediss://:{d}@localhost:{m}/0?ssl_ca_certs={ca}&ssl_certfile={cc}&ssl_keyfile={ck}"
            ),
            vec![],
            format!("client certificate {cc} offered"),
        ),
        (
            "broker",
            format!("redis://app:{e}@127.0.0.1:{p}/2"),
            vec![],
            String::new(),
        ),
        (
            "broker",
            format!("redis+socket://app:{e}@{sock}?virtual_host=3"),
            vec![],
            String::new(),
        ),
        (
            "broker",
            format!("rediss://app:{e}@localhost:{t}/1?ssl_cert_reqs=required&ssl_ca_certs={ca}"),
            vec![],
            format!("verified by the CA in {ca} (ssl_ca_certs)"),
        ),
        (
            "broker",
            format!(
                "rediss://:{d}@localhost:{m}/0?ssl_cert_reqs=required&ssl_ca_certs={ca}&ssl_certfile={cc}&ssl_keyfile={ck}"
            ),
            vec![],
            format!("client certificate {cc} offered"),
        ),
        (
            "result_backend",
            format!("redis://app:{e}@127.0.0.1:{p}/2"),
            vec![],
            String::new(),
        ),
        (
            "result_backend",
            format!("redis+socket://app:{e}@{sock}?virtual_host=3"),
            vec![],
            String::new(),
        ),
        (
            "result_backend",
            format!(
                "rediss://app:{e}@localhost:{t}/1?ssl_cert_reqs=CERT_REQUIRED&ssl_ca_certs={ca}"
            ),
            vec![],
            format!("verified by the CA in {ca} (ssl_ca_certs)"),
        ),
    ];
    // Each check listens for Celery's workers for a few seconds: all at once.
    let seen: Vec<(Who, (Who, String))> = std::thread::scope(|scope| {
        let running: Vec<_> = cases
            .iter()
            .map(|(role, url, env, _)| {
                scope.spawn(move || {
                    (
                        app_sees(role, url, env),
                        sidecar_sees(variable(role), role, url, env),
                    )
                })
            })
            .collect();
        running.into_iter().map(|h| h.join().unwrap()).collect()
    });
    for ((role, url, _, tls), (app, (sidecar, said))) in cases.iter().zip(seen) {
        let want_at = |who: &Who| {
            if who.at.starts_with('/') {
                who.at.clone()
            } else {
                format!("127.0.0.1:{}", who.at.rsplit_once(':').unwrap().1)
            }
        };
        assert_eq!(
            (want_at(&sidecar), sidecar.db, &sidecar.user),
            (want_at(&app), app.db, &app.user),
            "{role} {url}: the sidecar and the app reach different places"
        );
        assert!(
            said.contains(tls.as_str()),
            "{role} {url}: tls step: {said}"
        );
        if tls.is_empty() {
            assert!(said.is_empty(), "{role} {url}: no TLS expected: {said}");
        }
    }
    assert!(Path::new(sock).exists());
}

/// `config` lists what it read: the redacted URL with its TLS settings, the parameters the
/// probe does not use, and a warning for what the app would refuse, never a password.
#[test]
fn config_lists_parameters_and_warns_about_what_the_app_would_refuse() {
    let dir = TempDir::new("urls-config");
    let pki = Pki::new(&dir);
    let ca = pki.ca.to_str().unwrap();
    let out = run(
        &["config"],
        &[
            (
                "REDIS_URL",
                &format!(
                    "rediss://:{DEFAULT_PASSWORD}@cache.internal:6380/1?ssl_ca_certs={ca}&socket_timeout=5&frobnicate=1"
                ),
            ),
            (
                "CELERY_BROKER_URL",
                &format!("redis://:{DEFAULT_PASSWORD}@broker.internal:6379/0?socket_timeout=5"),
            ),
            (
                "CELERY_RESULT_BACKEND",
                "sentinel://s1:26379;sentinel://s2:26379",
            ),
            ("SIDECAR_SENTINEL_MASTER", "mymaster"),
        ],
    );
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{out:?}");
    for want in [
        format!("rediss://:***@cache.internal:6380/1?ssl_ca_certs={ca}"),
        "REDIS_URL ?socket_timeout: not used by the probe".to_string(),
        "REDIS_URL: unknown parameter \"frobnicate\"".to_string(),
        "CELERY_BROKER_URL: kombu refuses the parameter \"socket_timeout\"".to_string(),
        "sentinel://s1:26379/0;sentinel://s2:26379/0 master_name=mymaster".to_string(),
    ] {
        assert!(text.contains(&want), "missing {want:?} in:\n{text}");
    }
    assert!(!text.contains(DEFAULT_PASSWORD), "{text}");
    assert!(!text.contains("not Redis"), "{text}");
}

/// A file the URL or SSL_CERT_FILE names that is missing or holds no certificate is a
/// configuration error naming the variable, at start.
#[test]
fn a_missing_ca_file_is_a_configuration_error_naming_its_variable() {
    let dir = TempDir::new("urls-ca");
    let junk = dir.path().join("junk.pem");
    std::fs::write(&junk, "not a certificate\n").unwrap();
    let junk = junk.to_str().unwrap();
    // A directory of certificates not named by hash, which OpenSSL would not read either.
    let unhashed = dir.path().join("unhashed");
    std::fs::create_dir(&unhashed).unwrap();
    std::fs::write(unhashed.join("ca.pem"), "-----BEGIN CERTIFICATE-----\n").unwrap();
    let unhashed = unhashed.to_str().unwrap();
    for (env, want) in [
        (
            vec![
                ("REDIS_URL", "rediss://:pw@h:6380/0".to_string()),
                ("SSL_CERT_DIR", unhashed.to_string()),
            ],
            "SSL_CERT_DIR (--ssl-cert-dir): SSL_CERT_DIR",
        ),
        (
            vec![(
                "REDIS_URL",
                "rediss://:pw@h:6380/0?ssl_ca_certs=/nonexistent/ca.pem".to_string(),
            )],
            "REDIS_URL (--redis-url): ssl_ca_certs /nonexistent/ca.pem: cannot be read",
        ),
        (
            vec![
                ("REDIS_URL", "rediss://:pw@h:6380/0".to_string()),
                ("SSL_CERT_FILE", junk.to_string()),
            ],
            "SSL_CERT_FILE (--ssl-cert-file): SSL_CERT_FILE",
        ),
    ] {
        let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
        let out = run(&["config"], &env);
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{err}");
        assert!(err.contains(want), "{err}");
        assert!(!err.contains(":pw@"), "{err}");
    }
}
