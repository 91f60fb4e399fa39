//! Configuration: the builder's options over the `DD_*` environment over
//! the defaults, validated once, in `start()`.
//!
//! Every variable of `docs/datadog-intake.md` is read here and nowhere else.
//! A value that does not parse is an [`Error::Env`] naming the variable and
//! the value (never a panic, never a silent fallback to the default); the
//! API key is the one value no error, log line or `Debug` output contains.
//! Reading goes through a lookup function rather than `std::env` directly so
//! tests can resolve configurations side by side without touching the
//! process environment.

use std::fmt;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use reqwest::Url;

use crate::{Error, ProfileType, StatsdClient};

/// The default agent host.
pub const DEFAULT_AGENT_HOST: &str = "localhost";
/// The default agent port.
pub const DEFAULT_AGENT_PORT: u16 = 8126;
/// The default Datadog site for agentless uploads.
pub const DEFAULT_SITE: &str = "datadoghq.com";
/// The default period between uploads.
pub const DEFAULT_PERIOD: Duration = Duration::from_secs(60);
/// The longest period accepted.
pub const MAX_PERIOD: Duration = Duration::from_secs(24 * 3600);
/// The longest upload timeout accepted.
pub const MAX_UPLOAD_TIMEOUT: Duration = Duration::from_secs(3600);
/// The default time limit of one upload attempt.
pub const DEFAULT_UPLOAD_TIMEOUT: Duration = Duration::from_secs(10);
/// The default CPU sampling rate, per second of CPU time of each thread.
pub const DEFAULT_CPU_PROFILE_RATE: u32 = 100;
/// The highest CPU sampling rate accepted.
pub const MAX_CPU_PROFILE_RATE: u32 = 10_000;
/// The default mean number of bytes between heap samples.
pub const DEFAULT_HEAP_SAMPLE_SIZE: u64 = ferroprof_alloc::DEFAULT_SAMPLE_INTERVAL;
/// The default deepest stack kept.
pub const DEFAULT_MAX_FRAMES: usize = ferroprof_alloc::DEFAULT_MAX_FRAMES;
/// The deepest stack that can be asked for.
pub const MAX_FRAMES_LIMIT: usize = ferroprof_alloc::MAX_FRAMES_LIMIT;
/// The path profiles are posted to on an agent.
pub const AGENT_PATH: &str = "/profiling/v1/input";

/// An API key: compared and sent, never shown.
#[derive(Clone, PartialEq, Eq)]
pub struct ApiKey(String);

impl ApiKey {
    /// The key, for the `DD-API-KEY` header only.
    pub(crate) fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for ApiKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("ApiKey(<redacted>)")
    }
}

/// Where uploads go.
#[derive(Clone, Debug)]
pub(crate) struct Endpoint {
    /// The URL posted to (for a Unix socket, `http://localhost/...`).
    pub url: Url,
    /// Connect through this Unix socket instead of TCP.
    pub uds: Option<PathBuf>,
    /// Sent as `DD-API-KEY` (agentless and explicit URLs only).
    pub api_key: Option<ApiKey>,
    /// An agent: a 404 means it is too old to accept profiles.
    pub is_agent: bool,
    /// Agentless intake.
    pub agentless: bool,
}

impl Endpoint {
    /// How the startup line and errors name the target.
    /// Without user name, password, query or fragment: logs and the
    /// startup line show it.
    pub fn describe(&self) -> String {
        match &self.uds {
            Some(path) => format!("unix://{}{}", path.display(), self.url.path()),
            None => {
                let mut url = self.url.clone();
                let _ = url.set_username("");
                let _ = url.set_password(None);
                url.set_query(None);
                url.set_fragment(None);
                url.to_string()
            }
        }
    }
}

/// What the builder was told; `None` is "from the environment, else the
/// default".
#[derive(Default)]
pub(crate) struct Options {
    pub api_key: Option<String>,
    pub agent_addr: Option<String>,
    pub agentless: Option<bool>,
    pub site: Option<String>,
    pub url: Option<String>,
    pub uds: Option<PathBuf>,
    pub http_client: Option<reqwest::Client>,
    pub delta_profiles: Option<bool>,
    pub service: Option<String>,
    pub env: Option<String>,
    pub version: Option<String>,
    pub tags: Vec<String>,
    pub hostname: Option<String>,
    pub log_startup: Option<bool>,
    pub period: Option<Duration>,
    pub profile_types: Option<Vec<ProfileType>>,
    pub cpu_profile_rate: Option<u32>,
    pub cpu_duration: Option<Duration>,
    pub upload_timeout: Option<Duration>,
    pub statsd: Option<Arc<dyn StatsdClient>>,
    pub output_dir: Option<PathBuf>,
    pub heap_sample_size: Option<u64>,
    pub max_frames: Option<usize>,
    pub enabled: Option<bool>,
    pub upload: Option<bool>,
}

