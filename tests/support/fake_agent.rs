//! A fake Datadog agent that misbehaves on purpose: a tiny HTTP/1.1 server
//! on a loopback TCP port or a Unix socket, answering every request the way
//! its [`Behaviour`] says, so tests can see what the uploader does with an
//! agent that refuses, fails, hangs, is slow or resets the connection.
//!
//! ```ignore
//! let agent = FakeAgent::start(Behaviour::Status(500));
//! let profiler = Profiler::builder().agent_addr(agent.agent_addr()) /* ... */;
//! // ...
//! let requests = agent.requests(); // method, path, headers, body
//! ```
//!
//! - [`FakeAgent::start`] listens on `127.0.0.1:0`; [`FakeAgent::start_unix`]
//!   on a Unix socket at a given path (removed again on drop).
//! - A background thread accepts connections (a non-blocking accept loop
//!   polled every few milliseconds) and gives each its own thread. Every
//!   complete request (request line, headers, and a body framed by
//!   `Content-Length` or `Transfer-Encoding: chunked`) is recorded *before*
//!   it is answered, so [`FakeAgent::requests`] holds it even when the
//!   answer never comes. Connections are kept alive: several requests may
//!   come over one connection. [`FakeAgent::connections`] counts accepted
//!   connections.
//! - Only `std`, plus `libc` for `SO_LINGER` (a normal dependency of the
//!   crate). Multipart bodies are split by `test_agent`'s strict
//!   [`parse_multipart`](super::test_agent::parse_multipart) via
//!   [`Request::parts`].
//! - Dropping the agent stops everything without hanging: a shutdown flag
//!   that the accept loop and every connection thread (reading with a short
//!   timeout, sleeping in short steps) check, then a join of all of them.
//!   A connection held open ([`Behaviour::NeverAnswer`]) or an answer not
//!   yet sent ([`Behaviour::AnswerAfter`]) is closed at that point.

// Each test binary uses its own part of this module.
#![allow(dead_code)]

use std::io::{self, Read, Write};
use std::net::{Ipv4Addr, Shutdown, SocketAddr, TcpListener, TcpStream};
use std::os::fd::AsRawFd;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

/// How often the accept loop and the connection threads look at the
/// shutdown flag.
const POLL: Duration = Duration::from_millis(10);

/// A write that takes longer than this gives up (the client stopped
/// reading); keeps [`Drop`] from hanging.
const WRITE_TIMEOUT: Duration = Duration::from_secs(2);

/// The largest request head (request line and headers) accepted.
const MAX_HEAD: usize = 64 * 1024;

/// What the fake agent does with each connection.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Behaviour {
    /// Reads each request whole, records it, answers `200 OK`.
    Accept,
    /// Reads each request whole, records it, answers with this status (and
    /// a short text body).
    Status(u16),
    /// Reads the request whole, records it, and never answers: the
    /// connection stays open until the client closes it or the agent is
    /// dropped.
    NeverAnswer,
    /// Reads each request whole, records it, waits this long (cut short if
    /// the agent is dropped), then answers `200 OK`.
    AnswerAfter(Duration),
    /// Accepts, reads a few bytes, and closes the connection with
    /// `SO_LINGER` 0, so the client gets a TCP reset (over a Unix socket,
    /// where there is no reset, it just closes). Nothing is recorded.
    Reset,
    /// Nobody listens: the address is that of a listener bound to a free
    /// port and closed again (see [`FakeAgent::refused_addr`]); over a Unix
    /// socket, a path where no socket is.
    Refused,
}

/// A request the fake agent read whole: the test agent's type, with the
/// URL `http://localhost<request target>` (the Host a socket client sends).
pub use super::test_agent::Request;

/// Where the fake agent is reached.
#[derive(Clone, Debug)]
enum Place {
    Tcp(SocketAddr),
    Unix(PathBuf),
}

/// What the agent's threads share with it.
#[derive(Debug, Default)]
struct Shared {
    requests: Mutex<Vec<Request>>,
    connections: AtomicUsize,
    shutdown: AtomicBool,
}

impl Shared {
    fn stopping(&self) -> bool {
        self.shutdown.load(Ordering::Acquire)
    }
}

