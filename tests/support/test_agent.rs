//! Datadog's APM test agent (`ddapm-test-agent`, from PyPI) as the receiving
//! end of uploads: a test starts one with [`TestAgent::start`], points the
//! profiler at [`TestAgent::url`], and reads back with
//! [`TestAgent::requests`] every request the agent received, with its
//! headers and exact body, which [`Request::parts`] splits into its
//! `multipart/form-data` parts.
//!
//! Finding the agent: `./.ci/setup` installs a pinned version into a Python
//! venv at `<cargo target dir>/ddapm-venv`, and [`TestAgent::start`] runs
//! `<target>/ddapm-venv/bin/ddapm-test-agent`. The target directory is found
//! as `tests/support/pprof_tools.rs` finds it: the parent of
//! `CARGO_TARGET_TMPDIR`, else three levels above the test binary. So a
//! `CARGO_TARGET_DIR` used for the tests must also be set when running
//! `./.ci/setup`.
//!
//! Each agent gets free loopback ports (bound to port 0, then released) for
//! its APM server and for the OTLP HTTP and gRPC servers it also starts
//! (by default on the fixed ports 4318 and 4317, which would collide between
//! agents of tests running in parallel). It runs in
//! `<target>/ddapm-test-agent/`, its stdout and stderr going to
//! `agent-<port>.log` there; a start that fails panics with that log's tail.
//! `DD_TRACE_AGENT_URL` and `DD_AGENT_URL` are removed from its environment,
//! so it never forwards what it receives to a real agent. Dropping the
//! [`TestAgent`] kills the process.
//!
//! What the agent does, as checked against version 1.69.1:
//!
//! - `POST /profiling/v1/input` answers `200` (body `200: OK`) to any body at
//!   all: the agent validates nothing in profiles, not even the multipart
//!   framing; checking is the test's job. Other methods get `405`.
//! - `GET /test/session/requests` answers a JSON array, oldest request
//!   first, of the requests received on the endpoints it records
//!   (profiling, traces, telemetry, ...):
//!   `[{"headers": {"Host": "127.0.0.1:N", "Content-Type": "multipart/form-data; boundary=...", ...},
//!   "body": "<base64>", "url": "http://127.0.0.1:N/profiling/v1/input", "method": "POST"}]`.
//!   The headers are a JSON object, so of a header sent twice only one value
//!   survives. The body is what aiohttp read: de-chunked, and *decompressed*
//!   when the request had `Content-Encoding: gzip` (the header stays), so it
//!   is not always the bytes on the wire.
//! - No session token is needed. A request sent with an
//!   `X-Datadog-Test-Session-Token` header (or `?test_session_token=`) is
//!   left out of the token-less listing [`TestAgent::requests`] uses, and
//!   asking for an unknown token answers `400`.
//! - `GET /test/session/clear` forgets every request ([`TestAgent::clear`]).

// Each test binary uses its own part of this module.
#![allow(dead_code)]