impl fmt::Debug for Options {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Options")
            .field("api_key", &self.api_key.as_ref().map(|_| "<redacted>"))
            .field("agent_addr", &self.agent_addr)
            .field("agentless", &self.agentless)
            .field("site", &self.site)
            .field("url", &self.url)
            .field("uds", &self.uds)
            .field("service", &self.service)
            .field("env", &self.env)
            .field("version", &self.version)
            .field("tags", &self.tags)
            .field("period", &self.period)
            .field("profile_types", &self.profile_types)
            .field("output_dir", &self.output_dir)
            .finish_non_exhaustive()
    }
}

/// The configuration a profiler runs with.
#[derive(Clone)]
pub(crate) struct Config {
    pub endpoint: Endpoint,
    /// Upload at all (false: the output folder only).
    pub upload: bool,
    pub http_client: Option<reqwest::Client>,
    pub delta: bool,
    pub service: String,
    pub env: Option<String>,
    pub version: Option<String>,
    /// User tags (`DD_TAGS`, then the builder's), `key:value`, no built-in key.
    pub tags: Vec<String>,
    pub hostname: String,
    pub log_startup: bool,
    pub period: Duration,
    pub cpu: bool,
    pub heap: bool,
    pub cpu_profile_rate: u32,
    pub cpu_duration: Duration,
    pub upload_timeout: Duration,
    pub statsd: Option<Arc<dyn StatsdClient>>,
    pub output_dir: Option<PathBuf>,
    pub heap_sample_size: u64,
    pub max_frames: usize,
    /// Startup warnings (ignored tags), logged once the profiler starts.
    pub warnings: Vec<String>,
}

impl fmt::Debug for Config {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Config")
            .field("endpoint", &self.endpoint)
            .field("delta", &self.delta)
            .field("service", &self.service)
            .field("env", &self.env)
            .field("version", &self.version)
            .field("tags", &self.tags)
            .field("hostname", &self.hostname)
            .field("period", &self.period)
            .field("cpu", &self.cpu)
            .field("heap", &self.heap)
            .field("cpu_profile_rate", &self.cpu_profile_rate)
            .field("cpu_duration", &self.cpu_duration)
            .field("upload_timeout", &self.upload_timeout)
            .field("output_dir", &self.output_dir)
            .field("heap_sample_size", &self.heap_sample_size)
            .field("max_frames", &self.max_frames)
            .finish_non_exhaustive()
    }
}

/// The outcome of resolving: run with a configuration, or do nothing
/// because `DD_PROFILING_ENABLED` said so.
#[derive(Debug)]
pub(crate) enum Resolved {
    Enabled(Box<Config>),
    Disabled,
}

/// Tag keys ferroprof sets itself; a user tag with one of them is ignored
/// (with a startup warning), except `env` and `version`, which a user tag
/// supplies when `DD_ENV` / `DD_VERSION` and the builder do not.
pub(crate) const BUILT_IN_TAG_KEYS: [&str; 13] = [
    "service",
    "env",
    "version",
    "host",
    "runtime-id",
    "process_id",
    "profiler_version",
    "language",
    "runtime",
    "runtime_version",
    "runtime_os",
    "runtime_arch",
    "profile_seq",
];

/// Reads one variable: unset and empty are both "not set".
struct Env<'a> {
    lookup: &'a dyn Fn(&str) -> Option<String>,
}

