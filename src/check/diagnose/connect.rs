//! DNS, TCP (each address, timed) and TLS, each a step of the diagnosis.

use super::*;

/// DNS, TCP (each address, timed) and TLS: a stream ready for commands, or `None` with
/// the failing step recorded.
pub(super) async fn connect(d: &mut Diagnosis, limit: Duration) -> Option<Box<dyn Stream>> {
    let target = d.target.clone();
    let (host, port, tls) = match target.address() {
        Address::Unix { path } => {
            let began = Instant::now();
            return match tokio::time::timeout(limit, tokio::net::UnixStream::connect(path)).await {
                Ok(Ok(s)) => {
                    d.steps.push(
                        Step::ok("connect", format!("unix socket {path}")).took(began.elapsed()),
                    );
                    Some(Box::new(s))
                }
                Ok(Err(e)) => {
                    let f = Failure::from_redis(&RedisError::from(e), &target);
                    d.steps.push(Step::fail(
                        "connect",
                        f,
                        "check the socket path against Redis's `unixsocket` setting, and that the sidecar's user may open it",
                    ));
                    None
                }
                Err(_) => {
                    d.steps.push(Step::fail(
                        "connect",
                        Failure::timeout(&target, Phase::Connect, limit),
                        "Redis does not accept on its socket: is it hung or overloaded?",
                    ));
                    None
                }
            };
        }
        Address::Tcp { host, port, tls } => (host.clone(), *port, tls.clone()),
        // `sentinel_steps` has put the master in its place.
        Address::Sentinel(_) => {
            d.steps.push(Step::fail(
                "connect",
                Failure::new(Reason::Other, "the sentinels named no master"),
                "run `check` again: the sentinels are electing a master",
            ));
            return None;
        }
    };

    // DNS: the answers, or why there are none.
    let addrs: Vec<SocketAddr> = match host.parse::<IpAddr>() {
        Ok(ip) => {
            d.steps
                .push(Step::ok("dns", format!("{ip} is an address: no lookup")));
            vec![SocketAddr::new(ip, port)]
        }
        Err(_) => {
            let began = Instant::now();
            match tokio::time::timeout(limit, tokio::net::lookup_host((host.as_str(), port))).await
            {
                Ok(Ok(found)) => {
                    let mut addrs: Vec<SocketAddr> = Vec::new();
                    for a in found {
                        if !addrs.contains(&a) {
                            addrs.push(a);
                        }
                    }
                    let list: Vec<String> = addrs.iter().map(|a| a.ip().to_string()).collect();
                    d.steps.push(
                        Step::ok("dns", format!("{host} -> {}", list.join(", ")))
                            .took(began.elapsed()),
                    );
                    addrs
                }
                Ok(Err(e)) => {
                    let f = Failure::from_redis(&RedisError::from(e), &target);
                    let fix = crate::verdict::failure_fix(&f, &target);
                    d.steps.push(Step::fail("dns", f, fix));
                    return None;
                }
                Err(_) => {
                    d.steps.push(Step::fail(
                        "dns",
                        Failure::new(
                            Reason::Dns,
                            format!("DNS lookup of {host} did not answer within {}", show(limit)),
                        ),
                        "the resolver is slow or unreachable: check /etc/resolv.conf",
                    ));
                    return None;
                }
            }
        }
    };

    // TCP: each address in turn, timed, all within one timeout (as the server's own
    // connects); the first that connects is used.
    let mut tried = Vec::new();
    let mut stream = None;
    let mut last = None;
    let until = Instant::now() + limit;
    for addr in &addrs {
        let began = Instant::now();
        if began >= until {
            tried.push(format!("{addr}: not tried, no time left"));
            continue;
        }
        match tokio::time::timeout_at(until, TcpStream::connect(addr)).await {
            Ok(Ok(s)) => {
                tried.push(format!(
                    "{addr} in {:.1}ms",
                    began.elapsed().as_secs_f64() * 1e3
                ));
                let _ = s.set_nodelay(true);
                stream = Some(s);
                break;
            }
            Ok(Err(e)) => {
                tried.push(format!("{addr}: {e}"));
                last = Some(Failure::from_redis(&RedisError::from(e), &target));
            }
            Err(_) => {
                tried.push(format!("{addr}: no answer within {}", show(limit)));
                last = Some(Failure::timeout(&target, Phase::Connect, limit));
            }
        }
    }
    let Some(tcp) = stream else {
        let f = last.unwrap_or_else(|| Failure::new(Reason::Dns, "no address to connect to"));
        let fix = crate::verdict::failure_fix(&f, &target);
        let mut step = Step::fail("tcp", f, fix);
        step.detail = format!("{} [{}]", step.detail, tried.join("; "));
        d.steps.push(step);
        return None;
    };
    d.steps.push(Step::ok("tcp", tried.join("; ")));
    let Some(tls) = tls else {
        return Some(Box::new(tcp));
    };

    // TLS.
    let began = Instant::now();
    let client = match crate::redis::tls::client(&tls) {
        Ok(c) => c,
        Err(problem) => {
            d.steps.push(Step::fail(
                "tls",
                Failure::new(Reason::Tls, problem),
                "fix the path or the file the URL's ssl_ parameter (or SSL_CERT_FILE / SSL_CERT_DIR) names",
            ));
            return None;
        }
    };
    let connector = tokio_rustls::TlsConnector::from(client.config.clone());
    let Some(name) = crate::redis::tls::server_name(&host) else {
        d.steps.push(Step::fail(
            "tls",
            Failure::new(Reason::Tls, format!("{host} is not a name TLS can check")),
            "use the server's DNS name in the URL",
        ));
        return None;
    };
    match tokio::time::timeout(limit, connector.connect(name, tcp)).await {
        Ok(Ok(s)) => {
            let (_, session) = s.get_ref();
            let version = session
                .protocol_version()
                .map(|v| format!("{v:?}"))
                .unwrap_or_default();
            let by = client.verified_by().unwrap_or_default();
            let checked = if tls.verify {
                format!("certificate verified by {by}")
            } else {
                "certificate NOT verified (ssl_cert_reqs=none)".to_string()
            };
            let presented = match &tls.client_cert {
                Some(c) => format!(", client certificate {} offered", c.cert),
                None => String::new(),
            };
            d.steps.push(
                Step::ok("tls", format!("{version}, {checked}{presented}")).took(began.elapsed()),
            );
            Some(Box::new(s))
        }
        Ok(Err(e)) => {
            let f = Failure::from_redis(&RedisError::from(e), &target);
            let fix = if f.message.contains("client certificate") {
                CLIENT_CERT_FIX.to_string()
            } else if f.message.contains("certificate") {
                format!(
                    "roots tried: {}. The certificate is self-signed, from a private CA, expired or for another name: give the CA's file as ?ssl_ca_certs=/path/ca.crt (or SSL_CERT_FILE), fix the certificate, or write ?ssl_cert_reqs=none to encrypt without verifying (as the app's redis-py does with that setting)",
                    client.roots_tried()
                )
            } else {
                "this port does not speak TLS: use redis:// for it, or the TLS port (`tls-port`)"
                    .to_string()
            };
            d.steps.push(Step::fail("tls", f, fix));
            None
        }
        Err(_) => {
            d.steps.push(Step::fail(
                "tls",
                Failure::timeout(&target, Phase::Connect, limit),
                "no TLS answer: a plain Redis port waits for a command and never answers a TLS hello: use redis:// for it",
            ));
            None
        }
    }
}
