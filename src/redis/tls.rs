//! TLS for `rediss://`, made the same way for the pool, `check` and the event subscription:
//! the built-in Mozilla roots plus the CA files the app's settings name (`ssl_ca_certs`,
//! `ssl_ca_path`, `SSL_CERT_FILE`, `SSL_CERT_DIR`, as Python's `ssl` adds them to its
//! defaults), a client certificate when one is given, `ssl_cert_reqs=none` and
//! `ssl_check_hostname=false` honoured. The verifier remembers which roots verified the
//! server, so that `check` can say so.

use std::path::Path;
use std::sync::{Arc, Mutex};

use rustls::client::WebPkiServerVerifier;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::{CryptoProvider, WebPkiSupportedAlgorithms};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::{CertificateError, DigitallySignedStruct, RootCertStore, SignatureScheme};

use crate::redis::target::{Roots, Tls};

/// The label of the roots built into the binary.
pub const BUILT_IN: &str = "the built-in Mozilla roots";

/// A client configuration for one target and the record of what verified the server.
pub struct Client {
    pub config: Arc<rustls::ClientConfig>,
    verifier: Arc<Verifier>,
}

impl Client {
    /// Which roots verified the last handshake ("the CA in /path (ssl_ca_certs)", the
    /// built-in roots), or that nothing was verified; `None` before a handshake succeeded.
    pub fn verified_by(&self) -> Option<String> {
        self.verifier
            .by
            .lock()
            .expect("the verifier's record is never poisoned")
            .clone()
    }

    /// The roots tried, in order, for a message after a failure.
    pub fn roots_tried(&self) -> String {
        self.verifier
            .chains
            .iter()
            .map(|(label, _)| label.as_str())
            .collect::<Vec<_>>()
            .join(", then ")
    }
}

fn label(r: &Roots) -> String {
    format!("the CA in {} ({})", r.path, r.origin)
}

/// True for the names OpenSSL looks certificates up by in a directory: the subject hash
/// and a sequence number, `5ad8a5d6.0`.
fn hashed_name(name: &str) -> bool {
    name.split_once('.').is_some_and(|(hash, n)| {
        hash.len() == 8
            && hash.bytes().all(|b| b.is_ascii_hexdigit())
            && !n.is_empty()
            && n.bytes().all(|b| b.is_ascii_digit())
    })
}

/// The certificates of a PEM file, or of a directory as OpenSSL reads one (`SSL_CERT_DIR`,
/// redis-py's `ssl_ca_path`): only the files named by subject hash (`openssl rehash`), so
/// that a directory the app's Python cannot use is not trusted here either.
fn certificates(r: &Roots) -> Result<Vec<CertificateDer<'static>>, String> {
    let path = Path::new(&r.path);
    let files: Vec<std::path::PathBuf> = if path.is_dir() {
        let mut files: Vec<_> = std::fs::read_dir(path)
            .map_err(|e| format!("{} {}: cannot be read: {e}", r.origin, r.path))?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| {
                p.is_file()
                    && p.file_name()
                        .and_then(|n| n.to_str())
                        .is_some_and(hashed_name)
            })
            .collect();
        if files.is_empty() {
            return Err(format!(
                "{} {}: holds no certificate named by its subject hash (such as 5ad8a5d6.0), the only names OpenSSL, and so the app's Python, looks up: run `openssl rehash {}`",
                r.origin, r.path, r.path
            ));
        }
        files.sort();
        files
    } else {
        vec![path.to_path_buf()]
    };
    let mut certs = Vec::new();
    for file in &files {
        let bytes = std::fs::read(file)
            .map_err(|e| format!("{} {}: cannot be read: {e}", r.origin, file.display()))?;
        for cert in CertificateDer::pem_slice_iter(&bytes) {
            match cert {
                Ok(c) => certs.push(c),
                Err(_) if path.is_dir() => break,
                Err(e) => {
                    return Err(format!(
                        "{} {}: not a PEM certificate file ({e})",
                        r.origin,
                        file.display()
                    ));
                }
            }
        }
    }
    if certs.is_empty() {
        return Err(format!(
            "{} {}: holds no PEM certificate (-----BEGIN CERTIFICATE-----)",
            r.origin, r.path
        ));
    }
    Ok(certs)
}

/// Reads every file `tls` names, so that a wrong path is a configuration error at start.
pub fn check_files(tls: &Tls) -> Result<(), String> {
    client(tls).map(drop)
}