use std::fs::{self, File};
use std::io::{self, Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::thread;
use std::time::{Duration, Instant};

/// What to do when the agent is missing or does not start.
const SETUP_HINT: &str = "run ./.ci/setup (installs ddapm-test-agent into <target>/ddapm-venv; \
     with the same CARGO_TARGET_DIR as the tests)";

/// How long [`TestAgent::start`] waits for the agent to answer.
const START_TIMEOUT: Duration = Duration::from_secs(30);

/// How many times [`TestAgent::start`] tries fresh ports when the agent
/// exits at once (another process may have taken a port it was given).
const START_ATTEMPTS: usize = 3;

/// Timeout of each read, write and connection of [`http_request`].
const IO_TIMEOUT: Duration = Duration::from_secs(30);

/// A running `ddapm-test-agent`, killed on drop.
#[derive(Debug)]
pub struct TestAgent {
    child: Child,
    port: u16,
    log: PathBuf,
}

impl TestAgent {
    /// Starts an agent on a free loopback port and waits, up to 30 s, until
    /// it answers `GET /test/session/requests`. Panics, with the tail of its
    /// log and the advice to run `./.ci/setup`, when the binary is missing
    /// or the agent never answers.
    pub fn start() -> TestAgent {
        let dir = super::target_dir();
        let exe = dir.join("ddapm-venv/bin/ddapm-test-agent");
        if !exe.is_file() {
            panic!("{} is missing: {SETUP_HINT}", exe.display());
        }
        let work = dir.join("ddapm-test-agent");
        fs::create_dir_all(&work).unwrap_or_else(|e| panic!("creating {}: {e}", work.display()));
        let mut attempt = 1;
        loop {
            let [port, otlp_http, otlp_grpc] = free_ports();
            let log = work.join(format!("agent-{port}.log"));
            let out =
                File::create(&log).unwrap_or_else(|e| panic!("creating {}: {e}", log.display()));
            let err = out
                .try_clone()
                .unwrap_or_else(|e| panic!("cloning {}: {e}", log.display()));
            let child = Command::new(&exe)
                .args(["--host", "127.0.0.1"])
                .args(["--port", &port.to_string()])
                .args(["--otlp-http-port", &otlp_http.to_string()])
                .args(["--otlp-grpc-port", &otlp_grpc.to_string()])
                .current_dir(&work)
                .env_remove("DD_TRACE_AGENT_URL")
                .env_remove("DD_AGENT_URL")
                .env("PYTHONUNBUFFERED", "1")
                .stdin(Stdio::null())
                .stdout(out)
                .stderr(err)
                .spawn()
                .unwrap_or_else(|e| panic!("starting {}: {e}; {SETUP_HINT}", exe.display()));
            // From here on, a panic drops (kills) the agent.
            let mut agent = TestAgent { child, port, log };
            match agent.wait_until_up() {
                Ok(()) => return agent,
                Err(exited) if exited && attempt < START_ATTEMPTS => attempt += 1,
                Err(exited) => panic!(
                    "ddapm-test-agent on port {port} {}; {SETUP_HINT}. The end of {}:\n{}",
                    if exited {
                        "exited"
                    } else {
                        "did not answer within 30 s"
                    },
                    agent.log.display(),
                    agent.log_tail(),
                ),
            }
        }
    }

    /// Polls `GET /test/session/requests` until it answers 200. `Err(true)`
    /// when the agent exited first, `Err(false)` on timeout.
    fn wait_until_up(&mut self) -> Result<(), bool> {
        let deadline = Instant::now() + START_TIMEOUT;
        loop {
            if let Ok(response) = self.get("/test/session/requests") {
                if response.status == 200 {
                    return Ok(());
                }
            }
            if let Ok(Some(_)) = self.child.try_wait() {
                return Err(true);
            }
            if Instant::now() > deadline {
                return Err(false);
            }
            thread::sleep(Duration::from_millis(50));
        }
    }

    /// The last 40 lines of the agent's log.
    fn log_tail(&self) -> String {
        let text = fs::read(&self.log)
            .map(|bytes| String::from_utf8_lossy(&bytes).into_owned())
            .unwrap_or_else(|e| format!("(cannot read the log: {e})"));
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(40)..].join("\n")
    }

    /// The agent's base URL, `http://127.0.0.1:PORT`, with no trailing slash.
    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// The agent's APM port, on 127.0.0.1.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// The agent's address.
    pub fn addr(&self) -> SocketAddr {
        SocketAddr::from((Ipv4Addr::LOCALHOST, self.port))
    }

    /// The agent's log file (its stdout and stderr).
    pub fn log_path(&self) -> &Path {
        &self.log
    }

    /// `GET path` on the agent.
    fn get(&self, path: &str) -> io::Result<HttpResponse> {
        http_request(self.addr(), "GET", path, &[], &[])
    }

    /// `POST path` with these extra headers and this body; panics when the
    /// exchange fails, not on an error status.
    pub fn post(&self, path: &str, headers: &[(&str, &str)], body: &[u8]) -> HttpResponse {
        http_request(self.addr(), "POST", path, headers, body)
            .unwrap_or_else(|e| panic!("POST {path} to the test agent: {e}"))
    }

    /// Every request the agent recorded (without a session token; see the
    /// module docs), oldest first. Panics when the agent does not answer
    /// 200 or its answer does not parse.
    pub fn requests(&self) -> Vec<Request> {
        let response = self
            .get("/test/session/requests")
            .unwrap_or_else(|e| panic!("GET /test/session/requests: {e}"));
        assert_eq!(
            response.status,
            200,
            "GET /test/session/requests: {}",
            String::from_utf8_lossy(&response.body)
        );
        let text = std::str::from_utf8(&response.body)
            .unwrap_or_else(|e| panic!("/test/session/requests is not UTF-8: {e}"));
        let json = Json::parse(text)
            .unwrap_or_else(|e| panic!("/test/session/requests: {e}; the answer:\n{text}"));
        let Json::Array(items) = json else {
            panic!("/test/session/requests is not an array:\n{text}");
        };
        items
            .iter()
            .map(|item| {
                Request::from_json(item)
                    .unwrap_or_else(|e| panic!("/test/session/requests: {e}; the answer:\n{text}"))
            })
            .collect()
    }

    /// [`requests`](Self::requests) once at least `n` were received; polls
    /// every 50 ms, and panics with what did arrive after `timeout`.
    pub fn wait_for_requests(&self, n: usize, timeout: Duration) -> Vec<Request> {
        let deadline = Instant::now() + timeout;
        loop {
            let requests = self.requests();
            if requests.len() >= n {
                return requests;
            }
            if Instant::now() > deadline {
                let seen: Vec<String> = requests
                    .iter()
                    .map(|r| format!("{} {}", r.method, r.url))
                    .collect();
                panic!(
                    "the test agent received {} requests in {timeout:?}, not {n}: {seen:?}",
                    requests.len()
                );
            }
            thread::sleep(Duration::from_millis(50));
        }
    }

    /// Makes the agent forget every request received so far.
    pub fn clear(&self) {
        let response = self
            .get("/test/session/clear")
            .unwrap_or_else(|e| panic!("GET /test/session/clear: {e}"));
        assert_eq!(response.status, 200, "GET /test/session/clear");
    }
}