/// A running fake agent; dropping it stops its threads.
#[derive(Debug)]
pub struct FakeAgent {
    place: Place,
    behaviour: Behaviour,
    shared: Arc<Shared>,
    thread: Option<JoinHandle<()>>,
    /// The socket file to remove on drop (a Unix socket we bound).
    socket_file: Option<PathBuf>,
}

impl FakeAgent {
    /// Starts an agent on `127.0.0.1` (a free port) behaving as told. With
    /// [`Behaviour::Refused`] nothing listens: [`addr`](Self::addr) is
    /// [`refused_addr`](Self::refused_addr)'s.
    pub fn start(behaviour: Behaviour) -> FakeAgent {
        let shared = Arc::new(Shared::default());
        if behaviour == Behaviour::Refused {
            return FakeAgent {
                place: Place::Tcp(Self::refused_addr()),
                behaviour,
                shared,
                thread: None,
                socket_file: None,
            };
        }
        let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
            .unwrap_or_else(|e| panic!("fake agent: binding 127.0.0.1:0: {e}"));
        let addr = listener
            .local_addr()
            .unwrap_or_else(|e| panic!("fake agent: a bound listener's address: {e}"));
        listener
            .set_nonblocking(true)
            .unwrap_or_else(|e| panic!("fake agent: non-blocking listener: {e}"));
        let thread = spawn_accept_loop(shared.clone(), behaviour, move || {
            listener.accept().map(|(stream, _)| stream)
        });
        FakeAgent {
            place: Place::Tcp(addr),
            behaviour,
            shared,
            thread: Some(thread),
            socket_file: None,
        }
    }

    /// Starts an agent on a Unix socket at `path` (which must not exist;
    /// keep it under ~100 bytes), behaving as told. With
    /// [`Behaviour::Refused`] nothing is created at `path`.
    pub fn start_unix(path: impl Into<PathBuf>, behaviour: Behaviour) -> FakeAgent {
        let path = path.into();
        let shared = Arc::new(Shared::default());
        if behaviour == Behaviour::Refused {
            return FakeAgent {
                place: Place::Unix(path),
                behaviour,
                shared,
                thread: None,
                socket_file: None,
            };
        }
        let listener = UnixListener::bind(&path)
            .unwrap_or_else(|e| panic!("fake agent: binding {}: {e}", path.display()));
        listener
            .set_nonblocking(true)
            .unwrap_or_else(|e| panic!("fake agent: non-blocking listener: {e}"));
        let thread = spawn_accept_loop(shared.clone(), behaviour, move || {
            listener.accept().map(|(stream, _)| stream)
        });
        FakeAgent {
            place: Place::Unix(path.clone()),
            behaviour,
            shared,
            thread: Some(thread),
            socket_file: Some(path),
        }
    }

    /// A loopback address nobody listens on: a listener bound to port 0,
    /// its port read, the listener closed. (Another process could take the
    /// port meanwhile; on a test machine that is vanishingly rare.)
    pub fn refused_addr() -> SocketAddr {
        let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
            .unwrap_or_else(|e| panic!("fake agent: binding 127.0.0.1:0: {e}"));
        listener
            .local_addr()
            .unwrap_or_else(|e| panic!("fake agent: a bound listener's address: {e}"))
    }

    /// The behaviour it was started with.
    pub fn behaviour(&self) -> Behaviour {
        self.behaviour
    }

    /// The TCP address; panics for an agent on a Unix socket.
    pub fn addr(&self) -> SocketAddr {
        match &self.place {
            Place::Tcp(addr) => *addr,
            Place::Unix(path) => panic!("fake agent on {} has no TCP address", path.display()),
        }
    }

    /// `127.0.0.1:PORT`, for `ProfilerBuilder::agent_addr`.
    pub fn agent_addr(&self) -> String {
        self.addr().to_string()
    }

    /// The socket's path; panics for an agent on TCP.
    pub fn socket_path(&self) -> &Path {
        match &self.place {
            Place::Unix(path) => path,
            Place::Tcp(addr) => panic!("fake agent on {addr} has no socket path"),
        }
    }