impl Env<'_> {
    fn get(&self, name: &'static str) -> Option<(&'static str, String)> {
        (self.lookup)(name)
            .filter(|v| !v.trim().is_empty())
            .map(|v| (name, v))
    }

    fn string(&self, name: &'static str) -> Option<String> {
        self.get(name).map(|(_, v)| v.trim().to_owned())
    }

    fn bool(&self, name: &'static str) -> Result<Option<bool>, Error> {
        self.get(name)
            .map(|(n, v)| {
                parse_bool(&v).ok_or_else(|| env_error(n, &v, "is not a boolean (true or false)"))
            })
            .transpose()
    }

    fn number<T: std::str::FromStr>(
        &self,
        name: &'static str,
        what: &str,
    ) -> Result<Option<T>, Error> {
        self.get(name)
            .map(|(n, v)| v.trim().parse::<T>().map_err(|_| env_error(n, &v, what)))
            .transpose()
    }
}

fn env_error(variable: &'static str, value: &str, reason: &str) -> Error {
    Error::Env {
        variable,
        value: value.to_owned(),
        reason: reason.to_owned(),
    }
}

fn option_error(option: &'static str, value: impl fmt::Display, reason: &str) -> Error {
    Error::Option {
        option,
        value: value.to_string(),
        reason: reason.to_owned(),
    }
}

/// Resolves `options` over the environment read through `lookup`.
pub(crate) fn resolve(
    mut o: Options,
    lookup: &dyn Fn(&str) -> Option<String>,
) -> Result<Resolved, Error> {
    let env = Env { lookup };
    let enabled = match o.enabled {
        Some(e) => e,
        None => env.bool("DD_PROFILING_ENABLED")?.unwrap_or(true),
    };
    if !enabled {
        return Ok(Resolved::Disabled);
    }
    let mut warnings = Vec::new();

    // Tags: DD_TAGS first, then the builder's; env/version tags fill in.
    let mut tags = Vec::new();
    if let Some((n, v)) = env.get("DD_TAGS") {
        for tag in v.split([',', ' ']).map(str::trim).filter(|t| !t.is_empty()) {
            tags.push(check_tag(tag).map_err(|why| env_error(n, &v, &why))?);
        }
    }
    for tag in &o.tags {
        tags.push(check_tag(tag).map_err(|why| option_error("tags", tag, &why))?);
    }
    let mut env_name = tag_value(o.env.take(), "env", &env, "DD_ENV")?;
    let mut version = tag_value(o.version.take(), "version", &env, "DD_VERSION")?;
    let mut user_tags = Vec::new();
    for (key, value) in tags {
        match key.as_str() {
            "env" if env_name.is_none() => env_name = Some(value),
            "version" if version.is_none() => version = Some(value),
            k if BUILT_IN_TAG_KEYS.contains(&k) => warnings.push(format!(
                "tag {key}:{value} ignored: ferroprof sets {key} itself"
            )),
            _ => user_tags.push(format!("{key}:{value}")),
        }
    }

    let service = match tag_value(o.service.take(), "service", &env, "DD_SERVICE")? {
        Some(s) => s,
        None => default_service().replace(',', "_"),
    };
    let hostname = match o.hostname.take() {
        Some(h) if h.contains(',') || h.trim().is_empty() => {
            return Err(option_error("hostname", &h, "is empty or contains ','"))
        }
        Some(h) => h,
        None => hostname().replace(',', "_"),
    };

    let period = o.period.unwrap_or(DEFAULT_PERIOD);
    if period < Duration::from_millis(100) || period > MAX_PERIOD {
        return Err(option_error(
            "period",
            format!("{period:?}"),
            "is not between 100ms and 24h",
        ));
    }
    let upload_timeout = match o.upload_timeout {
        Some(t) if t.is_zero() || t > MAX_UPLOAD_TIMEOUT => {
            return Err(option_error(
                "upload_timeout",
                format!("{t:?}"),
                "must be more than 0 and at most 1h",
            ))
        }
        Some(t) => t,
        None => match env.get("DD_PROFILING_UPLOAD_TIMEOUT") {
            Some((n, v)) => match parse_duration(&v) {
                Some(t) if !t.is_zero() && t <= MAX_UPLOAD_TIMEOUT => t,
                Some(_) => return Err(env_error(n, &v, "must be more than 0 and at most 1h")),
                None => return Err(env_error(n, &v, "is not a duration (like 10s or 1500ms)")),
            },
            None => DEFAULT_UPLOAD_TIMEOUT,
        },
    };
    let delta = match o.delta_profiles {
        Some(d) => d,
        None => env.bool("DD_PROFILING_DELTA")?.unwrap_or(true),
    };
    let log_startup = match o.log_startup {
        Some(l) => l,
        None => env.bool("DD_TRACE_STARTUP_LOGS")?.unwrap_or(true),
    };
    let output_dir = o
        .output_dir
        .take()
        .or_else(|| env.string("DD_PROFILING_OUTPUT_DIR").map(PathBuf::from));
    let heap_sample_size = match o.heap_sample_size {
        Some(s) => s,
        None => env
            .number::<u64>(
                "DD_PROFILING_HEAP_SAMPLE_SIZE",
                "is not a number of bytes (0 turns heap sampling off)",
            )?
            .unwrap_or(DEFAULT_HEAP_SAMPLE_SIZE),
    };
    let max_frames = match o.max_frames {
        Some(m) if (1..=MAX_FRAMES_LIMIT).contains(&m) => m,
        Some(m) => {
            return Err(option_error(
                "max_frames",
                m,
                &format!("is not between 1 and {MAX_FRAMES_LIMIT}"),
            ))
        }
        None => match env.get("DD_PROFILING_MAX_FRAMES") {
            Some((n, v)) => match v.trim().parse::<usize>() {
                Ok(m) if (1..=MAX_FRAMES_LIMIT).contains(&m) => m,
                _ => {
                    return Err(env_error(
                        n,
                        &v,
                        &format!("is not a number between 1 and {MAX_FRAMES_LIMIT}"),
                    ))
                }
            },
            None => DEFAULT_MAX_FRAMES,
        },
    };

    let types = o
        .profile_types
        .take()
        .unwrap_or_else(|| vec![ProfileType::Cpu, ProfileType::Heap, ProfileType::Metrics]);
    let cpu = types.contains(&ProfileType::Cpu);
    // A sample size of 0 turns heap sampling, and so the heap profile, off.
    let heap = types.contains(&ProfileType::Heap) && heap_sample_size > 0;
    let cpu_profile_rate = o.cpu_profile_rate.unwrap_or(DEFAULT_CPU_PROFILE_RATE);
    if !(1..=MAX_CPU_PROFILE_RATE).contains(&cpu_profile_rate) {
        return Err(option_error(
            "cpu_profile_rate",
            cpu_profile_rate,
            &format!("is not between 1 and {MAX_CPU_PROFILE_RATE} Hz"),
        ));
    }
    let cpu_duration = o.cpu_duration.unwrap_or(period);
    if cpu_duration.is_zero() || cpu_duration > period {
        return Err(option_error(
            "cpu_duration",
            format!("{cpu_duration:?}"),
            &format!("must be more than 0 and at most the period ({period:?})"),
        ));
    }

    let endpoint = endpoint(&mut o, &env, &mut warnings)?;
    Ok(Resolved::Enabled(Box::new(Config {
        endpoint,
        upload: o.upload.unwrap_or(true),
        http_client: o.http_client.take(),
        delta,
        service,
        env: env_name,
        version,
        tags: user_tags,
        hostname,
        log_startup,
        period,
        cpu,
        heap,
        cpu_profile_rate,
        cpu_duration,
        upload_timeout,
        statsd: o.statsd.take(),
        output_dir,
        heap_sample_size,
        max_frames,
        warnings,
    })))
}