impl Drop for TestAgent {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Three distinct loopback ports that were free a moment ago: all bound at
/// once, so they differ, then released for the agent.
fn free_ports() -> [u16; 3] {
    let listeners: Vec<TcpListener> = (0..3)
        .map(|_| {
            TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
                .unwrap_or_else(|e| panic!("binding 127.0.0.1:0: {e}"))
        })
        .collect();
    let port = |l: &TcpListener| l.local_addr().expect("a bound listener's address").port();
    [
        port(&listeners[0]),
        port(&listeners[1]),
        port(&listeners[2]),
    ]
}

/// A request the agent recorded.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Request {
    /// `POST`, ...
    pub method: String,
    /// The full URL as the agent saw it, `http://127.0.0.1:N/path?query`.
    pub url: String,
    /// The headers, in the order received; one per name (see the module
    /// docs).
    pub headers: Vec<(String, String)>,
    /// The body the agent read (see the module docs on encodings).
    pub body: Vec<u8>,
}

impl Request {
    /// One element of `/test/session/requests`.
    fn from_json(json: &Json) -> Result<Request, String> {
        let string = |key: &str| {
            json.get(key)
                .and_then(Json::as_str)
                .map(str::to_owned)
                .ok_or_else(|| format!("a request without a string {key:?}"))
        };
        let Some(Json::Object(fields)) = json.get("headers") else {
            return Err("a request without a \"headers\" object".into());
        };
        let headers = fields
            .iter()
            .map(|(name, value)| {
                value
                    .as_str()
                    .map(|value| (name.clone(), value.to_owned()))
                    .ok_or_else(|| format!("header {name:?} is not a string"))
            })
            .collect::<Result<_, _>>()?;
        Ok(Request {
            method: string("method")?,
            url: string("url")?,
            headers,
            body: base64_decode(&string("body")?)?,
        })
    }

