//! OTLP collectors the tests run: OTLP/HTTP (HTTP/1.1 POSTs) or OTLP/gRPC (HTTP/2, the
//! gRPC frame stripped), keeping every request's path, head and protobuf body. Each runs on
//! a runtime of its own, so that `stop` is a collector killed: its listener and every
//! connection closed at once; `start` brings it back on the same port.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use http_body_util::{BodyExt, Full, StreamBody};
use hyper::body::{Bytes, Frame};
use tokio::sync::oneshot;

/// One request a collector received.
#[derive(Clone, Debug)]
pub struct Request {
    /// `/v1/metrics`, or the gRPC method's path.
    pub path: String,
    /// The request line's headers, as `name: value` lines (HTTP/2's included).
    pub head: String,
    /// The protobuf message.
    pub body: Vec<u8>,
}

impl Request {
    pub fn is_metrics(&self) -> bool {
        self.path.ends_with("/v1/metrics") || self.path.contains("MetricsService")
    }

    pub fn is_traces(&self) -> bool {
        self.path.ends_with("/v1/traces") || self.path.contains("TraceService")
    }
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Protocol {
    Http,
    Grpc,
}

impl Protocol {
    /// As `OTEL_EXPORTER_OTLP_PROTOCOL` writes it.
    pub fn name(self) -> &'static str {
        match self {
            Protocol::Http => "http/protobuf",
            Protocol::Grpc => "grpc",
        }
    }
}

/// Every request a collector received, in order, across restarts.
#[derive(Clone, Default)]
pub struct Received(Arc<Mutex<Vec<Request>>>);

impl Received {
    pub fn all(&self) -> Vec<Request> {
        self.0.lock().unwrap().clone()
    }

    pub fn count(&self, keep: impl Fn(&Request) -> bool) -> usize {
        self.0.lock().unwrap().iter().filter(|r| keep(r)).count()
    }

    /// Every byte received, heads and bodies.
    pub fn bytes(&self) -> Vec<u8> {
        let mut out = Vec::new();
        for r in self.0.lock().unwrap().iter() {
            out.extend_from_slice(r.head.as_bytes());
            out.extend_from_slice(&r.body);
        }
        out
    }
}

pub struct Collector {
    pub addr: SocketAddr,
    pub protocol: Protocol,
    pub received: Received,
    running: Option<(oneshot::Sender<()>, std::thread::JoinHandle<()>)>,
}

impl Collector {
    pub fn start(protocol: Protocol) -> Collector {
        let mut c = Collector {
            addr: "127.0.0.1:0".parse().unwrap(),
            protocol,
            received: Received::default(),
            running: None,
        };
        c.resume();
        c
    }

    /// The base URL (`http://127.0.0.1:port`).
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Kills it: the listener and every open connection closed.
    pub fn stop(&mut self) {
        if let Some((stop, thread)) = self.running.take() {
            let _ = stop.send(());
            thread.join().unwrap();
        }
    }

    /// Starts it again, on the same port.
    pub fn resume(&mut self) {
        assert!(self.running.is_none(), "already running");
        let listener = std::net::TcpListener::bind(self.addr).unwrap();
        self.addr = listener.local_addr().unwrap();
        listener.set_nonblocking(true).unwrap();
        let (stop, stopped) = oneshot::channel();
        let (keep, protocol) = (self.received.clone(), self.protocol);
        let thread = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            rt.block_on(serve(listener, keep, protocol, stopped));
            // Dropping the runtime drops every connection's task, and so its socket.
            drop(rt);
        });
        self.running = Some((stop, thread));
    }
}

impl Drop for Collector {
    fn drop(&mut self) {
        self.stop();
    }
}

async fn serve(
    listener: std::net::TcpListener,
    keep: Received,
    protocol: Protocol,
    mut stopped: oneshot::Receiver<()>,
) {
    let listener = tokio::net::TcpListener::from_std(listener).unwrap();
    loop {
        let stream = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((s, _)) => s,
                Err(_) => continue,
            },
            _ = &mut stopped => return,
        };
        let keep = keep.clone();
        tokio::spawn(async move {
            let io = hyper_util::rt::TokioIo::new(stream);
            match protocol {
                Protocol::Http => {
                    let service = hyper::service::service_fn(move |req| {
                        let keep = keep.clone();
                        async move {
                            record(&keep, req, 0).await;
                            let mut resp = hyper::Response::new(Full::new(Bytes::new()));
                            resp.headers_mut()
                                .insert("content-type", "application/x-protobuf".parse().unwrap());
                            Ok::<_, std::convert::Infallible>(resp)
                        }
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(io, service)
                        .await;
                }
                Protocol::Grpc => {
                    let service = hyper::service::service_fn(move |req| {
                        let keep = keep.clone();
                        async move {
                            record(&keep, req, 5).await;
                            let mut trailers = hyper::HeaderMap::new();
                            trailers.insert("grpc-status", "0".parse().unwrap());
                            let frames: Vec<Result<Frame<Bytes>, std::convert::Infallible>> = vec![
                                Ok(Frame::data(Bytes::from_static(&[0, 0, 0, 0, 0]))),
                                Ok(Frame::trailers(trailers)),
                            ];
                            let body = StreamBody::new(futures_util::stream::iter(frames));
                            let mut resp = hyper::Response::new(body);
                            resp.headers_mut()
                                .insert("content-type", "application/grpc".parse().unwrap());
                            Ok::<_, std::convert::Infallible>(resp)
                        }
                    });
                    let _ = hyper::server::conn::http2::Builder::new(
                        hyper_util::rt::TokioExecutor::new(),
                    )
                    .serve_connection(io, service)
                    .await;
                }
            }
        });
    }
}

/// Keeps a request; `skip` bytes of framing are dropped from the body (gRPC's 5).
async fn record(keep: &Received, req: hyper::Request<hyper::body::Incoming>, skip: usize) {
    let path = req.uri().path().to_string();
    let head: String = req
        .headers()
        .iter()
        .map(|(k, v)| format!("{k}: {}\r\n", String::from_utf8_lossy(v.as_bytes())))
        .collect();
    let body = req
        .into_body()
        .collect()
        .await
        .map(|b| b.to_bytes())
        .unwrap_or_default();
    if body.len() >= skip {
        keep.0.lock().unwrap().push(Request {
            path,
            head,
            body: body[skip..].to_vec(),
        });
    }
}
