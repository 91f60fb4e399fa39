//! A hidden API for ferroprof's fuzz targets (`fuzz/`) and nothing else.
//!
//! Not part of the public API and not covered by semver: it may change or
//! vanish in any release. It exposes, as thin wrappers, the crate-private
//! pieces that read input from outside the process and so need fuzzing:
//! configuration resolution over an arbitrary environment
//! ([`resolve_env`]), the `event.json` and multipart builders over arbitrary
//! tags and files ([`event_upload`]), a protobuf decode that skips the
//! reference checks ([`decode_unchecked`], to feed [`Delta`](crate::pprof::Delta)
//! the malformed profiles it promises to survive) and the cgroup parser
//! ([`container_id`]). It also holds a strict `multipart/form-data` parser
//! ([`parse_multipart`]) to check the uploads' framing against.
//!
//! Nothing here starts a profiler, spawns a thread or touches the process
//! environment.

use std::io::Read;
use std::time::SystemTime;

use prost::Message;

use crate::config::{self, Options, Resolved};
use crate::export::{event, Batch};
use crate::pprof::Profile;
use crate::Error;

/// Tag keys ferroprof sets itself; a user tag with one of these keys is
/// ignored (the configuration's own list, for the fuzz targets' checks).
pub const BUILT_IN_TAG_KEYS: [&str; 13] = config::BUILT_IN_TAG_KEYS;

/// Every environment variable configuration resolution reads (those of
/// `docs/datadog-intake.md`, plus `DD_PROFILING_URL`).
pub const ENV_VARIABLES: [&str; 18] = [
    "DD_PROFILING_ENABLED",
    "DD_SERVICE",
    "DD_ENV",
    "DD_VERSION",
    "DD_TAGS",
    "DD_AGENT_HOST",
    "DD_TRACE_AGENT_PORT",
    "DD_TRACE_AGENT_URL",
    "DD_API_KEY",
    "DD_SITE",
    "DD_PROFILING_AGENTLESS",
    "DD_PROFILING_URL",
    "DD_PROFILING_UPLOAD_TIMEOUT",
    "DD_PROFILING_DELTA",
    "DD_PROFILING_OUTPUT_DIR",
    "DD_TRACE_STARTUP_LOGS",
    "DD_PROFILING_HEAP_SAMPLE_SIZE",
    "DD_PROFILING_MAX_FRAMES",
];

/// Resolves a configuration with no builder options over the environment
/// read through `lookup`, as `start()` would, without starting anything.
///
/// Returns `"disabled"` when `DD_PROFILING_ENABLED` turns profiling off,
/// else the configuration's `Debug` followed by its startup warnings:
/// text that must never contain the API key.
pub fn resolve_env(lookup: &dyn Fn(&str) -> Option<String>) -> Result<String, Error> {
    Ok(match config::resolve(Options::default(), lookup)? {
        Resolved::Disabled => "disabled".to_owned(),
        Resolved::Enabled(c) => format!("{c:?}; warnings: {:?}", c.warnings),
    })
}

/// Decodes a pprof protobuf (gzip-compressed or not) without the reference
/// checks of [`decode`](crate::pprof::decode): string indexes, ids and value
/// counts may dangle. `None` when the bytes are not gzip or protobuf, or
/// inflate to more than `limit` bytes.
pub fn decode_unchecked(bytes: &[u8], limit: u64) -> Option<Profile> {
    let inflated;
    let raw = if bytes.starts_with(&[0x1f, 0x8b]) {
        let mut out = Vec::new();
        flate2::read::GzDecoder::new(bytes)
            .take(limit.saturating_add(1))
            .read_to_end(&mut out)
            .ok()?;
        inflated = out;
        &inflated[..]
    } else {
        bytes
    };
    if raw.len() as u64 > limit {
        return None;
    }
    Profile::decode(raw).ok()
}

/// The uncompressed protobuf of `profile` (what
/// [`encode`](crate::pprof::encode) gzips), for writing seed inputs.
pub fn encode_raw(profile: &Profile) -> Vec<u8> {
    profile.encode_to_vec()
}

/// The file names a batch can carry, in the order the profiler writes them.
pub const FILE_NAMES: [&str; 4] = [
    "cpu.pprof",
    "delta-heap.pprof",
    "heap.pprof",
    "metrics.json",
];

/// The `runtime-id` tag of every [`event_upload`]: fixed, so that runs
/// repeat exactly.
pub const RUNTIME_ID: &str = "00000000-0000-4000-8000-000000000000";

/// The host name every [`event_upload`] configures.
pub const HOSTNAME: &str = "fuzz";