    /// The URL's path, without scheme, host and query: `/profiling/v1/input`.
    pub fn path(&self) -> &str {
        let rest = self
            .url
            .split_once("://")
            .map_or(&*self.url, |(_, rest)| rest);
        let path = rest.find('/').map_or("", |i| &rest[i..]);
        path.split(['?', '#']).next().unwrap_or("")
    }

    /// The value of header `name`, compared case-insensitively.
    pub fn header(&self, name: &str) -> Option<&str> {
        find_header(&self.headers, name)
    }

    /// The body as `multipart/form-data`, split by the boundary of the
    /// `Content-Type` header. Panics, saying what is wrong, when the header
    /// is missing or not multipart, or the body is malformed (see
    /// [`parse_multipart`]).
    pub fn parts(&self) -> Vec<Part> {
        let content_type = self
            .header("Content-Type")
            .unwrap_or_else(|| panic!("{} {}: no Content-Type header", self.method, self.url));
        parse_multipart(content_type, &self.body).unwrap_or_else(|e| {
            panic!(
                "{} {}: malformed multipart body: {e}; Content-Type: {content_type}",
                self.method, self.url
            )
        })
    }
}

/// One part of a `multipart/form-data` body, and the parser: ferroprof's
/// own (`ferroprof::fuzzing`), the one its fuzz target and property tests
/// check, strict about framing (no preamble, no epilogue, CRLF lines).
pub use ferroprof::fuzzing::{parse_multipart, MultipartPart as Part};

/// The first value of header `name` (case-insensitive) in `headers`.
fn find_header<'a>(headers: &'a [(String, String)], name: &str) -> Option<&'a str> {
    headers
        .iter()
        .find(|(n, _)| n.eq_ignore_ascii_case(name))
        .map(|(_, v)| v.as_str())
}

/// The index of the first `needle` in `haystack` at or after `from`.
fn find(haystack: &[u8], needle: &[u8], from: usize) -> Option<usize> {
    haystack
        .get(from..)?
        .windows(needle.len())
        .position(|w| w == needle)
        .map(|i| i + from)
}

/// An HTTP response read by [`http_request`].
#[derive(Clone, Debug)]
pub struct HttpResponse {
    /// The status code.
    pub status: u16,
    /// The headers, in order.
    pub headers: Vec<(String, String)>,
    /// The body, de-chunked.
    pub body: Vec<u8>,
}

impl HttpResponse {
    /// The value of header `name`, compared case-insensitively.
    pub fn header(&self, name: &str) -> Option<&str> {
        find_header(&self.headers, name)
    }
}

/// One HTTP/1.1 exchange with `addr` over a new connection: sends `method
/// path` with `Host`, `Connection: close`, `Content-Length` (unless a GET
/// without a body) and `headers`, then reads the response to the end.
pub fn http_request(
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> io::Result<HttpResponse> {
    let mut stream = TcpStream::connect_timeout(&addr, IO_TIMEOUT)?;
    stream.set_read_timeout(Some(IO_TIMEOUT))?;
    stream.set_write_timeout(Some(IO_TIMEOUT))?;
    let mut head = format!("{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n");
    if method != "GET" || !body.is_empty() {
        head += &format!("Content-Length: {}\r\n", body.len());
    }
    for (name, value) in headers {
        head += &format!("{name}: {value}\r\n");
    }
    head += "\r\n";
    stream.write_all(head.as_bytes())?;
    stream.write_all(body)?;
    stream.flush()?;
    let mut raw = Vec::new();
    stream.read_to_end(&mut raw)?;
    parse_response(&raw).map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))
}

