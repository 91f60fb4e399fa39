//! What an upload says about itself: the tags, `event.json` (version 4),
//! the multipart parts, and the timestamps in the formats Datadog and the
//! output folder use. Everything here is pure (no I/O but reading
//! `/proc/self/cgroup` once), so the tests can check it field by field.

use std::time::{SystemTime, UNIX_EPOCH};

use super::Batch;
use crate::config::Config;

/// The crate's version, sent as `profiler_version` and in headers.
pub(crate) const VERSION: &str = env!("CARGO_PKG_VERSION");
/// The rustc that built the crate (from `build.rs`).
pub(crate) const RUSTC_VERSION: &str = env!("FERROPROF_RUSTC_VERSION");

/// `runtime_arch`.
pub(crate) const ARCH: &str = std::env::consts::ARCH;

/// The tags every batch carries, but `profile_seq`, joined with `,`.
pub(crate) fn base_tags(config: &Config, runtime_id: &str) -> String {
    let mut tags = vec![
        format!("service:{}", config.service),
        format!("host:{}", config.hostname),
        format!("runtime-id:{runtime_id}"),
        format!("process_id:{}", std::process::id()),
        format!("profiler_version:{VERSION}"),
        "language:native".to_owned(),
        "runtime:rust".to_owned(),
        format!("runtime_version:{RUSTC_VERSION}"),
        format!("runtime_os:{}", std::env::consts::OS),
        format!("runtime_arch:{ARCH}"),
    ];
    if let Some(env) = &config.env {
        tags.push(format!("env:{env}"));
    }
    if let Some(version) = &config.version {
        tags.push(format!("version:{version}"));
    }
    tags.extend(config.tags.iter().cloned());
    tags.join(",")
}

/// `event.json` for `batch`.
pub(crate) fn event_json(batch: &Batch, base_tags: &str) -> Vec<u8> {
    let attachments: Vec<&str> = batch.files.iter().map(|(name, _)| *name).collect();
    let event = serde_json::json!({
        "attachments": attachments,
        "tags_profiler": format!("{base_tags},profile_seq:{}", batch.seq),
        "start": rfc3339(batch.start),
        "end": rfc3339(batch.end),
        "family": "native",
        "version": "4",
        "internal": { "ferroprof_version": VERSION },
    });
    serde_json::to_vec(&event).expect("a JSON object of strings serializes")
}

/// The multipart form of one upload: `event` first, then one part per file.
pub(crate) fn form(batch: &Batch, event: Vec<u8>) -> reqwest::multipart::Form {
    use reqwest::multipart::{Form, Part};
    let part = |bytes: Vec<u8>, file: &'static str, mime: &str| {
        Part::bytes(bytes)
            .file_name(file)
            .mime_str(mime)
            .expect("a constant MIME type parses")
    };
    let mut form = Form::new().part("event", part(event, "event.json", "application/json"));
    for (name, bytes) in &batch.files {
        form = form.part(*name, part(bytes.clone(), name, "application/octet-stream"));
    }
    form
}

/// Days since 1970-01-01 to (year, month, day), proleptic Gregorian (Howard
/// Hinnant's `civil_from_days`).
fn civil_from_days(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let month = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let year = yoe + era * 400 + i64::from(month <= 2);
    (year, month, day)
}

/// UTC calendar fields of `t`: (year, month, day, hour, minute, second,
/// nanosecond). Times before 1970 are clamped to 1970.
fn utc(t: SystemTime) -> (i64, u32, u32, u32, u32, u32, u32) {
    let since = t.duration_since(UNIX_EPOCH).unwrap_or_default();
    let secs = since.as_secs() as i64;
    let (y, mo, d) = civil_from_days(secs.div_euclid(86_400));
    let rem = secs.rem_euclid(86_400) as u32;
    (
        y,
        mo,
        d,
        rem / 3600,
        rem / 60 % 60,
        rem % 60,
        since.subsec_nanos(),
    )
}

/// RFC 3339 with nanoseconds, UTC: `2026-11-25T20:12:20.123456789Z`.
pub(crate) fn rfc3339(t: SystemTime) -> String {
    let (y, mo, d, h, mi, s, ns) = utc(t);
    format!("{y:04}-{mo:02}-{d:02}T{h:02}:{mi:02}:{s:02}.{ns:09}Z")
}

/// The output folder's name for a batch ending at `t`: `20060102T150405Z`.
pub(crate) fn folder_stamp(t: SystemTime) -> String {
    let (y, mo, d, h, mi, s, _) = utc(t);
    format!("{y:04}{mo:02}{d:02}T{h:02}{mi:02}{s:02}Z")
}

/// A random (version 4) UUID: the process's `runtime-id`.
pub(crate) fn uuid_v4() -> String {
    let mut b = random_bytes();
    b[6] = (b[6] & 0x0f) | 0x40;
    b[8] = (b[8] & 0x3f) | 0x80;
    let hex: String = b.iter().map(|x| format!("{x:02x}")).collect();
    format!(
        "{}-{}-{}-{}-{}",
        &hex[..8],
        &hex[8..12],
        &hex[12..16],
        &hex[16..20],
        &hex[20..]
    )
}