    /// Every request read whole so far, oldest first.
    pub fn requests(&self) -> Vec<Request> {
        self.shared
            .requests
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// [`requests`](Self::requests) once there are at least `n`; polls,
    /// and panics with what did arrive after `timeout`.
    pub fn wait_for_requests(&self, n: usize, timeout: Duration) -> Vec<Request> {
        let deadline = Instant::now() + timeout;
        loop {
            let requests = self.requests();
            if requests.len() >= n {
                return requests;
            }
            assert!(
                Instant::now() < deadline,
                "the fake agent received {} requests in {timeout:?}, not {n}: {:?}",
                requests.len(),
                requests
                    .iter()
                    .map(|r| format!("{} {}", r.method, r.path()))
                    .collect::<Vec<_>>()
            );
            thread::sleep(POLL);
        }
    }

    /// Connections accepted so far.
    pub fn connections(&self) -> usize {
        self.shared.connections.load(Ordering::Acquire)
    }
}

impl Drop for FakeAgent {
    fn drop(&mut self) {
        self.shared.shutdown.store(true, Ordering::Release);
        if let Some(thread) = self.thread.take() {
            // A panic in a connection thread is a bug of this module; don't
            // turn it into a double panic during unwinding.
            if thread.join().is_err() && !thread::panicking() {
                panic!("fake agent: a server thread panicked");
            }
        }
        if let Some(path) = &self.socket_file {
            let _ = std::fs::remove_file(path);
        }
    }
}

/// A connection of either kind.
trait Conn: Read + Write + Send + 'static {
    /// Blocking, with reads that time out after `timeout`.
    fn prepare(&self, timeout: Duration) -> io::Result<()>;
    /// Closes so that the peer sees a reset (TCP) or just a close.
    fn reset(self);
}

impl Conn for TcpStream {
    fn prepare(&self, timeout: Duration) -> io::Result<()> {
        self.set_nonblocking(false)?;
        self.set_read_timeout(Some(timeout))?;
        self.set_write_timeout(Some(WRITE_TIMEOUT))
    }

    fn reset(self) {
        let linger = libc::linger {
            l_onoff: 1,
            l_linger: 0,
        };
        // SAFETY: a valid socket descriptor owned by `self` (alive for the
        // call), and a pointer to a live `linger` of the size passed.
        let rc = unsafe {
            libc::setsockopt(
                self.as_raw_fd(),
                libc::SOL_SOCKET,
                libc::SO_LINGER,
                (&linger as *const libc::linger).cast(),
                std::mem::size_of::<libc::linger>() as libc::socklen_t,
            )
        };
        assert_eq!(
            rc,
            0,
            "fake agent: SO_LINGER: {}",
            io::Error::last_os_error()
        );
        drop(self);
    }
}

impl Conn for UnixStream {
    fn prepare(&self, timeout: Duration) -> io::Result<()> {
        self.set_nonblocking(false)?;
        self.set_read_timeout(Some(timeout))?;
        self.set_write_timeout(Some(WRITE_TIMEOUT))
    }

    fn reset(self) {
        let _ = self.shutdown(Shutdown::Both);
    }
}

/// The accept loop: polls `accept` (non-blocking) until shutdown, one
/// thread per connection, then joins them all.
fn spawn_accept_loop<C: Conn>(
    shared: Arc<Shared>,
    behaviour: Behaviour,
    mut accept: impl FnMut() -> io::Result<C> + Send + 'static,
) -> JoinHandle<()> {
    thread::Builder::new()
        .name("fake-agent".to_owned())
        .spawn(move || {
            let mut handlers = Vec::new();
            while !shared.stopping() {
                match accept() {
                    Ok(conn) => {
                        shared.connections.fetch_add(1, Ordering::AcqRel);
                        let shared = shared.clone();
                        handlers.push(
                            thread::Builder::new()
                                .name("fake-agent-conn".to_owned())
                                .spawn(move || serve(conn, &shared, behaviour))
                                .expect("fake agent: spawning a connection thread"),
                        );
                    }
                    // WouldBlock: nobody waiting; anything else (EMFILE,
                    // ECONNABORTED...): try again later.
                    Err(_) => thread::sleep(POLL),
                }
            }
            let mut panicked = false;
            for handler in handlers {
                panicked |= handler.join().is_err();
            }
            assert!(!panicked, "fake agent: a connection thread panicked");
        })
        .expect("fake agent: spawning the accept thread")
}