/// Chooses the upload target: explicit URL, else agentless, else the agent
/// (URL, socket, or host and port).
fn endpoint(o: &mut Options, env: &Env<'_>, warnings: &mut Vec<String>) -> Result<Endpoint, Error> {
    let agentless = match o.agentless {
        Some(a) => a,
        None => env.bool("DD_PROFILING_AGENTLESS")?.unwrap_or(false),
    };
    let api_key = match o.api_key.take() {
        Some(k) => Some(check_api_key(&k).ok_or(Error::ApiKey {
            variable: "api_key",
        })?),
        None => match env.get("DD_API_KEY") {
            Some((n, v)) => match check_api_key(&v) {
                Some(k) => Some(k),
                None if agentless => return Err(Error::ApiKey { variable: n }),
                // An agent setup that happens to have a malformed DD_API_KEY
                // around still starts: the agent never gets the key.
                None => {
                    warnings.push(format!("{n} is not a well-formed API key; it is not used"));
                    None
                }
            },
            None => None,
        },
    };

    let explicit = match o.url.take() {
        Some(u) => Some(("url", u)),
        None => env.get("DD_PROFILING_URL"),
    };
    if let Some((name, u)) = explicit {
        let url = parse_http_url(&u).ok_or_else(|| url_error(name, &u))?;
        return Ok(Endpoint {
            url,
            uds: None,
            api_key,
            is_agent: false,
            agentless: false,
        });
    }

    if agentless {
        let Some(api_key) = api_key else {
            return Err(Error::ApiKey {
                variable: "DD_API_KEY",
            });
        };
        let site = match o.site.take() {
            Some(s) => ("site", s),
            None => env
                .get("DD_SITE")
                .unwrap_or(("DD_SITE", DEFAULT_SITE.to_owned())),
        };
        let host = site.1.trim();
        let url = Url::parse(&format!("https://intake.profile.{host}/api/v2/profile"))
            .ok()
            .filter(|u| {
                u.host_str() == Some(&format!("intake.profile.{host}"))
                    && !host.contains(['/', ':', '@'])
            })
            .ok_or_else(|| match site.0 {
                "site" => option_error("site", host, "is not a Datadog site (like datadoghq.eu)"),
                n => env_error(n, host, "is not a Datadog site (like datadoghq.eu)"),
            })?;
        return Ok(Endpoint {
            url,
            uds: None,
            api_key: Some(api_key),
            is_agent: false,
            agentless: true,
        });
    }

    let agent = |url: Url, uds: Option<PathBuf>| Endpoint {
        url,
        uds,
        api_key: None,
        is_agent: true,
        agentless: false,
    };
    let local = || {
        Url::parse(&format!("http://{DEFAULT_AGENT_HOST}{AGENT_PATH}"))
            .expect("a constant URL parses")
    };
    if let Some(path) = o.uds.take() {
        return Ok(agent(local(), Some(path)));
    }
    if let Some(addr) = o.agent_addr.take() {
        let url = Url::parse(&format!("http://{addr}{AGENT_PATH}"))
            .ok()
            .filter(|u| u.host_str().is_some() && u.path() == AGENT_PATH)
            .ok_or_else(|| option_error("agent_addr", &addr, "is not a host:port address"))?;
        return Ok(agent(url, None));
    }
    if let Some((n, v)) = env.get("DD_TRACE_AGENT_URL") {
        let trimmed = v.trim();
        if let Some(path) = trimmed.strip_prefix("unix://") {
            if !path.starts_with('/') {
                return Err(env_error(
                    n,
                    &v,
                    "is not unix:// followed by an absolute socket path",
                ));
            }
            return Ok(agent(local(), Some(PathBuf::from(path))));
        }
        let mut url = parse_http_url(trimmed).ok_or_else(|| url_error(n, &v))?;
        let path = format!("{}{AGENT_PATH}", url.path().trim_end_matches('/'));
        url.set_path(&path);
        return Ok(agent(url, None));
    }
    let host = env
        .string("DD_AGENT_HOST")
        .unwrap_or_else(|| DEFAULT_AGENT_HOST.to_owned());
    let port = env
        .number::<u16>("DD_TRACE_AGENT_PORT", "is not a port number (1 to 65535)")?
        .unwrap_or(DEFAULT_AGENT_PORT);
    if port == 0 {
        return Err(env_error(
            "DD_TRACE_AGENT_PORT",
            "0",
            "is not a port number (1 to 65535)",
        ));
    }
    let bracketed = if host.contains(':') && !host.starts_with('[') {
        format!("[{host}]")
    } else {
        host.clone()
    };
    let url = Url::parse(&format!("http://{bracketed}:{port}{AGENT_PATH}"))
        .ok()
        .filter(|u| u.path() == AGENT_PATH && !host.contains(['/', '@', '?', '#']))
        .ok_or_else(|| env_error("DD_AGENT_HOST", &host, "is not a host name or IP address"))?;
    Ok(agent(url, None))
}