/// 16 bytes from the kernel's random source (Linux); if that fails, or
/// elsewhere, from the clock and the process id, hashed with std's
/// randomly keyed hasher.
pub(crate) fn random_bytes() -> [u8; 16] {
    let mut b = [0u8; 16];
    #[cfg(target_os = "linux")]
    {
        // SAFETY: the buffer is valid for writes of its length.
        let n = unsafe { libc::getrandom(b.as_mut_ptr().cast(), b.len(), 0) };
        if n == b.len() as isize {
            return b;
        }
    }
    use std::hash::BuildHasher;
    let state = std::collections::hash_map::RandomState::new();
    for (i, chunk) in b.chunks_mut(8).enumerate() {
        let h = state.hash_one((SystemTime::now(), std::process::id(), i));
        chunk.copy_from_slice(&h.to_le_bytes());
    }
    b
}

/// The container this process runs in, from `/proc/self/cgroup`.
pub(crate) fn container_id() -> Option<String> {
    container_id_from_cgroup(&std::fs::read_to_string("/proc/self/cgroup").ok()?)
}

/// The container id named by a cgroup file: the last path component of a
/// line, less a `docker-`/`cri-containerd-`-style prefix and a `.scope`
/// suffix, when it is a 64-hex-digit id, a UUID, or an ECS task id
/// (32 hex digits, `-`, digits).
pub(crate) fn container_id_from_cgroup(cgroup: &str) -> Option<String> {
    let hex = |s: &str| {
        s.bytes()
            .all(|c| c.is_ascii_hexdigit() && !c.is_ascii_uppercase())
    };
    let is_id = |s: &str| {
        let uuid = s.len() == 36
            && s.split('-').map(str::len).eq([8, 4, 4, 4, 12])
            && s.split('-').all(hex);
        let ecs = s.split_once('-').is_some_and(|(a, b)| {
            a.len() == 32 && hex(a) && !b.is_empty() && b.bytes().all(|c| c.is_ascii_digit())
        });
        (s.len() == 64 && hex(s)) || uuid || ecs
    };
    for line in cgroup.lines() {
        let Some(path) = line.splitn(3, ':').nth(2) else {
            continue;
        };
        let last = path.rsplit('/').next().unwrap_or("");
        let last = last.strip_suffix(".scope").unwrap_or(last);
        if is_id(last) {
            return Some(last.to_owned());
        }
        if let Some((_, id)) = last.rsplit_once('-') {
            if id.len() == 64 && hex(id) {
                return Some(id.to_owned());
            }
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn timestamps_are_utc() {
        // 2026-11-25T20:12:20.123456789Z
        let t = UNIX_EPOCH + Duration::new(1_795_637_540, 123_456_789);
        assert_eq!(rfc3339(t), "2026-11-25T20:12:20.123456789Z");
        assert_eq!(folder_stamp(t), "20261125T201220Z");
        assert_eq!(rfc3339(UNIX_EPOCH), "1970-01-01T00:00:00.000000000Z");
        // A leap day.
        let leap = UNIX_EPOCH + Duration::from_secs(951_782_400);
        assert_eq!(folder_stamp(leap), "20000229T000000Z");
    }

    #[test]
    fn uuids_are_version_4() {
        let a = uuid_v4();
        assert_eq!(a.len(), 36);
        assert_eq!(&a[14..15], "4");
        assert!(matches!(&a[19..20], "8" | "9" | "a" | "b"), "{a}");
        assert_ne!(a, uuid_v4());
    }

    #[test]
    fn container_ids_come_from_cgroups() {
        let docker = "0::/system.slice/docker-3726184226f5d3147c25fdeab5b60097e378e8a720503a5e19ecfdf29f869860.scope\n";
        assert_eq!(
            container_id_from_cgroup(docker).as_deref(),
            Some("3726184226f5d3147c25fdeab5b60097e378e8a720503a5e19ecfdf29f869860")
        );
        let plain = "12:cpu,cpuacct:/docker/3726184226f5d3147c25fdeab5b60097e378e8a720503a5e19ecfdf29f869860\n";
        assert!(container_id_from_cgroup(plain).is_some());
        let ecs = "9:perf_event:/ecs/task/34dc0b5e626f2c5c4c5170e34b10e765-1234567890\n";
        assert_eq!(
            container_id_from_cgroup(ecs).as_deref(),
            Some("34dc0b5e626f2c5c4c5170e34b10e765-1234567890")
        );
        let uuid = "1:name=systemd:/kubepods/pod/5c2a6d13-4c8f-4b6e-9b0e-2c3d4e5f6a7b\n";
        assert!(container_id_from_cgroup(uuid).is_some());
        assert_eq!(
            container_id_from_cgroup("0::/user.slice/user-1000.slice/session-2.scope\n"),
            None
        );
        assert_eq!(container_id_from_cgroup("0::/\n"), None);
    }
}
