//! A controllable stand-in for one of the broker's HTTP dependencies (OPA,
//! a JWKS endpoint, the audit collector, an upstream) on a fixed loopback
//! port, and a steady load of fresh single-use mandates against a broker.
//!
//! Design points:
//! - **Plain sockets, so every fault is real.** The stand-in is a small
//!   HTTP/1.1 server on `std::net` (keep-alive, `Content-Length` bodies):
//!   `Down` closes the listener and every live connection (the broker
//!   sees connection refused), `Hang` reads the request and never answers,
//!   `Reset` closes with the request unread (the kernel answers RST), `Slow`
//!   answers late, `Garbage` answers 200 with a body that is no JSON,
//!   `Status` answers an error status. The mode is read per request.
//! - **The answer is the caller's.** In `Up` (and `Slow`) mode a handler
//!   closure builds the response from the request, so the same server is a
//!   JWKS, an OPA deciding with the real policy engine, or a collector that
//!   keeps what it was sent.
//! - **Load with a log.** [`Load`] sends one request at a time at a steady
//!   rate from its own thread and records each request's start, end and
//!   answer, so a test can say what happened between two instants (during a
//!   fault, after the dependency came back) and measure recovery.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use super::{eventually, Answer};

/// How the stand-in treats the next request.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Mode {
    /// The handler answers.
    Up,
    /// Nothing listens on the port: connection refused.
    Down,
    /// The handler answers after this delay.
    Slow(Duration),
    /// 200 with a body that is not JSON.
    Garbage,
    /// This status, empty body (the handler is not called).
    Status(u16),
    /// The request is read and never answered (until the mode changes;
    /// then the connection is closed).
    Hang,
    /// The connection is closed with the request unread: RST.
    Reset,
}

/// A request as the stand-in read it.
#[derive(Debug, Clone)]
pub struct Request {
    pub method: String,
    pub path: String,
    pub body: Vec<u8>,
}

/// What the handler answers.
pub struct Response {
    pub status: u16,
    pub content_type: &'static str,
    pub body: Vec<u8>,
}

impl Response {
    pub fn json(v: &serde_json::Value) -> Self {
        Self {
            status: 200,
            content_type: "application/json",
            body: v.to_string().into_bytes(),
        }
    }
}

type Handler = dyn Fn(&Request) -> Response + Send + Sync;

struct Shared {
    mode: Mutex<Mode>,
    bound: AtomicBool,
    handler: Box<Handler>,
    /// Live connections by id (so `Down` can close them); each serving
    /// thread removes its own when it ends, so the socket really closes.
    conns: Mutex<std::collections::HashMap<usize, TcpStream>>,
    next_conn: AtomicUsize,
    /// Requests read, whatever the mode.
    seen: AtomicUsize,
}

/// A stand-in dependency on a fixed loopback port; stops when dropped.
pub struct FaultServer {
    pub port: u16,
    shared: Arc<Shared>,
    stop: Arc<AtomicBool>,
}

impl FaultServer {
    /// Serves `handler` on a free port, `Up`.
    pub fn start(handler: impl Fn(&Request) -> Response + Send + Sync + 'static) -> Self {
        let port = super::free_port();
        let shared = Arc::new(Shared {
            mode: Mutex::new(Mode::Up),
            bound: AtomicBool::new(false),
            handler: Box::new(handler),
            conns: Mutex::new(std::collections::HashMap::new()),
            next_conn: AtomicUsize::new(0),
            seen: AtomicUsize::new(0),
        });
        let stop = Arc::new(AtomicBool::new(false));
        let (s, st) = (shared.clone(), stop.clone());
        std::thread::spawn(move || accept_loop(port, &s, &st));
        let server = Self { port, shared, stop };
        server.wait_bound(true);
        server
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.port)
    }

    /// Switches the mode; returns once the port is closed (`Down`) or
    /// listening again (any other mode).
    pub fn set(&self, mode: Mode) {
        let down = mode == Mode::Down;
        // Connections the broker keeps alive see the fault too.
        let close = matches!(mode, Mode::Down | Mode::Reset);
        *self.shared.mode.lock().unwrap() = mode;
        if close {
            for c in self.shared.conns.lock().unwrap().values() {
                let _ = c.shutdown(Shutdown::Both);
            }
        }
        self.wait_bound(!down);
    }

    pub fn mode(&self) -> Mode {
        self.shared.mode.lock().unwrap().clone()
    }

    /// Requests read so far, whatever the mode (`Down` reads none).
    pub fn seen(&self) -> usize {
        self.shared.seen.load(Ordering::SeqCst)
    }

    fn wait_bound(&self, bound: bool) {
        assert!(
            eventually(Duration::from_secs(5), || self
                .shared
                .bound
                .load(Ordering::SeqCst)
                == bound),
            "stand-in on port {} did not {} listening",
            self.port,
            if bound { "start" } else { "stop" }
        );
    }
}