/// Why reading stopped.
enum Stop {
    /// The peer closed (or broke) the connection.
    Closed,
    /// The agent is being dropped.
    Shutdown,
    /// The request is not HTTP this server understands.
    Malformed(String),
}

/// One connection, start to end.
fn serve<C: Conn>(mut conn: C, shared: &Shared, behaviour: Behaviour) {
    if conn.prepare(POLL).is_err() {
        return;
    }
    if behaviour == Behaviour::Reset {
        let mut a_little = [0u8; 16];
        let _ = read_some(&mut conn, shared, &mut a_little);
        conn.reset();
        return;
    }
    let mut pending = Vec::new();
    loop {
        let request = match read_request(&mut conn, shared, &mut pending) {
            Ok(r) => r,
            Err(Stop::Malformed(why)) => {
                let _ = respond(&mut conn, 400, &why);
                return;
            }
            Err(Stop::Closed | Stop::Shutdown) => return,
        };
        let close = request
            .header("Connection")
            .is_some_and(|v| v.eq_ignore_ascii_case("close"));
        shared
            .requests
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(request);
        match behaviour {
            Behaviour::Accept | Behaviour::Status(_) => {}
            Behaviour::NeverAnswer => {
                hold(&mut conn, shared);
                return;
            }
            Behaviour::AnswerAfter(delay) => {
                let until = Instant::now() + delay;
                while Instant::now() < until {
                    if shared.stopping() {
                        return;
                    }
                    thread::sleep(POLL.min(until.saturating_duration_since(Instant::now())));
                }
            }
            Behaviour::Reset | Behaviour::Refused => unreachable!("no such connection"),
        }
        let status = match behaviour {
            Behaviour::Status(code) => code,
            _ => 200,
        };
        if respond(&mut conn, status, &format!("{status}: fake agent")).is_err() || close {
            return;
        }
    }
}

/// Keeps the connection open, reading and discarding, until the peer
/// closes it or the agent is dropped.
fn hold<C: Conn>(conn: &mut C, shared: &Shared) {
    let mut sink = [0u8; 4096];
    while read_some(conn, shared, &mut sink).is_ok() {}
}

/// Reads what is there (at least one byte), waiting in [`POLL`] steps.
fn read_some<C: Conn>(conn: &mut C, shared: &Shared, buf: &mut [u8]) -> Result<usize, Stop> {
    loop {
        if shared.stopping() {
            return Err(Stop::Shutdown);
        }
        match conn.read(buf) {
            Ok(0) => return Err(Stop::Closed),
            Ok(n) => return Ok(n),
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::WouldBlock
                        | io::ErrorKind::TimedOut
                        | io::ErrorKind::Interrupted
                ) => {}
            Err(_) => return Err(Stop::Closed),
        }
    }
}

/// Appends one read's bytes to `pending`.
fn fill<C: Conn>(conn: &mut C, shared: &Shared, pending: &mut Vec<u8>) -> Result<(), Stop> {
    let mut buf = [0u8; 16 * 1024];
    let n = read_some(conn, shared, &mut buf)?;
    pending.extend_from_slice(&buf[..n]);
    Ok(())
}

