//! Every `DD_*` variable that can be malformed is refused by `start()` with
//! an error naming the variable and the value (never a panic, never a
//! silent default), and a refused configuration starts nothing: no test
//! here ever gets as far as starting a profiler, so they run in parallel.

use std::collections::HashMap;
use std::time::Duration;

use ferroprof::{Error, Profiler};

/// `start()` over exactly these variables, which must be refused.
fn refused(vars: &[(&str, &str)]) -> Error {
    let env: HashMap<String, String> = vars
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    // No builder option: each variable is read.
    match Profiler::builder().start_with_env(&|k| env.get(k).cloned()) {
        Ok(p) => panic!("{vars:?} was accepted: {p:?}"),
        Err(e) => e,
    }
}

/// The error names `variable` and `value`, in its fields and its message.
#[track_caller]
fn assert_names(e: &Error, variable: &str, value: &str, reason: &str) {
    match e {
        Error::Env {
            variable: v,
            value: got,
            reason: why,
        } => {
            assert_eq!(*v, variable, "{e}");
            assert_eq!(got, value, "{e}");
            assert!(why.contains(reason), "{e}: reason should say {reason:?}");
        }
        other => panic!("expected an Env error for {variable}, got {other:?}"),
    }
    let message = e.to_string();
    assert!(
        message.starts_with(&format!("{variable}={value:?}")),
        "{message}"
    );
}

#[test]
fn upload_timeout_must_be_a_positive_duration() {
    let e = refused(&[("DD_PROFILING_UPLOAD_TIMEOUT", "banana")]);
    assert_names(
        &e,
        "DD_PROFILING_UPLOAD_TIMEOUT",
        "banana",
        "is not a duration",
    );
    assert_eq!(
        e.to_string(),
        "DD_PROFILING_UPLOAD_TIMEOUT=\"banana\" is not a duration (like 10s or 1500ms)"
    );
    for bad in ["10", "-1s", "1.2.3s", "5 parsecs"] {
        let e = refused(&[("DD_PROFILING_UPLOAD_TIMEOUT", bad)]);
        assert_names(&e, "DD_PROFILING_UPLOAD_TIMEOUT", bad, "is not a duration");
    }
    for out_of_range in ["0", "0s", "0ms", "2h", "3000000000000000h"] {
        let e = refused(&[("DD_PROFILING_UPLOAD_TIMEOUT", out_of_range)]);
        assert_names(
            &e,
            "DD_PROFILING_UPLOAD_TIMEOUT",
            out_of_range,
            "must be more than 0 and at most 1h",
        );
    }
    // Digits enough to overflow any integer are still just "not a duration".
    let huge = "340282366920938463463374607431.9s";
    let e = refused(&[("DD_PROFILING_UPLOAD_TIMEOUT", huge)]);
    assert_names(&e, "DD_PROFILING_UPLOAD_TIMEOUT", huge, "is not a duration");
}

#[test]
fn booleans_must_be_booleans() {
    for variable in [
        "DD_PROFILING_ENABLED",
        "DD_PROFILING_DELTA",
        "DD_PROFILING_AGENTLESS",
        "DD_TRACE_STARTUP_LOGS",
    ] {
        for bad in ["yes", "on", "2", "tru"] {
            let e = refused(&[(variable, bad)]);
            assert_names(&e, variable, bad, "is not a boolean");
        }
    }
}

#[test]
fn the_agent_port_must_be_a_port() {
    for bad in ["0", "65536", "-1", "eighty", "8126/tcp"] {
        let e = refused(&[("DD_TRACE_AGENT_PORT", bad)]);
        assert_names(&e, "DD_TRACE_AGENT_PORT", bad, "is not a port number");
    }
}

#[test]
fn the_agent_host_must_be_a_host() {
    for bad in ["agent/path", "user@agent", "a b"] {
        let e = refused(&[("DD_AGENT_HOST", bad)]);
        assert_names(&e, "DD_AGENT_HOST", bad, "is not a host name");
    }
}

#[test]
fn the_agent_url_must_be_http_https_or_unix() {
    for bad in [
        "localhost:8126",
        "ftp://agent:21",
        "unix://relative.sock",
        "http://",
    ] {
        let e = refused(&[("DD_TRACE_AGENT_URL", bad)]);
        assert_names(&e, "DD_TRACE_AGENT_URL", bad, "unix://");
    }
}

#[test]
fn the_profiling_url_must_be_http_or_https() {
    for bad in ["intake.example.com/api", "file:///tmp/x", "https://"] {
        let e = refused(&[("DD_PROFILING_URL", bad)]);
        assert_names(
            &e,
            "DD_PROFILING_URL",
            bad,
            "is not an http:// or https:// URL",
        );
    }
}

#[test]
fn tags_must_be_key_value() {
    for bad in ["team", "team:payments,oops", ":payments", "team:"] {
        let e = refused(&[("DD_TAGS", bad)]);
        assert_names(&e, "DD_TAGS", bad, "is not key:value");
    }
}

#[test]
fn service_env_and_version_cannot_smuggle_tags() {
    for variable in ["DD_SERVICE", "DD_ENV", "DD_VERSION"] {
        let bad = "prod,service:evil";
        let e = refused(&[(variable, bad)]);
        assert_names(&e, variable, bad, "contains ','");
    }
}