/// What to build an upload from: unified service tagging and one batch.
#[derive(Clone, Debug)]
pub struct EventInput {
    /// The service name.
    pub service: String,
    /// The environment, if any.
    pub env: Option<String>,
    /// The version, if any.
    pub version: Option<String>,
    /// User tags, each meant to be `key:value`.
    pub tags: Vec<String>,
    /// Pass the above as `DD_SERVICE`, `DD_ENV`, `DD_VERSION` and `DD_TAGS`
    /// (tags joined with `,`) rather than as builder options.
    pub via_env: bool,
    /// The batch's `profile_seq`.
    pub seq: u64,
    /// When the batch's period began.
    pub start: SystemTime,
    /// When it ended.
    pub end: SystemTime,
    /// The batch's files: a name of [`FILE_NAMES`] and the bytes.
    pub files: Vec<(&'static str, Vec<u8>)>,
}

/// An upload as the profiler would send it, and the configuration it came
/// from.
#[derive(Debug)]
pub struct EventUpload {
    /// The service as configured (the builder's or the environment's,
    /// trimmed, else the executable's name).
    pub service: String,
    /// The environment as configured.
    pub env: Option<String>,
    /// The version as configured.
    pub version: Option<String>,
    /// The user tags as configured (`key:value`, no built-in key).
    pub tags: Vec<String>,
    /// The tags every batch carries, but `profile_seq`, joined with `,`.
    pub base_tags: String,
    /// `event.json`.
    pub event: Vec<u8>,
    /// The multipart form of the request: `event` first, then the files.
    pub form: reqwest::multipart::Form,
}

impl EventUpload {
    /// The request's `Content-Type` header, as reqwest sets it.
    pub fn content_type(&self) -> String {
        format!("multipart/form-data; boundary={}", self.form.boundary())
    }
}

/// Resolves the configuration `start()` would for `input`'s service, env,
/// version and tags (host name [`HOSTNAME`], nothing else set), then builds
/// the batch's `event.json` and multipart form as the uploader does.
///
/// An error is what `start()` would have returned: the service, env,
/// version or a tag was refused.
pub fn event_upload(input: EventInput) -> Result<EventUpload, Error> {
    let EventInput {
        service,
        env,
        version,
        tags,
        via_env,
        seq,
        start,
        end,
        files,
    } = input;
    let hostname = Some(HOSTNAME.to_owned());
    let (options, vars) = if via_env {
        let vars = [
            ("DD_SERVICE", Some(service)),
            ("DD_ENV", env),
            ("DD_VERSION", version),
            ("DD_TAGS", Some(tags.join(","))),
        ];
        let options = Options {
            hostname,
            ..Options::default()
        };
        (options, Vec::from(vars))
    } else {
        let options = Options {
            service: Some(service),
            env,
            version,
            tags,
            hostname,
            ..Options::default()
        };
        (options, Vec::new())
    };
    let lookup = |name: &str| {
        vars.iter()
            .find(|(n, _)| *n == name)
            .and_then(|(_, v)| v.clone())
    };
    let config = match config::resolve(options, &lookup)? {
        Resolved::Enabled(config) => config,
        Resolved::Disabled => unreachable!("DD_PROFILING_ENABLED is never set here"),
    };
    let batch = Batch {
        seq,
        start,
        end,
        files,
    };
    let base_tags = event::base_tags(&config, RUNTIME_ID);
    let event = event::event_json(&batch, &base_tags);
    let form = event::form(&batch, event.clone());
    Ok(EventUpload {
        service: config.service.clone(),
        env: config.env.clone(),
        version: config.version.clone(),
        tags: config.tags.clone(),
        base_tags,
        event,
        form,
    })
}

/// The container id that a `/proc/self/cgroup` with this text names.
pub fn container_id(cgroup: &str) -> Option<String> {
    event::container_id_from_cgroup(cgroup)
}

/// One part of a `multipart/form-data` body.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MultipartPart {
    /// The `name` of its `Content-Disposition: form-data`.
    pub name: String,
    /// The `filename` of its `Content-Disposition`, if any.
    pub filename: Option<String>,
    /// Its `Content-Type` header, if any.
    pub content_type: Option<String>,
    /// All its headers, in order, values trimmed.
    pub headers: Vec<(String, String)>,
    /// Its content, byte for byte.
    pub body: Vec<u8>,
}