impl Drop for FaultServer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        *self.shared.mode.lock().unwrap() = Mode::Down;
        for c in self.shared.conns.lock().unwrap().values() {
            let _ = c.shutdown(Shutdown::Both);
        }
    }
}

fn accept_loop(port: u16, shared: &Arc<Shared>, stop: &AtomicBool) {
    let mut listener: Option<TcpListener> = None;
    while !stop.load(Ordering::SeqCst) {
        let down = *shared.mode.lock().unwrap() == Mode::Down;
        if down {
            listener = None;
            shared.bound.store(false, Ordering::SeqCst);
            std::thread::sleep(Duration::from_millis(10));
            continue;
        }
        let Some(l) = &listener else {
            // std sets SO_REUSEADDR: the port can be bound again at once.
            match TcpListener::bind(("127.0.0.1", port)) {
                Ok(l) => {
                    l.set_nonblocking(true).unwrap();
                    listener = Some(l);
                    shared.bound.store(true, Ordering::SeqCst);
                }
                Err(_) => std::thread::sleep(Duration::from_millis(20)),
            }
            continue;
        };
        match l.accept() {
            Ok((conn, _)) => {
                conn.set_nonblocking(false).unwrap();
                let id = shared.next_conn.fetch_add(1, Ordering::SeqCst);
                if let Ok(c) = conn.try_clone() {
                    shared.conns.lock().unwrap().insert(id, c);
                }
                let s = shared.clone();
                std::thread::spawn(move || {
                    serve(conn, &s);
                    // The last handle: dropping it closes the socket (with
                    // the request unread, an RST).
                    s.conns.lock().unwrap().remove(&id);
                });
            }
            Err(_) => std::thread::sleep(Duration::from_millis(5)),
        }
    }
    shared.bound.store(false, Ordering::SeqCst);
}

/// Serves one connection until it closes.
fn serve(conn: TcpStream, shared: &Shared) {
    let mode = || shared.mode.lock().unwrap().clone();
    if mode() == Mode::Reset {
        // Let the request arrive, then close without reading it: RST.
        std::thread::sleep(Duration::from_millis(20));
        return;
    }
    let Ok(mut out) = conn.try_clone() else {
        return;
    };
    let mut reader = BufReader::new(conn);
    while let Some(request) = read_request(&mut reader) {
        shared.seen.fetch_add(1, Ordering::SeqCst);
        let response = match mode() {
            Mode::Up => (shared.handler)(&request),
            Mode::Slow(d) => {
                std::thread::sleep(d);
                (shared.handler)(&request)
            }
            Mode::Garbage => Response {
                status: 200,
                content_type: "text/html",
                body: b"<html>not what you asked for</html>".to_vec(),
            },
            Mode::Status(status) => Response {
                status,
                content_type: "text/plain",
                body: Vec::new(),
            },
            Mode::Hang => {
                while mode() == Mode::Hang {
                    std::thread::sleep(Duration::from_millis(20));
                }
                return;
            }
            Mode::Down | Mode::Reset => return,
        };
        let head = format!(
            "HTTP/1.1 {} X\r\ncontent-type: {}\r\ncontent-length: {}\r\n\r\n",
            response.status,
            response.content_type,
            response.body.len()
        );
        if out.write_all(head.as_bytes()).is_err() || out.write_all(&response.body).is_err() {
            return;
        }
    }
}