#[test]
fn heap_sample_size_must_be_a_number_of_bytes() {
    for bad in ["512k", "-1", "lots", "1e6"] {
        let e = refused(&[("DD_PROFILING_HEAP_SAMPLE_SIZE", bad)]);
        assert_names(
            &e,
            "DD_PROFILING_HEAP_SAMPLE_SIZE",
            bad,
            "is not a number of bytes",
        );
    }
}

#[test]
fn max_frames_must_be_within_the_limit() {
    for bad in ["0", "129", "many", "-3"] {
        let e = refused(&[("DD_PROFILING_MAX_FRAMES", bad)]);
        assert_names(&e, "DD_PROFILING_MAX_FRAMES", bad, "between 1 and 128");
    }
}

#[test]
fn the_site_must_be_a_site() {
    let key = ("DD_API_KEY", "0123456789abcdef0123456789abcdef");
    for bad in [
        "datadoghq.com/evil",
        "user@datadoghq.com",
        "datadoghq.com:443",
    ] {
        let e = refused(&[("DD_PROFILING_AGENTLESS", "true"), key, ("DD_SITE", bad)]);
        assert_names(&e, "DD_SITE", bad, "is not a Datadog site");
    }
}

#[test]
fn agentless_needs_a_well_formed_api_key_and_never_shows_it() {
    let missing = refused(&[("DD_PROFILING_AGENTLESS", "true")]);
    assert!(
        matches!(
            missing,
            Error::ApiKey {
                variable: "DD_API_KEY"
            }
        ),
        "{missing:?}"
    );
    for bad in [
        "0123456789ABCDEF0123456789ABCDEF",  // uppercase
        "0123456789abcdef",                  // short
        "0123456789abcdef0123456789abcdef0", // long
        "0123456789abcdef0123456789abcde!",  // punctuation
    ] {
        let e = refused(&[("DD_PROFILING_AGENTLESS", "1"), ("DD_API_KEY", bad)]);
        assert!(
            matches!(
                e,
                Error::ApiKey {
                    variable: "DD_API_KEY"
                }
            ),
            "{e:?}"
        );
        for shown in [e.to_string(), format!("{e:?}")] {
            assert!(!shown.contains(bad), "the key leaked: {shown}");
            assert!(shown.contains("DD_API_KEY"), "{shown}");
        }
    }
    // The builder's key is checked the same way.
    let bad = "not-a-key-not-a-key-not-a-key-xx";
    let e = Profiler::builder()
        .agentless(true)
        .api_key(bad)
        .start_with_env(&|_| None)
        .expect_err("a malformed builder key");
    assert!(
        matches!(
            e,
            Error::ApiKey {
                variable: "api_key"
            }
        ),
        "{e:?}"
    );
    assert!(!e.to_string().contains(bad) && !format!("{e:?}").contains(bad));
}

#[test]
fn builder_values_are_checked_too() {
    let option = |r: Result<Profiler, Error>| match r {
        Err(Error::Option { option, .. }) => option,
        other => panic!("expected an Option error, got {other:?}"),
    };
    let b = || Profiler::builder().log_startup(false);
    let none = &|_: &str| None;
    assert_eq!(
        option(b().upload_timeout(Duration::ZERO).start_with_env(none)),
        "upload_timeout"
    );
    assert_eq!(
        option(b().period(Duration::from_millis(10)).start_with_env(none)),
        "period"
    );
    assert_eq!(option(b().max_frames(0).start_with_env(none)), "max_frames");
    assert_eq!(
        option(b().max_frames(500).start_with_env(none)),
        "max_frames"
    );
    assert_eq!(
        option(b().cpu_profile_rate(0).start_with_env(none)),
        "cpu_profile_rate"
    );
    assert_eq!(option(b().tags(["nocolon"]).start_with_env(none)), "tags");
    assert_eq!(
        option(b().agent_addr("a b:1").start_with_env(none)),
        "agent_addr"
    );
    assert_eq!(option(b().url("nope").start_with_env(none)), "url");
    assert_eq!(
        option(
            b().period(Duration::from_secs(10))
                .cpu_duration(Duration::from_secs(11))
                .start_with_env(none)
        ),
        "cpu_duration"
    );
}

#[test]
fn builder_values_win_over_bad_environment_values() {
    // A builder option means its variable is never read, so a malformed
    // variable behind it is no error. Disabled by the builder, nothing
    // starts.
    let env: HashMap<&str, &str> = [("DD_PROFILING_ENABLED", "banana")].into();
    let p = Profiler::builder()
        .enabled(false)
        .start_with_env(&|k| env.get(k).map(|v| v.to_string()))
        .expect("the builder's enabled(false) wins");
    assert!(!p.is_running());
}

#[test]
fn disabled_by_the_environment_starts_nothing() {
    for off in ["false", "0", "FALSE"] {
        let env: HashMap<&str, &str> = [("DD_PROFILING_ENABLED", off)].into();
        let p = Profiler::builder()
            .start_with_env(&|k| env.get(k).map(|v| v.to_string()))
            .expect("disabled is not an error");
        assert!(!p.is_running(), "{off}");
        assert_eq!(p.stop(), ferroprof::SelfStats::default());
    }
}