/// Reads one whole request; bytes after it stay in `pending`.
fn read_request<C: Conn>(
    conn: &mut C,
    shared: &Shared,
    pending: &mut Vec<u8>,
) -> Result<Request, Stop> {
    let head_end = loop {
        if let Some(i) = find(pending, b"\r\n\r\n") {
            break i;
        }
        if pending.len() > MAX_HEAD {
            return Err(Stop::Malformed("request head too large".into()));
        }
        fill(conn, shared, pending)?;
    };
    let head = String::from_utf8(pending[..head_end].to_vec())
        .map_err(|_| Stop::Malformed("request head is not UTF-8".into()))?;
    pending.drain(..head_end + 4);
    let mut lines = head.split("\r\n");
    let request_line = lines.next().unwrap_or_default();
    let mut words = request_line.split(' ');
    let (Some(method), Some(path), Some(version), None) =
        (words.next(), words.next(), words.next(), words.next())
    else {
        return Err(Stop::Malformed(format!("request line {request_line:?}")));
    };
    if !version.starts_with("HTTP/1.") {
        return Err(Stop::Malformed(format!("version {version:?}")));
    }
    let headers = lines
        .map(|line| {
            line.split_once(':')
                .map(|(n, v)| (n.trim().to_owned(), v.trim().to_owned()))
                .ok_or_else(|| Stop::Malformed(format!("header line {line:?}")))
        })
        .collect::<Result<Vec<_>, _>>()?;
    let mut request = Request {
        method: method.to_owned(),
        url: format!("http://localhost{path}"),
        headers,
        body: Vec::new(),
    };
    if request
        .header("Expect")
        .is_some_and(|v| v.eq_ignore_ascii_case("100-continue"))
    {
        conn.write_all(b"HTTP/1.1 100 Continue\r\n\r\n")
            .map_err(|_| Stop::Closed)?;
    }
    let chunked = request
        .header("Transfer-Encoding")
        .is_some_and(|v| v.to_ascii_lowercase().contains("chunked"));
    if chunked {
        loop {
            match dechunk(pending) {
                Ok(Some((body, used))) => {
                    request.body = body;
                    pending.drain(..used);
                    break;
                }
                Ok(None) => fill(conn, shared, pending)?,
                Err(why) => return Err(Stop::Malformed(why)),
            }
        }
    } else {
        let length = match request.header("Content-Length") {
            None => 0,
            Some(v) => v
                .parse::<usize>()
                .map_err(|_| Stop::Malformed(format!("Content-Length {v:?}")))?,
        };
        while pending.len() < length {
            fill(conn, shared, pending)?;
        }
        request.body = pending.drain(..length).collect();
    }
    Ok(request)
}

/// A chunked body at the start of `bytes`: `Some((body, bytes used))` when
/// complete, `None` when more is needed.
fn dechunk(bytes: &[u8]) -> Result<Option<(Vec<u8>, usize)>, String> {
    let mut body = Vec::new();
    let mut pos = 0;
    loop {
        let Some(line_end) = find(&bytes[pos..], b"\r\n").map(|i| pos + i) else {
            return Ok(None);
        };
        let line = std::str::from_utf8(&bytes[pos..line_end])
            .map_err(|_| "chunk size line is not UTF-8".to_owned())?;
        let size_text = line.split(';').next().unwrap_or_default().trim();
        let size = usize::from_str_radix(size_text, 16)
            .map_err(|_| format!("chunk size {size_text:?}"))?;
        pos = line_end + 2;
        if size == 0 {
            // Trailers (none expected), then the empty line.
            loop {
                let Some(end) = find(&bytes[pos..], b"\r\n").map(|i| pos + i) else {
                    return Ok(None);
                };
                let empty = end == pos;
                pos = end + 2;
                if empty {
                    return Ok(Some((body, pos)));
                }
            }
        }
        if bytes.len() < pos + size + 2 {
            return Ok(None);
        }
        body.extend_from_slice(&bytes[pos..pos + size]);
        if &bytes[pos + size..pos + size + 2] != b"\r\n" {
            return Err("chunk not followed by CRLF".into());
        }
        pos += size + 2;
    }
}

/// Writes a response with a text body.
fn respond<C: Conn>(conn: &mut C, status: u16, body: &str) -> io::Result<()> {
    let reason = match status {
        200 => "OK",
        202 => "Accepted",
        400 => "Bad Request",
        403 => "Forbidden",
        404 => "Not Found",
        408 => "Request Timeout",
        413 => "Payload Too Large",
        429 => "Too Many Requests",
        500 => "Internal Server Error",
        502 => "Bad Gateway",
        503 => "Service Unavailable",
        504 => "Gateway Timeout",
        _ => "Whatever",
    };
    let response = format!(
        "HTTP/1.1 {status} {reason}\r\nContent-Type: text/plain\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    );
    conn.write_all(response.as_bytes())?;
    conn.flush()
}

/// The first `needle` in `haystack`.
fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}
