//! A minimal RESP2 client over any stream: the `check` command's step-by-step diagnosis
//! (it shows the server's own words, such as AUTH's WRONGPASS text, which the redis crate
//! replaces with a generic message) and the Celery event subscription, whose connection it
//! names and whose messages it reads at its own pace (the socket's backpressure, not an
//! unbounded queue, holds back a flood).

use std::io;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

/// Replies larger than this are refused: a diagnosis never needs them.
const MAX_BULK: usize = 16 * 1024 * 1024;
const MAX_ITEMS: usize = 1024 * 1024;
/// A reply's header line (`+OK`, `-ERR ...`, `$5`) longer than this is not Redis.
const MAX_LINE: u64 = 64 * 1024;
/// Buffer capacity kept between replies; more is given back once a large reply is read.
const KEEP: usize = 64 * 1024;
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
    stream: Box<dyn Stream>,
    /// Bytes read and not yet parsed start at `pos`.
    buf: Vec<u8>,
    pos: usize,
}

impl Resp {
    pub fn new(stream: Box<dyn Stream>) -> Resp {
        Resp {
            stream,
            buf: Vec::new(),
            pos: 0,
        }
    }

    /// Writes commands in one write, without reading their replies.
    pub async fn send(&mut self, commands: &[&[&[u8]]]) -> io::Result<()> {
        let mut out = Vec::new();
        for args in commands {
            out.extend_from_slice(format!("*{}\r\n", args.len()).as_bytes());
            for a in *args {
                out.extend_from_slice(format!("${}\r\n", a.len()).as_bytes());
                out.extend_from_slice(a);
                out.extend_from_slice(b"\r\n");
            }
        }
        self.stream.write_all(&out).await?;
        self.stream.flush().await
    }

    /// Sends commands in one write (a pipeline), then reads one reply per command.
    pub async fn pipeline(&mut self, commands: &[&[&[u8]]]) -> io::Result<Vec<Reply>> {
        self.send(commands).await?;
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

    /// Reads one reply. Cancel-safe: bytes are kept between calls until a whole reply has
    /// arrived, so a `select!` may drop this future and call it again (the pub/sub loop
    /// does, to send its PINGs).
    pub async fn read(&mut self) -> io::Result<Reply> {
        loop {
            if let Some((reply, used)) = parse(&self.buf[self.pos..], 0)? {
                self.pos += used;
                if self.pos == self.buf.len() {
                    self.buf.clear();
                    self.pos = 0;
                    // A large reply once does not keep its memory for good.
                    if self.buf.capacity() > KEEP {
                        self.buf.shrink_to(KEEP);
                    }
                }
                return Ok(reply);
            }
            if self.pos > 0 {
                self.buf.drain(..self.pos);
                self.pos = 0;
            }
            self.buf.reserve(16 * 1024);
            if self.stream.read_buf(&mut self.buf).await? == 0 {
                return Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    "the server closed the connection",
                ));
            }
        }
    }
}

/// One whole reply at the start of `buf`, and how many bytes it took; `None` while it has
/// not all arrived.
fn parse(buf: &[u8], depth: usize) -> io::Result<Option<(Reply, usize)>> {
    if depth > MAX_DEPTH {
        return Err(invalid("arrays nested too deep"));
    }
    let Some(end) = buf.windows(2).position(|w| w == b"\r\n") else {
        if buf.len() as u64 > MAX_LINE {
            return Err(invalid("a reply line without CRLF"));
        }
        return Ok(None);
    };
    if end as u64 > MAX_LINE || end == 0 {
        return Err(invalid("a reply line without CRLF"));
    }
    let body = String::from_utf8_lossy(&buf[1..end]).into_owned();
    let after = end + 2;
    let reply = match buf[0] {
        b'+' => Reply::Simple(body),
        b'-' => Reply::Error(body),
        b':' => body
            .parse()
            .map(Reply::Int)
            .map_err(|_| invalid("an integer reply that is not a number"))?,
        b'$' => {
            let Some(len) = length(&body, MAX_BULK, "a bulk reply over 16 MiB")? else {
                return Ok(Some((Reply::Bulk(None), after)));
            };
            if buf.len() < after + len + 2 {
                return Ok(None);
            }
            if &buf[after + len..after + len + 2] != b"\r\n" {
                return Err(invalid("a bulk reply without CRLF"));
            }
            return Ok(Some((
                Reply::Bulk(Some(buf[after..after + len].to_vec())),
                after + len + 2,
            )));
        }
        b'*' => {
            let Some(len) = length(&body, MAX_ITEMS, "an array reply too long")? else {
                return Ok(Some((Reply::Array(None), after)));
            };
            let mut items = Vec::with_capacity(len.min(1024));
            let mut at = after;
            for _ in 0..len {
                let Some((item, used)) = parse(&buf[at..], depth + 1)? else {
                    return Ok(None);
                };
                items.push(item);
                at += used;
            }
            return Ok(Some((Reply::Array(Some(items)), at)));
        }
        _ => return Err(invalid("not the Redis protocol")),
    };
    Ok(Some((reply, after)))
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

    /// Replies arriving a byte at a time, and reads dropped mid-way, lose nothing.
    #[tokio::test]
    async fn reads_are_cancel_safe_and_take_split_replies() {
        let (client, mut server) = tokio::io::duplex(1 << 16);
        let mut r = Resp::new(Box::new(client));
        let wire = b"*4\r\n$8\r\npmessage\r\n$1\r\n*\r\n$2\r\nch\r\n$5\r\nhello\r\n+PONG\r\n";
        let feeder = tokio::spawn(async move {
            for b in wire {
                server.write_all(&[*b]).await.unwrap();
                tokio::time::sleep(std::time::Duration::from_millis(1)).await;
            }
            server
        });
        let mut got = Vec::new();
        while got.len() < 2 {
            // A short deadline drops the read future again and again mid-reply.
            if let Ok(reply) =
                tokio::time::timeout(std::time::Duration::from_millis(3), r.read()).await
            {
                got.push(reply.unwrap());
            }
        }
        let _server = feeder.await.unwrap();
        assert_eq!(
            got,
            [
                Reply::Array(Some(vec![
                    Reply::Bulk(Some(b"pmessage".to_vec())),
                    Reply::Bulk(Some(b"*".to_vec())),
                    Reply::Bulk(Some(b"ch".to_vec())),
                    Reply::Bulk(Some(b"hello".to_vec())),
                ])),
                Reply::Simple("PONG".into()),
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