fn url_error(name: &'static str, value: &str) -> Error {
    let reason = "is not an http:// or https:// URL";
    match name {
        "url" => option_error("url", value, reason),
        n => env_error(
            n,
            value,
            if n == "DD_TRACE_AGENT_URL" {
                "is not an http://, https:// or unix:// URL"
            } else {
                reason
            },
        ),
    }
}

fn parse_http_url(s: &str) -> Option<Url> {
    Url::parse(s.trim()).ok().filter(|u| {
        matches!(u.scheme(), "http" | "https") && u.host_str().is_some_and(|h| !h.is_empty())
    })
}

/// A value that goes into a tag (`service`, `env`, `version`): from the
/// builder, else the environment; never empty, never with a `,` (which
/// would split it into tags of its own).
fn tag_value(
    builder: Option<String>,
    option: &'static str,
    env: &Env<'_>,
    variable: &'static str,
) -> Result<Option<String>, Error> {
    let (value, from_env) = match builder {
        Some(v) => (v.trim().to_owned(), false),
        None => match env.string(variable) {
            Some(v) => (v, true),
            None => return Ok(None),
        },
    };
    if value.is_empty() || value.contains(',') {
        let why = "is empty or contains ',' (tags are separated by commas)";
        return Err(if from_env {
            env_error(variable, &value, why)
        } else {
            option_error(option, &value, why)
        });
    }
    Ok(Some(value))
}

