//! Arbitrary service, env, version, tags, times and files through the
//! upload's `event.json` and multipart form
//! ([`ferroprof::fuzzing::event_upload`]: the configuration `start()`
//! would resolve, as builder options or as `DD_*` variables, then the
//! uploader's builders).
//!
//! Input: an [`Input`] made by `arbitrary`.
//!
//! Checked, for every input the configuration accepts:
//!
//! - `event.json` is JSON: `attachments` the file names in order,
//!   `tags_profiler` the base tags then `profile_seq:<seq>`, containing
//!   `service:<service>`, every built-in tag, every user tag, and no user
//!   tag with a built-in key; `family` `native`, `version` `4`; `start`
//!   and `end` RFC 3339 with nanoseconds that read back as the input's
//!   times (clamped to 1970).
//! - The service, env and version are the input's, trimmed (blank ones
//!   from the environment are unset).
//! - The multipart body, collected from the form's stream, passes a strict
//!   parser ([`ferroprof::fuzzing::parse_multipart`]): `event` first
//!   (`event.json`, `application/json`, its bytes exactly), then one part
//!   per file (named and filed as the file, `application/octet-stream`,
//!   its bytes exactly, NUL, CR, LF and `--` included). The boundary is
//!   random per form, so no file can contain the delimiter but by a
//!   2^-256 chance.
//!
//! - `tags_profiler` split on `,` is `key:value` tags, each built-in key
//!   at most once, `service` exactly once ([`tags_are_well_formed`]): no
//!   value can smuggle in a tag of its own (`service:a,host:x`).
//!
//! A rejected input must be rejected for one of its tagging values, the
//! error naming it: `service`, `env`, `version` or `tags` as builder
//! options, `DD_SERVICE`, `DD_ENV`, `DD_VERSION` or `DD_TAGS` in the
//! environment.

use std::pin::pin;
use std::task::{Context, Poll, Waker};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use arbitrary::{Arbitrary, Unstructured};
use ferroprof::fuzzing::{
    event_upload, parse_multipart, EventInput, EventUpload, FILE_NAMES, HOSTNAME, RUNTIME_ID,
};
use ferroprof::Error;
use futures_core::Stream;
use serde_json::Value;

/// Tag keys ferroprof sets itself: the library's own list.
pub use ferroprof::fuzzing::BUILT_IN_TAG_KEYS;

/// One upload to build.
#[derive(Arbitrary, Debug, Clone)]
pub struct Input {
    /// Pass service, env, version and tags as `DD_*` variables.
    pub via_env: bool,
    /// The service.
    pub service: String,
    /// The environment.
    pub env: Option<String>,
    /// The version.
    pub version: Option<String>,
    /// User tags.
    pub tags: Vec<String>,
    /// `profile_seq`.
    pub seq: u64,
    /// The period's start: seconds from 1970 (negative: before) and
    /// nanoseconds (modulo 10^9).
    pub start: (i64, u32),
    /// The period's end.
    pub end: (i64, u32),
    /// Files: a name (an index into `FILE_NAMES`) and the bytes; at most 4.
    pub files: Vec<(u8, Vec<u8>)>,
}

/// The target.
pub fn run(data: &[u8]) {
    if let Ok(input) = Input::arbitrary_take_rest(Unstructured::new(data)) {
        check(input);
    }
}