/// One request (`Content-Length` bodies), or `None` at end of stream.
fn read_request(reader: &mut BufReader<TcpStream>) -> Option<Request> {
    let mut line = String::new();
    reader.read_line(&mut line).ok().filter(|n| *n > 0)?;
    let mut parts = line.split_whitespace();
    let method = parts.next()?.to_owned();
    let path = parts.next()?.to_owned();
    let mut length = 0usize;
    loop {
        let mut h = String::new();
        reader.read_line(&mut h).ok().filter(|n| *n > 0)?;
        if h == "\r\n" {
            break;
        }
        if let Some((k, v)) = h.split_once(':') {
            if k.trim().eq_ignore_ascii_case("content-length") {
                length = v.trim().parse().ok()?;
            }
        }
    }
    let mut body = vec![0; length];
    reader.read_exact(&mut body).ok()?;
    Some(Request { method, path, body })
}

/// One request of a [`Load`].
#[derive(Debug, Clone)]
pub struct Outcome {
    pub seq: usize,
    pub started: Instant,
    pub ended: Instant,
    /// 0 when the client gave up (no answer within its time limit).
    pub status: u16,
    pub code: String,
}

impl Outcome {
    pub fn took(&self) -> Duration {
        self.ended - self.started
    }
}

/// Requests sent one at a time at a steady rate until stopped.
pub struct Load {
    stop: Arc<AtomicBool>,
    log: Arc<Mutex<Vec<Outcome>>>,
    thread: Option<JoinHandle<()>>,
}

impl Load {
    /// Calls `request(seq)` `per_second` times a second (or as fast as
    /// answers come, if slower), each call a fresh request.
    pub fn start(per_second: f64, request: impl Fn(usize) -> Answer + Send + 'static) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let log = Arc::new(Mutex::new(Vec::new()));
        let (st, lg) = (stop.clone(), log.clone());
        let interval = Duration::from_secs_f64(1.0 / per_second);
        let thread = std::thread::spawn(move || {
            let mut seq = 0;
            while !st.load(Ordering::SeqCst) {
                let started = Instant::now();
                let a = request(seq);
                let code = if a.status >= 400 {
                    serde_json::from_str::<serde_json::Value>(&a.body)
                        .ok()
                        .and_then(|v| v["error"].as_str().map(str::to_owned))
                        .unwrap_or_default()
                } else {
                    String::new()
                };
                lg.lock().unwrap().push(Outcome {
                    seq,
                    started,
                    ended: Instant::now(),
                    status: a.status,
                    code,
                });
                seq += 1;
                if let Some(rest) = interval.checked_sub(started.elapsed()) {
                    std::thread::sleep(rest);
                }
            }
        });
        Self {
            stop,
            log,
            thread: Some(thread),
        }
    }

    /// Everything so far.
    pub fn outcomes(&self) -> Vec<Outcome> {
        self.log.lock().unwrap().clone()
    }

    /// Requests that started at or after `from` and ended by `to`.
    pub fn between(&self, from: Instant, to: Instant) -> Vec<Outcome> {
        self.outcomes()
            .into_iter()
            .filter(|o| o.started >= from && o.ended <= to)
            .collect()
    }

    /// The time from `back` to the end of the first request started after
    /// it that `ok` accepts, waiting up to `limit` for one.
    pub fn recovery(
        &self,
        back: Instant,
        limit: Duration,
        ok: impl Fn(&Outcome) -> bool,
    ) -> Option<Duration> {
        let deadline = back + limit;
        loop {
            if let Some(o) = self
                .outcomes()
                .into_iter()
                .find(|o| o.started >= back && ok(o))
            {
                return Some(o.ended - back);
            }
            if Instant::now() > deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Stops after the request in flight; everything it did.
    pub fn stop(mut self) -> Vec<Outcome> {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            t.join().unwrap();
        }
        self.outcomes()
    }
}

impl Drop for Load {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
    }
}

/// `status code` counts of `outcomes`, e.g. `{"503 policy_unavailable": 7}`.
pub fn tally(outcomes: &[Outcome]) -> std::collections::BTreeMap<String, usize> {
    let mut t = std::collections::BTreeMap::new();
    for o in outcomes {
        let key = if o.code.is_empty() {
            o.status.to_string()
        } else {
            format!("{} {}", o.status, o.code)
        };
        *t.entry(key).or_insert(0) += 1;
    }
    t
}