/// A well-formed Datadog API key: 32 lowercase letters and digits.
fn check_api_key(key: &str) -> Option<ApiKey> {
    let key = key.trim();
    (key.len() == 32
        && key
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit()))
    .then(|| ApiKey(key.to_owned()))
}

/// Splits a `key:value` tag, refusing an empty key or value.
fn check_tag(tag: &str) -> Result<(String, String), String> {
    let tag = tag.trim();
    match tag.split_once(':') {
        Some((k, v)) if !k.trim().is_empty() && !v.trim().is_empty() && !tag.contains(',') => {
            Ok((k.trim().to_owned(), v.trim().to_owned()))
        }
        _ => Err(format!("has the tag {tag:?}, which is not key:value")),
    }
}

/// Go's `strconv.ParseBool`: 1, t, T, TRUE, true, True and the false forms.
pub(crate) fn parse_bool(s: &str) -> Option<bool> {
    match s.trim() {
        "1" | "t" | "T" | "TRUE" | "true" | "True" => Some(true),
        "0" | "f" | "F" | "FALSE" | "false" | "False" => Some(false),
        _ => None,
    }
}

/// A Go duration (`time.ParseDuration`): a sequence of decimal numbers,
/// each with an optional fraction and a unit (`ns`, `us`, `µs`, `ms`, `s`,
/// `m`, `h`), like `10s`, `1.5s` or `1m30s`; `0` alone needs no unit.
/// Negative durations are `None` (no option here takes one).
pub(crate) fn parse_duration(s: &str) -> Option<Duration> {
    let s = s.trim();
    if s == "0" {
        return Some(Duration::ZERO);
    }
    let mut rest = s.strip_prefix('+').unwrap_or(s);
    if rest.is_empty() {
        return None;
    }
    let mut total: u128 = 0;
    while !rest.is_empty() {
        let digits = rest
            .find(|c: char| !c.is_ascii_digit() && c != '.')
            .unwrap_or(rest.len());
        let (number, tail) = rest.split_at(digits);
        let unit_len = tail
            .find(|c: char| c.is_ascii_digit() || c == '.')
            .unwrap_or(tail.len());
        let (unit, tail) = tail.split_at(unit_len);
        let nanos_per_unit: u128 = match unit {
            "ns" => 1,
            "us" | "µs" | "μs" => 1_000,
            "ms" => 1_000_000,
            "s" => 1_000_000_000,
            "m" => 60_000_000_000,
            "h" => 3_600_000_000_000,
            _ => return None,
        };
        let (whole, fraction) = number.split_once('.').unwrap_or((number, ""));
        if (whole.is_empty() && fraction.is_empty()) || fraction.contains('.') {
            return None;
        }
        let whole: u128 = if whole.is_empty() {
            0
        } else {
            whole.parse().ok()?
        };
        total = total.checked_add(whole.checked_mul(nanos_per_unit)?)?;
        let mut scale = nanos_per_unit;
        for digit in fraction.bytes() {
            scale /= 10;
            total = total.checked_add(u128::from(digit - b'0') * scale)?;
        }
        rest = tail;
    }
    let secs = u64::try_from(total / 1_000_000_000).ok()?;
    Some(Duration::new(secs, (total % 1_000_000_000) as u32))
}

/// The executable's file name: the service when none is configured.
fn default_service() -> String {
    std::env::current_exe()
        .ok()
        .and_then(|p| p.file_name().map(|n| n.to_string_lossy().into_owned()))
        .filter(|n| !n.is_empty())
        .unwrap_or_else(|| "rust-service".to_owned())
}