/// A whole HTTP/1.1 response, as read until the server closed.
fn parse_response(raw: &[u8]) -> Result<HttpResponse, String> {
    let end = find(raw, b"\r\n\r\n", 0).ok_or("no end of headers in the response")?;
    let head = std::str::from_utf8(&raw[..end]).map_err(|e| format!("response head: {e}"))?;
    let mut lines = head.split("\r\n");
    let status_line = lines.next().unwrap_or("");
    let status = status_line
        .strip_prefix("HTTP/1.")
        .and_then(|rest| rest.get(2..5))
        .and_then(|code| code.parse().ok())
        .ok_or_else(|| format!("bad status line {status_line:?}"))?;
    let headers = lines
        .map(|line| {
            line.split_once(':')
                .map(|(n, v)| (n.to_owned(), v.trim().to_owned()))
                .ok_or_else(|| format!("bad response header {line:?}"))
        })
        .collect::<Result<Vec<_>, _>>()?;
    let rest = &raw[end + 4..];
    let chunked = find_header(&headers, "Transfer-Encoding")
        .is_some_and(|te| te.to_ascii_lowercase().contains("chunked"));
    let body = if chunked {
        dechunk(rest)?
    } else if let Some(len) = find_header(&headers, "Content-Length") {
        let len: usize = len
            .parse()
            .map_err(|_| format!("bad Content-Length {len:?}"))?;
        rest.get(..len)
            .ok_or_else(|| format!("body of {} bytes, Content-Length {len}", rest.len()))?
            .to_vec()
    } else {
        rest.to_vec()
    };
    Ok(HttpResponse {
        status,
        headers,
        body,
    })
}

/// A chunked body's content.
fn dechunk(mut rest: &[u8]) -> Result<Vec<u8>, String> {
    let mut body = Vec::new();
    loop {
        let eol = find(rest, b"\r\n", 0).ok_or("chunk size line without CRLF")?;
        let line = String::from_utf8_lossy(&rest[..eol]);
        let size = line.split(';').next().unwrap_or("").trim();
        let size =
            usize::from_str_radix(size, 16).map_err(|_| format!("bad chunk size {line:?}"))?;
        rest = &rest[eol + 2..];
        if size == 0 {
            return Ok(body);
        }
        let chunk = rest.get(..size).ok_or("truncated chunk")?;
        body.extend_from_slice(chunk);
        rest = rest
            .get(size..)
            .and_then(|r| r.strip_prefix(b"\r\n"))
            .ok_or("chunk without CRLF")?;
    }
}

/// Standard base64 (RFC 4648, `+/`, `=` padding), as Python's
/// `base64.b64encode` writes it.
pub fn base64_decode(text: &str) -> Result<Vec<u8>, String> {
    let bytes = text.as_bytes();
    if !bytes.len().is_multiple_of(4) {
        return Err(format!(
            "base64 of length {} (not a multiple of 4)",
            bytes.len()
        ));
    }
    let value = |c: u8| -> Result<u32, String> {
        Ok(match c {
            b'A'..=b'Z' => c - b'A',
            b'a'..=b'z' => c - b'a' + 26,
            b'0'..=b'9' => c - b'0' + 52,
            b'+' => 62,
            b'/' => 63,
            _ => return Err(format!("{:?} is not a base64 digit", c as char)),
        } as u32)
    };
    let mut out = Vec::with_capacity(bytes.len() / 4 * 3);
    let groups = bytes.len() / 4;
    for (i, group) in bytes.chunks(4).enumerate() {
        let pad = group.iter().rev().take_while(|&&c| c == b'=').count();
        if pad > 2 || (pad > 0 && i + 1 != groups) {
            return Err("misplaced '=' in base64".into());
        }
        let mut n = 0;
        for &c in &group[..4 - pad] {
            n = (n << 6) | value(c)?;
        }
        n <<= 6 * pad as u32;
        out.extend_from_slice(&n.to_be_bytes()[1..4 - pad]);
    }
    Ok(out)
}

