//! Short raw connections to a server the sidecar only asks a question or two (a sentinel,
//! a Redis Cluster node): TCP within a limit, AUTH when credentials are given, a pipeline
//! within a limit; or why not, in words that name the node and nothing secret.

use std::fmt;
use std::time::Duration;

use tokio::net::TcpStream;

use crate::redis::resp::{Reply, Resp};
use crate::text::show;

/// A server's address.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Node {
    pub host: String,
    pub port: u16,
}

impl fmt::Display for Node {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.host.contains(':') {
            write!(f, "[{}]:{}", self.host, self.port)
        } else {
            write!(f, "{}:{}", self.host, self.port)
        }
    }
}

/// Why a raw connection gave no answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RawError {
    /// No connection, or no answer in time.
    Unreachable(String),
    /// AUTH refused, in the server's words (the password scrubbed).
    Auth(String),
}

/// A connection to `node`, logged in with `auth` (user, password) when given.
pub async fn connect(
    node: &Node,
    auth: Option<(Option<&str>, &str)>,
    limit: Duration,
) -> Result<Resp, RawError> {
    let tcp = match tokio::time::timeout(limit, TcpStream::connect((node.host.as_str(), node.port)))
        .await
    {
        Err(_) => {
            return Err(RawError::Unreachable(format!(
                "did not accept a connection within {}",
                show(limit)
            )));
        }
        Ok(Err(e)) if e.kind() == std::io::ErrorKind::ConnectionRefused => {
            return Err(RawError::Unreachable(
                "refused the connection: nothing listens there".into(),
            ));
        }
        Ok(Err(e)) => return Err(RawError::Unreachable(format!("cannot be reached: {e}"))),
        Ok(Ok(s)) => s,
    };
    let _ = tcp.set_nodelay(true);
    let mut resp = Resp::new(Box::new(tcp));
    if let Some((user, password)) = auth {
        let mut command: Vec<&[u8]> = vec![b"AUTH"];
        if let Some(user) = user {
            command.push(user.as_bytes());
        }
        command.push(password.as_bytes());
        if let Reply::Error(e) = ask(&mut resp, &[&command], limit).await?.remove(0) {
            return Err(RawError::Auth(scrub(&e, Some(password))));
        }
    }
    Ok(resp)
}

/// `work` (a connection and its questions) bounded by `limit` in all.
pub async fn within<T>(
    limit: Duration,
    work: impl std::future::Future<Output = Result<T, RawError>>,
) -> Result<T, RawError> {
    tokio::time::timeout(limit, work).await.unwrap_or_else(|_| {
        Err(RawError::Unreachable(format!(
            "did not answer within {}",
            show(limit)
        )))
    })
}

/// `text` with `password` replaced by `***` (a server's error that echoes it); a password
/// shorter than 4 characters is left, since replacing it would garble the sentence.
pub fn scrub(text: &str, password: Option<&str>) -> String {
    match password {
        Some(p) if p.len() >= 4 => text.replace(p, "***"),
        _ => text.to_string(),
    }
}

/// Commands in one pipeline, within `limit`: one reply each.
pub async fn ask(
    resp: &mut Resp,
    commands: &[&[&[u8]]],
    limit: Duration,
) -> Result<Vec<Reply>, RawError> {
    match tokio::time::timeout(limit, resp.pipeline(commands)).await {
        Err(_) => Err(RawError::Unreachable(format!(
            "did not answer within {}",
            show(limit)
        ))),
        Ok(Err(e)) => Err(RawError::Unreachable(format!("closed the connection: {e}"))),
        Ok(Ok(replies)) => Ok(replies),
    }
}