/// The host name from `gethostname`.
pub(crate) fn hostname() -> String {
    let mut buf = [0u8; 256];
    // SAFETY: the buffer is valid for writes of its length; gethostname
    // writes at most that many bytes.
    let rc = unsafe { libc::gethostname(buf.as_mut_ptr().cast(), buf.len()) };
    if rc != 0 {
        return "unknown".to_owned();
    }
    let end = buf.iter().position(|&b| b == 0).unwrap_or(buf.len());
    String::from_utf8_lossy(&buf[..end]).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn go_durations_parse() {
        let ms = Duration::from_millis;
        assert_eq!(parse_duration("10s"), Some(ms(10_000)));
        assert_eq!(parse_duration("1500ms"), Some(ms(1500)));
        assert_eq!(parse_duration("1.5s"), Some(ms(1500)));
        assert_eq!(parse_duration("1m30s"), Some(ms(90_000)));
        assert_eq!(parse_duration("2h"), Some(ms(7_200_000)));
        assert_eq!(parse_duration(".5s"), Some(ms(500)));
        assert_eq!(parse_duration("250us"), Some(Duration::from_micros(250)));
        assert_eq!(parse_duration("7ns"), Some(Duration::from_nanos(7)));
        assert_eq!(parse_duration("0"), Some(Duration::ZERO));
        for bad in [
            "",
            "banana",
            "10",
            "s",
            "1.2.3s",
            "-1s",
            "10 s",
            "1d",
            "99999999999999999999h",
        ] {
            assert_eq!(parse_duration(bad), None, "{bad:?}");
        }
    }

    fn resolve_env(o: Options, vars: &[(&str, &str)]) -> Config {
        let lookup = |k: &str| {
            vars.iter()
                .find(|(n, _)| *n == k)
                .map(|(_, v)| v.to_string())
        };
        match resolve(o, &lookup) {
            Ok(Resolved::Enabled(c)) => *c,
            other => panic!("{vars:?}: {other:?}"),
        }
    }

    const KEY: &str = "0123456789abcdef0123456789abcdef";

    #[test]
    fn the_agent_is_the_default_target() {
        let c = resolve_env(Options::default(), &[]);
        assert_eq!(
            c.endpoint.url.as_str(),
            "http://localhost:8126/profiling/v1/input"
        );
        assert!(c.endpoint.is_agent && c.endpoint.uds.is_none() && c.endpoint.api_key.is_none());
        assert_eq!(c.period, DEFAULT_PERIOD);
        assert_eq!(c.upload_timeout, DEFAULT_UPLOAD_TIMEOUT);
        assert_eq!(c.heap_sample_size, 524_288);
        assert_eq!(c.max_frames, 64);
        assert!(c.delta && c.log_startup && c.cpu && c.heap);
    }

    #[test]
    fn agent_host_port_and_url_choose_the_agent() {
        let c = resolve_env(
            Options::default(),
            &[
                ("DD_AGENT_HOST", "10.0.0.7"),
                ("DD_TRACE_AGENT_PORT", "9126"),
            ],
        );
        assert_eq!(
            c.endpoint.url.as_str(),
            "http://10.0.0.7:9126/profiling/v1/input"
        );
        let c = resolve_env(Options::default(), &[("DD_AGENT_HOST", "fd00::7")]);
        assert_eq!(
            c.endpoint.url.as_str(),
            "http://[fd00::7]:8126/profiling/v1/input"
        );
        // The URL wins over host and port, and keeps its own path prefix.
        let c = resolve_env(
            Options::default(),
            &[
                ("DD_AGENT_HOST", "ignored"),
                ("DD_TRACE_AGENT_URL", "https://agent.internal:8443/dd/"),
            ],
        );
        assert_eq!(
            c.endpoint.url.as_str(),
            "https://agent.internal:8443/dd/profiling/v1/input"
        );
        let c = resolve_env(
            Options::default(),
            &[("DD_TRACE_AGENT_URL", "unix:///var/run/datadog/apm.socket")],
        );
        assert_eq!(
            c.endpoint.uds.as_deref(),
            Some(std::path::Path::new("/var/run/datadog/apm.socket"))
        );
        assert_eq!(
            c.endpoint.url.as_str(),
            "http://localhost/profiling/v1/input"
        );
        // The builder wins over the environment.
        let o = Options {
            agent_addr: Some("127.0.0.1:1234".into()),
            ..Options::default()
        };
        let c = resolve_env(o, &[("DD_TRACE_AGENT_URL", "http://elsewhere:1")]);
        assert_eq!(
            c.endpoint.url.as_str(),
            "http://127.0.0.1:1234/profiling/v1/input"
        );
    }

    #[test]
    fn agentless_goes_to_the_intake_of_the_site_with_the_key() {
        let c = resolve_env(
            Options::default(),
            &[
                ("DD_PROFILING_AGENTLESS", "true"),
                ("DD_API_KEY", KEY),
                ("DD_SITE", "datadoghq.eu"),
            ],
        );
        assert_eq!(
            c.endpoint.url.as_str(),
            "https://intake.profile.datadoghq.eu/api/v2/profile"
        );
        assert_eq!(c.endpoint.api_key.as_ref().map(ApiKey::expose), Some(KEY));
        assert!(c.endpoint.agentless && !c.endpoint.is_agent);
        // An agent never gets the key, even when it is in the environment,
        // and a malformed one there is only a warning.
        let c = resolve_env(Options::default(), &[("DD_API_KEY", KEY)]);
        assert!(c.endpoint.api_key.is_none());
        let c = resolve_env(Options::default(), &[("DD_API_KEY", "nope")]);
        assert!(c.endpoint.api_key.is_none());
        assert!(c
            .warnings
            .iter()
            .any(|w| w.contains("DD_API_KEY") && !w.contains("nope")));
        // An explicit URL wins over everything, and carries the key.
        let c = resolve_env(
            Options::default(),
            &[
                ("DD_PROFILING_AGENTLESS", "true"),
                ("DD_API_KEY", KEY),
                ("DD_PROFILING_URL", "http://127.0.0.1:9/x"),
            ],
        );
        assert_eq!(c.endpoint.url.as_str(), "http://127.0.0.1:9/x");
        assert!(c.endpoint.api_key.is_some() && !c.endpoint.is_agent);
    }

    #[test]
    fn tags_merge_and_never_duplicate_built_in_keys() {
        let o = Options {
            tags: vec!["team:payments".into(), "host:spoofed".into()],
            ..Options::default()
        };
        let c = resolve_env(
            o,
            &[(
                "DD_TAGS",
                "region:eu, env:staging version:9 service:other,zone:a",
            )],
        );
        assert_eq!(c.tags, ["region:eu", "zone:a", "team:payments"]);
        // env and version from DD_TAGS fill in what DD_ENV / DD_VERSION do not.
        assert_eq!(c.env.as_deref(), Some("staging"));
        assert_eq!(c.version.as_deref(), Some("9"));
        assert_eq!(c.warnings.len(), 2, "{:?}", c.warnings);
        let c = resolve_env(
            Options::default(),
            &[("DD_TAGS", "env:staging"), ("DD_ENV", "prod")],
        );
        assert_eq!(c.env.as_deref(), Some("prod"));
        assert!(c.tags.is_empty());
    }

    #[test]
    fn the_builder_wins_over_the_environment_over_the_defaults() {
        let o = Options {
            service: Some("from-builder".into()),
            upload_timeout: Some(Duration::from_secs(3)),
            ..Options::default()
        };
        let c = resolve_env(
            o,
            &[
                ("DD_SERVICE", "from-env"),
                ("DD_PROFILING_UPLOAD_TIMEOUT", "7s"),
                ("DD_PROFILING_MAX_FRAMES", "32"),
                ("DD_PROFILING_HEAP_SAMPLE_SIZE", "0"),
                ("DD_PROFILING_DELTA", "false"),
            ],
        );
        assert_eq!(c.service, "from-builder");
        assert_eq!(c.upload_timeout, Duration::from_secs(3));
        assert_eq!(c.max_frames, 32);
        assert_eq!(c.heap_sample_size, 0);
        assert!(!c.heap, "a sample size of 0 turns the heap profile off");
        assert!(!c.delta);
    }

    #[test]
    fn go_booleans_parse() {
        assert_eq!(parse_bool("True"), Some(true));
        assert_eq!(parse_bool("0"), Some(false));
        assert_eq!(parse_bool("yes"), None);
    }
}