/// Builds the configuration for `tls`, reading its files now (a rotated CA or client
/// certificate is picked up by the next connection).
pub fn client(tls: &Tls) -> Result<Client, String> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut chains = Vec::new();
    for r in &tls.roots {
        let mut store = RootCertStore::empty();
        let (added, _) = store.add_parsable_certificates(certificates(r)?);
        if added == 0 {
            return Err(format!(
                "{} {}: no certificate in it can be used as a trust anchor",
                r.origin, r.path
            ));
        }
        chains.push((label(r), verifier(store, &provider)?));
    }
    let built_in = RootCertStore {
        roots: webpki_roots::TLS_SERVER_ROOTS.to_vec(),
    };
    chains.push((BUILT_IN.to_string(), verifier(built_in, &provider)?));
    let verifier = Arc::new(Verifier {
        chains,
        verify: tls.verify,
        check_hostname: tls.check_hostname,
        algorithms: provider.signature_verification_algorithms,
        by: Mutex::new(None),
    });
    let builder = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| format!("TLS cannot be set up: {e}"))?
        .dangerous()
        .with_custom_certificate_verifier(verifier.clone());
    let config = match &tls.client_cert {
        None => builder.with_no_client_auth(),
        Some(c) => {
            let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(&c.cert)
                .map_err(|e| format!("ssl_certfile {}: cannot be read: {e}", c.cert))?
                .collect::<Result<_, _>>()
                .map_err(|e| format!("ssl_certfile {}: not a PEM certificate ({e})", c.cert))?;
            if certs.is_empty() {
                return Err(format!("ssl_certfile {}: holds no PEM certificate", c.cert));
            }
            let (origin, key_path) = match &c.key {
                Some(k) => ("ssl_keyfile", k.as_str()),
                None => ("ssl_certfile", c.cert.as_str()),
            };
            let key = PrivateKeyDer::from_pem_file(key_path).map_err(|e| {
                format!("{origin} {key_path}: no unencrypted PEM private key in it ({e})")
            })?;
            builder
                .with_client_auth_cert(certs, key)
                .map_err(|e| format!("ssl_certfile and ssl_keyfile do not make a pair: {e}"))?
        }
    };
    Ok(Client {
        config: Arc::new(config),
        verifier,
    })
}

fn verifier(
    store: RootCertStore,
    provider: &Arc<CryptoProvider>,
) -> Result<Arc<WebPkiServerVerifier>, String> {
    WebPkiServerVerifier::builder_with_provider(Arc::new(store), provider.clone())
        .build()
        .map_err(|e| format!("TLS roots cannot be used: {e}"))
}

/// Tries each set of roots in turn; the first that verifies the chain wins.
#[derive(Debug)]
struct Verifier {
    chains: Vec<(String, Arc<WebPkiServerVerifier>)>,
    verify: bool,
    check_hostname: bool,
    algorithms: WebPkiSupportedAlgorithms,
    by: Mutex<Option<String>>,
}

impl Verifier {
    fn record(&self, by: String) {
        *self
            .by
            .lock()
            .expect("the verifier's record is never poisoned") = Some(by);
    }
}

/// An error that says more than "unknown issuer" (expired, wrong name...): the chain was
/// found, so this is the one to report.
fn telling(e: &rustls::Error) -> bool {
    !matches!(
        e,
        rustls::Error::InvalidCertificate(CertificateError::UnknownIssuer)
    )
}

impl ServerCertVerifier for Verifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        if !self.verify {
            self.record("not verified (ssl_cert_reqs=none)".into());
            return Ok(ServerCertVerified::assertion());
        }
        let mut worst: Option<rustls::Error> = None;
        for (label, chain) in &self.chains {
            match chain.verify_server_cert(
                end_entity,
                intermediates,
                server_name,
                ocsp_response,
                now,
            ) {
                Ok(ok) => {
                    self.record(label.clone());
                    return Ok(ok);
                }
                Err(rustls::Error::InvalidCertificate(
                    CertificateError::NotValidForName
                    | CertificateError::NotValidForNameContext { .. },
                )) if !self.check_hostname => {
                    self.record(format!(
                        "{label} (name not checked: ssl_check_hostname=false)"
                    ));
                    return Ok(ServerCertVerified::assertion());
                }
                Err(e) => {
                    if worst.as_ref().is_none_or(|w| !telling(w) && telling(&e)) {
                        worst = Some(e);
                    }
                }
            }
        }
        Err(worst.unwrap_or(rustls::Error::InvalidCertificate(
            CertificateError::UnknownIssuer,
        )))
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.algorithms.supported_schemes()
    }
}

/// The name TLS checks: the host as written in the URL.
pub fn server_name(host: &str) -> Option<ServerName<'static>> {
    ServerName::try_from(host.to_string()).ok()
}