/// A JSON value, from [`Json::parse`].
#[derive(Clone, Debug, PartialEq)]
pub enum Json {
    /// `null`
    Null,
    /// `true` or `false`
    Bool(bool),
    /// A number, as an `f64`.
    Number(f64),
    /// A string, unescaped.
    String(String),
    /// An array.
    Array(Vec<Json>),
    /// An object's members, in order.
    Object(Vec<(String, Json)>),
}

impl Json {
    /// Parses one JSON document (RFC 8259), surrounded by whitespace at
    /// most.
    pub fn parse(text: &str) -> Result<Json, String> {
        let mut parser = JsonParser {
            bytes: text.as_bytes(),
            pos: 0,
        };
        let value = parser.value(0)?;
        parser.skip_ws();
        if parser.pos != parser.bytes.len() {
            return Err(parser.error("text after the JSON value"));
        }
        Ok(value)
    }

    /// The value of member `key` of an object.
    pub fn get(&self, key: &str) -> Option<&Json> {
        match self {
            Json::Object(members) => members.iter().find(|(k, _)| k == key).map(|(_, v)| v),
            _ => None,
        }
    }

    /// The string, if this is one.
    pub fn as_str(&self) -> Option<&str> {
        match self {
            Json::String(s) => Some(s),
            _ => None,
        }
    }
}

/// [`Json::parse`]'s state.
struct JsonParser<'a> {
    bytes: &'a [u8],
    pos: usize,
}