/// Builds the upload of `input` and checks it.
pub fn check(input: Input) {
    let files: Vec<(&'static str, Vec<u8>)> = (input.files.iter().take(4))
        .map(|(i, bytes)| {
            (
                FILE_NAMES[usize::from(*i) % FILE_NAMES.len()],
                bytes.clone(),
            )
        })
        .collect();
    let (start, end) = (time(input.start), time(input.end));
    let result = event_upload(EventInput {
        service: input.service.clone(),
        env: input.env.clone(),
        version: input.version.clone(),
        tags: input.tags.clone(),
        via_env: input.via_env,
        seq: input.seq,
        start,
        end,
        files: files.clone(),
    });
    let upload = match result {
        Ok(upload) => upload,
        Err(e) => return check_rejection(&e, input.via_env),
    };
    check_config(&upload, &input);
    let tags = check_event(&upload, &files, input.seq, start, end);
    if let Err(e) = tags_are_well_formed(&tags, &upload.service) {
        panic!("tags_profiler {tags:?}: {e}");
    }
    check_body(upload, &files);
}

fn check_rejection(e: &Error, via_env: bool) {
    let shown = e.to_string();
    let name = match (e, via_env) {
        (Error::Env { variable, .. }, true) => *variable,
        (Error::Option { option, .. }, false) => *option,
        _ => panic!("rejected for something else than its tagging: {e:?}"),
    };
    let names = match via_env {
        true => ["DD_SERVICE", "DD_ENV", "DD_VERSION", "DD_TAGS"],
        false => ["service", "env", "version", "tags"],
    };
    assert!(names.contains(&name), "rejected for {name}: {e:?}");
    assert!(shown.contains(name), "{shown:?} does not name {name}");
}

/// The configuration is the input's.
fn check_config(upload: &EventUpload, input: &Input) {
    if input.via_env {
        let set = |v: &Option<String>| {
            (v.as_deref().map(str::trim))
                .filter(|v| !v.is_empty())
                .map(str::to_owned)
        };
        if let Some(service) = set(&Some(input.service.clone())) {
            assert_eq!(upload.service, service);
        } else {
            assert!(!upload.service.is_empty(), "the default service is empty");
        }
        // DD_ENV and DD_VERSION win; `env:` and `version:` tags fill in.
        if let Some(env) = set(&input.env) {
            assert_eq!(upload.env.as_ref(), Some(&env));
        }
        if let Some(version) = set(&input.version) {
            assert_eq!(upload.version.as_ref(), Some(&version));
        }
    } else {
        let trimmed = |v: &Option<String>| v.as_deref().map(|v| v.trim().to_owned());
        assert_eq!(upload.service, input.service.trim());
        if input.env.is_some() {
            assert_eq!(upload.env, trimmed(&input.env));
        }
        if input.version.is_some() {
            assert_eq!(upload.version, trimmed(&input.version));
        }
    }
    for tag in &upload.tags {
        let key = tag.split_once(':').map(|(k, _)| k);
        let key = key.unwrap_or_else(|| panic!("user tag {tag:?} is not key:value"));
        assert!(!BUILT_IN_TAG_KEYS.contains(&key), "user tag {tag:?}");
    }
}

/// Checks `event.json`; returns its `tags_profiler`.
fn check_event(
    upload: &EventUpload,
    files: &[(&str, Vec<u8>)],
    seq: u64,
    start: SystemTime,
    end: SystemTime,
) -> String {
    let event: Value = serde_json::from_slice(&upload.event)
        .unwrap_or_else(|e| panic!("event.json is not JSON ({e}): {:?}", upload.event));
    let names: Vec<&str> = files.iter().map(|(name, _)| *name).collect();
    assert_eq!(event["attachments"], serde_json::json!(names));
    assert_eq!(event["family"], "native");
    assert_eq!(event["version"], "4");
    assert!(event["internal"]["ferroprof_version"].is_string());
    for (field, t) in [("start", start), ("end", end)] {
        let text = event[field].as_str().expect("start and end are strings");
        let since = t.duration_since(UNIX_EPOCH).unwrap_or_default();
        assert_eq!(
            read_rfc3339(text),
            Some((i128::from(since.as_secs()), since.subsec_nanos())),
            "{field} {text:?} is not {t:?}"
        );
    }
    let tags = event["tags_profiler"]
        .as_str()
        .expect("tags_profiler is a string");
    assert_eq!(tags, format!("{},profile_seq:{seq}", upload.base_tags));
    assert!(
        tags.starts_with(&format!("service:{},", upload.service)),
        "{tags:?} does not start with the service {:?}",
        upload.service
    );
    let mut expected = vec![
        format!("host:{HOSTNAME}"),
        format!("runtime-id:{RUNTIME_ID}"),
        format!("process_id:{}", std::process::id()),
        "language:native".to_owned(),
        "runtime:rust".to_owned(),
    ];
    expected.extend(upload.env.iter().map(|e| format!("env:{e}")));
    expected.extend(upload.version.iter().map(|v| format!("version:{v}")));
    expected.extend(upload.tags.iter().cloned());
    let all = format!(",{tags},");
    for tag in expected {
        assert!(all.contains(&format!(",{tag},")), "{tags:?} lacks {tag:?}");
    }
    tags.to_owned()
}

/// The multipart body parses back into the event and the files.
fn check_body(upload: EventUpload, files: &[(&str, Vec<u8>)]) {
    let content_type = upload.content_type();
    let event = upload.event.clone();
    let body = body(upload);
    let parts = parse_multipart(&content_type, &body).unwrap_or_else(|e| {
        panic!(
            "malformed multipart body: {e}\n{}",
            String::from_utf8_lossy(&body)
        )
    });
    assert_eq!(parts.len(), 1 + files.len(), "parts");
    let expected = std::iter::once(("event", "event.json", "application/json", &event));
    let expected = expected.chain(
        (files.iter()).map(|(name, bytes)| (*name, *name, "application/octet-stream", bytes)),
    );
    for (i, (part, (name, file, mime, bytes))) in parts.iter().zip(expected).enumerate() {
        assert_eq!(part.name, name, "part {i}");
        assert_eq!(part.filename.as_deref(), Some(file), "part {i}");
        assert_eq!(part.content_type.as_deref(), Some(mime), "part {i}");
        assert!(part.body == *bytes, "part {i} ({name}): the bytes differ");
    }
}

/// The form's body, as reqwest would send it. Its parts are in memory, so
/// every chunk is ready: no runtime is needed.
fn body(upload: EventUpload) -> Vec<u8> {
    let mut stream = pin!(upload.form.into_stream());
    let mut cx = Context::from_waker(Waker::noop());
    let mut out = Vec::new();
    loop {
        match stream.as_mut().poll_next(&mut cx) {
            Poll::Ready(Some(Ok(chunk))) => out.extend_from_slice(&chunk),
            Poll::Ready(Some(Err(e))) => panic!("the form's body failed: {e}"),
            Poll::Ready(None) => return out,
            Poll::Pending => panic!("a form of in-memory parts was not ready"),
        }
    }
}

/// The input's time, if a `SystemTime` can hold it, else 1970.
fn time((secs, nanos): (i64, u32)) -> SystemTime {
    let d = Duration::new(secs.unsigned_abs(), nanos % 1_000_000_000);
    let t = match secs {
        0.. => UNIX_EPOCH.checked_add(d),
        _ => UNIX_EPOCH.checked_sub(d),
    };
    t.unwrap_or(UNIX_EPOCH)
}

/// `YYYY-MM-DDTHH:MM:SS.NNNNNNNNNZ` (at least 4 digits of year) as
/// seconds since 1970 and nanoseconds, if it is that and a valid date.
fn read_rfc3339(s: &str) -> Option<(i128, u32)> {
    let (date, clock) = s.strip_suffix('Z')?.split_once('T')?;
    let mut date = date.rsplitn(3, '-');
    let (d, m, y) = (date.next()?, date.next()?, date.next()?);
    let (hms, ns) = clock.split_once('.')?;
    let mut hms = hms.split(':');
    let (h, mi, sec) = (hms.next()?, hms.next()?, hms.next()?);
    let digits = |s: &str, n: usize| s.len() == n && s.bytes().all(|b| b.is_ascii_digit());
    if !(y.len() >= 4 && digits(y, y.len()) && digits(m, 2) && digits(d, 2))
        || !(digits(h, 2) && digits(mi, 2) && digits(sec, 2) && digits(ns, 9))
        || hms.next().is_some()
    {
        return None;
    }
    let num = |s: &str| s.parse::<i128>().ok();
    let (y, m, d) = (num(y)?, num(m)?, num(d)?);
    let (h, mi, sec) = (num(h)?, num(mi)?, num(sec)?);
    let month_days = [
        31,
        28 + i128::from(is_leap(y)),
        31,
        30,
        31,
        30,
        31,
        31,
        30,
        31,
        30,
        31,
    ];
    if !(1..=12).contains(&m) || !(1..=month_days[m as usize - 1]).contains(&d) {
        return None;
    }
    if h > 23 || mi > 59 || sec > 59 {
        return None;
    }
    let secs = days_from_civil(y, m, d) * 86_400 + h * 3600 + mi * 60 + sec;
    Some((secs, ns.parse().ok()?))
}

fn is_leap(y: i128) -> bool {
    y % 4 == 0 && (y % 100 != 0 || y % 400 == 0)
}

/// Days since 1970-01-01 of a proleptic Gregorian date (Howard Hinnant's
/// `days_from_civil`, the inverse of the crate's `civil_from_days`).
fn days_from_civil(y: i128, m: i128, d: i128) -> i128 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// `tags` split on `,` is `key:value` tags with non-empty keys and values,
/// built-in keys at most once each, and `service` exactly once, with the
/// value `service`.
pub fn tags_are_well_formed(tags: &str, service: &str) -> Result<(), String> {
    let mut seen: Vec<&str> = Vec::new();
    for tag in tags.split(',') {
        let (key, value) = (tag.split_once(':'))
            .filter(|(k, v)| !k.is_empty() && !v.is_empty())
            .ok_or_else(|| format!("{tag:?} is not key:value"))?;
        if BUILT_IN_TAG_KEYS.contains(&key) {
            if seen.contains(&key) {
                return Err(format!("{key} is given twice"));
            }
            seen.push(key);
        }
        if key == "service" && value != service {
            return Err(format!("the service is {value:?}, not {service:?}"));
        }
    }
    if !seen.contains(&"service") {
        return Err("no service tag".into());
    }
    Ok(())
}
