//! A minimal RESP2 client over any stream, for the `check` command's step-by-step
//! diagnosis: it shows each step and the server's own words (AUTH's WRONGPASS text, which
//! the redis crate replaces with a generic message). The server loop does not use it.

use std::io;

use tokio::io::{AsyncBufReadExt, AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, BufReader};

/// Replies larger than this are refused: a diagnosis never needs them.
const MAX_BULK: usize = 16 * 1024 * 1024;
const MAX_ITEMS: usize = 1024 * 1024;
/// A reply's header line (`+OK`, `-ERR ...`, `$5`) longer than this is not Redis.
const MAX_LINE: u64 = 64 * 1024;
/// Arrays nested deeper than this are refused (a hostile server cannot exhaust the stack).
const MAX_DEPTH: usize = 8;

/// A reply.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reply {
    Simple(String),
    Error(String),
    Int(i64),
    Bulk(Option<Vec<u8>>),
    Array(Option<Vec<Reply>>),
}

impl Reply {
    /// The reply as text, for simple and bulk strings.
    pub fn text(&self) -> Option<String> {
        match self {
            Reply::Simple(s) => Some(s.clone()),
            Reply::Bulk(Some(b)) => Some(String::from_utf8_lossy(b).into_owned()),
            _ => None,
        }
    }
}

/// Anything a Redis connection can run over: TCP, TLS, a unix socket.
pub trait Stream: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Stream for T {}

pub struct Resp {
    io: BufReader<Box<dyn Stream>>,
}

impl Resp {
    pub fn new(stream: Box<dyn Stream>) -> Resp {
        Resp {
            io: BufReader::new(stream),
        }
    }

    /// Sends commands in one write (a pipeline), then reads one reply per command.
    pub async fn pipeline(&mut self, commands: &[&[&[u8]]]) -> io::Result<Vec<Reply>> {
        let mut out = Vec::new();
        for args in commands {
            out.extend_from_slice(format!("*{}\r\n", args.len()).as_bytes());
            for a in *args {
                out.extend_from_slice(format!("${}\r\n", a.len()).as_bytes());
                out.extend_from_slice(a);
                out.extend_from_slice(b"\r\n");
            }
        }
        self.io.get_mut().write_all(&out).await?;
        self.io.get_mut().flush().await?;
        let mut replies = Vec::with_capacity(commands.len());
        for _ in commands {
            replies.push(self.read().await?);
        }
        Ok(replies)
    }

    /// One command, one reply.
    pub async fn command(&mut self, args: &[&[u8]]) -> io::Result<Reply> {
        let mut replies = self.pipeline(&[args]).await?;
        Ok(replies.remove(0))
    }

    /// Reads one reply.
    pub async fn read(&mut self) -> io::Result<Reply> {
        self.read_nested(0).await
    }

    /// Reads one reply at nesting `depth` (boxed: replies nest).
    #[allow(clippy::type_complexity)]
    fn read_nested(
        &mut self,
        depth: usize,
    ) -> std::pin::Pin<Box<dyn Future<Output = io::Result<Reply>> + Send + '_>> {
        Box::pin(async move {
            if depth > MAX_DEPTH {
                return Err(invalid("arrays nested too deep"));
            }
            let mut line = Vec::new();
            let n = (&mut self.io)
                .take(MAX_LINE)
                .read_until(b'\n', &mut line)
                .await?;
            if n == 0 {
                return Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    "the server closed the connection",
                ));
            }
            if line.len() < 3 || !line.ends_with(b"\r\n") {
                return Err(invalid("a reply line without CRLF"));
            }
            let body = String::from_utf8_lossy(&line[1..line.len() - 2]).into_owned();
            match line[0] {
                b'+' => Ok(Reply::Simple(body)),
                b'-' => Ok(Reply::Error(body)),
                b':' => body
                    .parse()
                    .map(Reply::Int)
                    .map_err(|_| invalid("an integer reply that is not a number")),
                b'$' => {
                    let Some(len) = length(&body, MAX_BULK, "a bulk reply over 16 MiB")? else {
                        return Ok(Reply::Bulk(None));
                    };
                    let mut data = vec![0; len + 2];
                    self.io.read_exact(&mut data).await?;
                    if !data.ends_with(b"\r\n") {
                        return Err(invalid("a bulk reply without CRLF"));
                    }
                    data.truncate(len);
                    Ok(Reply::Bulk(Some(data)))
                }
                b'*' => {
                    let Some(len) = length(&body, MAX_ITEMS, "an array reply too long")? else {
                        return Ok(Reply::Array(None));
                    };
                    let mut items = Vec::with_capacity(len.min(1024));
                    for _ in 0..len {
                        items.push(self.read_nested(depth + 1).await?);
                    }
                    Ok(Reply::Array(Some(items)))
                }
                _ => Err(invalid("not the Redis protocol")),
            }
        })
    }
}

/// The length in a bulk or array header: `None` for a null reply (a negative length), an
/// error past `max` (`too_long` says what was refused).
fn length(header: &str, max: usize, too_long: &str) -> io::Result<Option<usize>> {
    let len: i64 = header.parse().map_err(|_| invalid("a bad length"))?;
    if len < 0 {
        return Ok(None);
    }
    match usize::try_from(len) {
        Ok(len) if len <= max => Ok(Some(len)),
        _ => Err(invalid(too_long)),
    }
}

fn invalid(what: &str) -> io::Error {
    io::Error::new(
        io::ErrorKind::InvalidData,
        format!("not a Redis reply: {what}"),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn replies(bytes: &'static [u8], n: usize) -> io::Result<Vec<Reply>> {
        let (client, mut server) = tokio::io::duplex(1 << 16);
        server.write_all(bytes).await.unwrap();
        drop(server);
        let mut r = Resp::new(Box::new(client));
        let mut out = Vec::new();
        for _ in 0..n {
            out.push(r.read().await?);
        }
        Ok(out)
    }

    #[tokio::test]
    async fn parses_every_reply_type() {
        let got = replies(
            b"+PONG\r\n-WRONGPASS invalid\r\n:42\r\n$3\r\nabc\r\n$-1\r\n*2\r\n:1\r\n$1\r\nx\r\n",
            6,
        )
        .await
        .unwrap();
        assert_eq!(
            got,
            [
                Reply::Simple("PONG".into()),
                Reply::Error("WRONGPASS invalid".into()),
                Reply::Int(42),
                Reply::Bulk(Some(b"abc".to_vec())),
                Reply::Bulk(None),
                Reply::Array(Some(vec![Reply::Int(1), Reply::Bulk(Some(b"x".to_vec()))])),
            ]
        );
    }

    #[tokio::test]
    async fn garbage_is_an_error() {
        for bytes in [
            &b"HTTP/1.1 400\r\n"[..],
            b"",
            b"$99999999999\r\n",
            b":x\r\n",
            b"+no crlf",
            b"$3\r\nabcde",
            &b"*1\r\n".repeat(20),
        ] {
            let (client, mut server) = tokio::io::duplex(1024);
            server.write_all(bytes).await.unwrap();
            drop(server);
            assert!(
                Resp::new(Box::new(client)).read().await.is_err(),
                "{bytes:?}"
            );
        }
    }
}