impl JsonParser<'_> {
    fn error(&self, what: &str) -> String {
        format!("JSON, byte {}: {what}", self.pos)
    }

    fn skip_ws(&mut self) {
        while matches!(self.bytes.get(self.pos), Some(b' ' | b'\t' | b'\n' | b'\r')) {
            self.pos += 1;
        }
    }

    fn eat(&mut self, byte: u8) -> bool {
        self.skip_ws();
        let found = self.bytes.get(self.pos) == Some(&byte);
        if found {
            self.pos += 1;
        }
        found
    }

    fn value(&mut self, depth: usize) -> Result<Json, String> {
        if depth > 128 {
            return Err(self.error("nested too deep"));
        }
        self.skip_ws();
        match self.bytes.get(self.pos) {
            None => Err(self.error("unexpected end")),
            Some(b'{') => {
                self.pos += 1;
                let mut members = Vec::new();
                if self.eat(b'}') {
                    return Ok(Json::Object(members));
                }
                loop {
                    self.skip_ws();
                    if self.bytes.get(self.pos) != Some(&b'"') {
                        return Err(self.error("expected a member name"));
                    }
                    let key = self.string()?;
                    if !self.eat(b':') {
                        return Err(self.error("expected ':'"));
                    }
                    members.push((key, self.value(depth + 1)?));
                    if self.eat(b'}') {
                        return Ok(Json::Object(members));
                    }
                    if !self.eat(b',') {
                        return Err(self.error("expected ',' or '}'"));
                    }
                }
            }
            Some(b'[') => {
                self.pos += 1;
                let mut items = Vec::new();
                if self.eat(b']') {
                    return Ok(Json::Array(items));
                }
                loop {
                    items.push(self.value(depth + 1)?);
                    if self.eat(b']') {
                        return Ok(Json::Array(items));
                    }
                    if !self.eat(b',') {
                        return Err(self.error("expected ',' or ']'"));
                    }
                }
            }
            Some(b'"') => Ok(Json::String(self.string()?)),
            Some(b't') => self.literal("true", Json::Bool(true)),
            Some(b'f') => self.literal("false", Json::Bool(false)),
            Some(b'n') => self.literal("null", Json::Null),
            Some(b'-' | b'0'..=b'9') => self.number(),
            Some(_) => Err(self.error("unexpected character")),
        }
    }

    fn literal(&mut self, word: &str, value: Json) -> Result<Json, String> {
        if self.bytes[self.pos..].starts_with(word.as_bytes()) {
            self.pos += word.len();
            Ok(value)
        } else {
            Err(self.error(&format!("expected {word}")))
        }
    }

    fn number(&mut self) -> Result<Json, String> {
        let start = self.pos;
        let digits = |p: &mut Self| {
            let from = p.pos;
            while p.bytes.get(p.pos).is_some_and(u8::is_ascii_digit) {
                p.pos += 1;
            }
            p.pos > from
        };
        if self.bytes.get(self.pos) == Some(&b'-') {
            self.pos += 1;
        }
        if self.bytes.get(self.pos) == Some(&b'0') {
            self.pos += 1;
        } else if !digits(self) {
            return Err(self.error("expected digits"));
        }
        if self.bytes.get(self.pos) == Some(&b'.') {
            self.pos += 1;
            if !digits(self) {
                return Err(self.error("expected digits after '.'"));
            }
        }
        if matches!(self.bytes.get(self.pos), Some(b'e' | b'E')) {
            self.pos += 1;
            if matches!(self.bytes.get(self.pos), Some(b'+' | b'-')) {
                self.pos += 1;
            }
            if !digits(self) {
                return Err(self.error("expected exponent digits"));
            }
        }
        let text = std::str::from_utf8(&self.bytes[start..self.pos]).expect("ASCII");
        text.parse()
            .map(Json::Number)
            .map_err(|e| self.error(&format!("number {text:?}: {e}")))
    }

    /// A string, the opening quote at `pos`.
    fn string(&mut self) -> Result<String, String> {
        self.pos += 1;
        let mut out = String::new();
        loop {
            let start = self.pos;
            while !matches!(
                self.bytes.get(self.pos),
                None | Some(b'"' | b'\\' | 0..=0x1f)
            ) {
                self.pos += 1;
            }
            // The input is a &str and we stopped at ASCII: a char boundary.
            out += std::str::from_utf8(&self.bytes[start..self.pos]).expect("UTF-8");
            match self.bytes.get(self.pos) {
                None => return Err(self.error("unterminated string")),
                Some(b'"') => {
                    self.pos += 1;
                    return Ok(out);
                }
                Some(b'\\') => {
                    self.pos += 1;
                    let escape = self.bytes.get(self.pos).copied();
                    self.pos += 1;
                    out.push(match escape {
                        Some(b'"') => '"',
                        Some(b'\\') => '\\',
                        Some(b'/') => '/',
                        Some(b'b') => '\u{8}',
                        Some(b'f') => '\u{c}',
                        Some(b'n') => '\n',
                        Some(b'r') => '\r',
                        Some(b't') => '\t',
                        Some(b'u') => self.unicode_escape()?,
                        _ => return Err(self.error("bad escape")),
                    });
                }
                Some(_) => return Err(self.error("control character in a string")),
            }
        }
    }

    /// The char of a `\uXXXX` escape (a surrogate pair takes two), `pos`
    /// just after the `u`.
    fn unicode_escape(&mut self) -> Result<char, String> {
        let first = self.hex4()?;
        let code = if (0xd800..0xdc00).contains(&first) {
            if !self.bytes[self.pos..].starts_with(b"\\u") {
                return Err(self.error("lone high surrogate"));
            }
            self.pos += 2;
            let second = self.hex4()?;
            if !(0xdc00..0xe000).contains(&second) {
                return Err(self.error("bad low surrogate"));
            }
            0x10000 + ((first - 0xd800) << 10) + (second - 0xdc00)
        } else {
            first
        };
        char::from_u32(code).ok_or_else(|| self.error("lone low surrogate"))
    }

    fn hex4(&mut self) -> Result<u32, String> {
        let hex = self
            .bytes
            .get(self.pos..self.pos + 4)
            .filter(|h| h.iter().all(u8::is_ascii_hexdigit))
            .and_then(|h| std::str::from_utf8(h).ok())
            .and_then(|h| u32::from_str_radix(h, 16).ok())
            .ok_or_else(|| self.error("expected 4 hex digits"))?;
        self.pos += 4;
        Ok(hex)
    }
}