impl MultipartPart {
    /// The value of header `name`, compared case-insensitively (a part
    /// with two headers of one name was refused by the parser).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

/// Splits a `multipart/form-data` body (RFC 7578, RFC 2046 section 5.1.1)
/// sent with the header `Content-Type: content_type`.
///
/// Stricter than RFC 2046, to catch a sender's mistakes rather than forgive
/// them: the body starts with the first boundary line (no preamble) and
/// ends with the close delimiter and one CRLF (no epilogue); lines end in
/// CRLF; the CRLF before each delimiter belongs to the delimiter, not to
/// the content; each part has a `Content-Disposition: form-data` with a
/// `name`. Content may hold any bytes, CR, LF and `--` included, as long as
/// it does not hold the delimiter. The error says what is wrong and where.
pub fn parse_multipart(content_type: &str, body: &[u8]) -> Result<Vec<MultipartPart>, String> {
    let (mime, params) = parse_header_value(content_type)?;
    if !mime.eq_ignore_ascii_case("multipart/form-data") {
        return Err(format!("Content-Type is {mime:?}, not multipart/form-data"));
    }
    let boundary = param(&params, "boundary").ok_or("Content-Type has no boundary parameter")?;
    let boundary_chars = |c: char| c.is_ascii_alphanumeric() || "'()+_,-./:=? ".contains(c);
    if boundary.is_empty()
        || boundary.len() > 70
        || boundary.ends_with(' ')
        || !boundary.chars().all(boundary_chars)
    {
        return Err(format!(
            "boundary {boundary:?} is not 1 to 70 characters of RFC 2046's bchars"
        ));
    }
    let dash_boundary = format!("--{boundary}").into_bytes();
    let delimiter = [b"\r\n".as_slice(), &dash_boundary].concat();
    if !body.starts_with(&dash_boundary) {
        return Err(format!("the body does not start with \"--{boundary}\""));
    }
    let mut pos = dash_boundary.len();
    let mut parts = Vec::new();
    loop {
        // Just after a delimiter: "--" closes, else CRLF and a part.
        let rest = &body[pos..];
        if let Some(after) = rest.strip_prefix(b"--") {
            if after != b"\r\n" {
                return Err(format!(
                    "byte {pos}: the close delimiter is followed by {:?}, not one CRLF",
                    String::from_utf8_lossy(&after[..after.len().min(16)])
                ));
            }
            if parts.is_empty() {
                return Err("the body has no part".to_owned());
            }
            return Ok(parts);
        }
        if !rest.starts_with(b"\r\n") {
            return Err(format!(
                "byte {pos}: boundary line of part {} not followed by CRLF or \"--\" but {:?}",
                parts.len(),
                String::from_utf8_lossy(&rest[..rest.len().min(16)])
            ));
        }
        pos += 2;
        let end = find(body, &delimiter, pos).ok_or_else(|| {
            format!(
                "part {} (from byte {pos}) is not ended by a \"\\r\\n--{boundary}\" line",
                parts.len()
            )
        })?;
        parts.push(
            parse_part(&body[pos..end])
                .map_err(|e| format!("part {} (bytes {pos}..{end}): {e}", parts.len()))?,
        );
        pos = end + delimiter.len();
    }
}

/// One part between two delimiters: header lines, an empty line, content.
fn parse_part(bytes: &[u8]) -> Result<MultipartPart, String> {
    let end = find(bytes, b"\r\n\r\n", 0).ok_or("no empty line (CRLF CRLF) after the headers")?;
    let (head, body) = (&bytes[..end], &bytes[end + 4..]);
    let head = std::str::from_utf8(head).map_err(|e| format!("headers are not UTF-8: {e}"))?;
    let mut headers = Vec::new();
    for line in head.split("\r\n") {
        if line.contains(['\r', '\n']) {
            return Err(format!("header line {line:?} has a bare CR or LF"));
        }
        let (name, value) = line
            .split_once(':')
            .filter(|(name, _)| {
                !name.is_empty()
                    && name
                        .bytes()
                        .all(|b| b.is_ascii_graphic() && !b"()<>@,;:\\\"/[]?={}".contains(&b))
            })
            .ok_or_else(|| format!("malformed header line {line:?}"))?;
        headers.push((name.to_owned(), value.trim().to_owned()));
    }
    let header = |name: &str| {
        let mut values = headers.iter().filter(|(n, _)| n.eq_ignore_ascii_case(name));
        match (values.next(), values.next()) {
            (_, Some(_)) => Err(format!("two {name} headers")),
            (value, None) => Ok(value.map(|(_, v)| v.clone())),
        }
    };
    let disposition = header("Content-Disposition")?.ok_or("no Content-Disposition header")?;
    let content_type = header("Content-Type")?;
    let (kind, params) = parse_header_value(&disposition)?;
    if !kind.eq_ignore_ascii_case("form-data") {
        return Err(format!("Content-Disposition is {kind:?}, not form-data"));
    }
    let name = param(&params, "name")
        .ok_or_else(|| format!("Content-Disposition {disposition:?} has no name"))?
        .to_owned();
    Ok(MultipartPart {
        name,
        filename: param(&params, "filename").map(str::to_owned),
        content_type,
        headers,
        body: body.to_vec(),
    })
}

/// `value; key=token; key="quoted \"string\""` as the value and its
/// parameters (keys lowercased). A parameter given twice is an error.
fn parse_header_value(s: &str) -> Result<(String, Vec<(String, String)>), String> {
    let mut chars = s.chars().peekable();
    let mut value = String::new();
    while let Some(c) = chars.next_if(|&c| c != ';') {
        value.push(c);
    }
    let mut params: Vec<(String, String)> = Vec::new();
    while chars.next() == Some(';') {
        let mut key = String::new();
        while let Some(c) = chars.next_if(|&c| c != '=' && c != ';') {
            key.push(c);
        }
        let key = key.trim().to_ascii_lowercase();
        if chars.next_if_eq(&'=').is_none() || key.is_empty() {
            return Err(format!(
                "parameter {key:?} without a name or value in {s:?}"
            ));
        }
        while chars.next_if(|&c| c == ' ' || c == '\t').is_some() {}
        let mut val = String::new();
        if chars.next_if_eq(&'"').is_some() {
            loop {
                match chars.next() {
                    Some('"') => break,
                    Some('\\') => val.push(chars.next().ok_or("a quoted string ends in '\\'")?),
                    Some(c) => val.push(c),
                    None => return Err(format!("unterminated quoted string in {s:?}")),
                }
            }
            while chars.next_if(|&c| c == ' ' || c == '\t').is_some() {}
            if chars.peek().is_some_and(|&c| c != ';') {
                return Err(format!("text after the quoted value of {key:?} in {s:?}"));
            }
        } else {
            while let Some(c) = chars.next_if(|&c| c != ';') {
                val.push(c);
            }
            val = val.trim().to_owned();
        }
        if param(&params, &key).is_some() {
            return Err(format!("parameter {key:?} given twice in {s:?}"));
        }
        params.push((key, val));
    }
    Ok((value.trim().to_owned(), params))
}

/// The value of parameter `key` (lowercase).
fn param<'a>(params: &'a [(String, String)], key: &str) -> Option<&'a str> {
    params
        .iter()
        .find(|(k, _)| k == key)
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn multipart_parser_takes_a_well_formed_body_and_refuses_damage() {
        let ct = "multipart/form-data; boundary=b0";
        let body = b"--b0\r\nContent-Disposition: form-data; name=\"event\"; filename=\"e.json\"\r\n\
                     Content-Type: application/json\r\n\r\n{}\r\n\
                     --b0\r\nContent-Disposition: form-data; name=\"x\"\r\n\r\n\r\n--\r\n--b0--\r\n";
        let parts = parse_multipart(ct, body).unwrap();
        assert_eq!(parts.len(), 2);
        assert_eq!(parts[0].name, "event");
        assert_eq!(parts[0].filename.as_deref(), Some("e.json"));
        assert_eq!(parts[0].content_type.as_deref(), Some("application/json"));
        assert_eq!(parts[0].body, b"{}");
        assert_eq!(parts[1].body, b"\r\n--");
        let cut = &body[..body.len() - 2];
        assert!(parse_multipart(ct, cut).is_err(), "no CRLF after the close");
        assert!(parse_multipart(ct, &body[1..]).is_err(), "a preamble");
        assert!(parse_multipart("text/plain; boundary=b0", body).is_err());
        assert!(parse_multipart("multipart/form-data", body).is_err());
        let unnamed = b"--b0\r\nContent-Disposition: form-data\r\n\r\nx\r\n--b0--\r\n";
        assert!(parse_multipart(ct, unnamed).is_err());
    }

    #[test]
    fn an_upload_parses_back_into_its_parts() {
        let input = EventInput {
            service: "checkout".into(),
            env: Some("prod".into()),
            version: None,
            tags: vec!["team:payments".into()],
            via_env: false,
            seq: 3,
            start: SystemTime::UNIX_EPOCH,
            end: SystemTime::UNIX_EPOCH,
            files: vec![("cpu.pprof", vec![0, 13, 10, 45, 45])],
        };
        let upload = event_upload(input).unwrap();
        assert!(upload.base_tags.starts_with("service:checkout,host:fuzz,"));
        let event: serde_json::Value = serde_json::from_slice(&upload.event).unwrap();
        assert_eq!(event["attachments"], serde_json::json!(["cpu.pprof"]));
        assert!(upload.content_type().contains(upload.form.boundary()));
    }

    #[test]
    fn resolve_env_hides_the_api_key() {
        let key = "0123456789abcdef0123456789abcdef";
        let vars = [
            ("DD_API_KEY", key),
            ("DD_PROFILING_AGENTLESS", "true"),
            ("DD_SITE", "datadoghq.eu"),
        ];
        let lookup = |n: &str| vars.iter().find(|v| v.0 == n).map(|v| v.1.to_owned());
        let out = resolve_env(&lookup).unwrap();
        assert!(out.contains("intake.profile.datadoghq.eu") && !out.contains(key));
    }
}
