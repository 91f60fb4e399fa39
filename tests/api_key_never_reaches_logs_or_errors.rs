//! The API key goes in the `DD-API-KEY` header of uploads to an explicit
//! URL or the agentless intake, and nowhere else: not in the startup line,
//! not in any log line (including failed uploads), not in errors, not in
//! `Debug` output.

mod support;

use std::sync::Mutex;
use std::time::Duration;

use ferroprof::Profiler;
use support::test_agent::TestAgent;

const KEY: &str = "5f0c0ffee0ddba11c0debabe00facade";

/// Every log line of this process, at every level.
static LINES: Mutex<Vec<String>> = Mutex::new(Vec::new());

struct Capture;

impl log::Log for Capture {
    fn enabled(&self, _: &log::Metadata<'_>) -> bool {
        true
    }
    fn log(&self, r: &log::Record<'_>) {
        LINES
            .lock()
            .unwrap()
            .push(format!("{} {}", r.level(), r.args()));
    }
    fn flush(&self) {}
}

#[test]
fn the_key_is_sent_and_never_shown() {
    log::set_logger(&Capture).unwrap();
    log::set_max_level(log::LevelFilter::Trace);

    // Accepted: the key reaches the server in its header.
    let agent = TestAgent::start();
    let env = |k: &str| (k == "DD_API_KEY").then(|| KEY.to_owned());
    let profiler = Profiler::builder()
        .url(format!("{}/profiling/v1/input", agent.url()))
        .period(Duration::from_millis(300))
        .start_with_env(&env)
        .expect("starts");
    assert!(!format!("{profiler:?}").contains(KEY));
    std::thread::sleep(Duration::from_millis(700));
    let stats = profiler.stop();
    assert!(stats.upload_success >= 1, "{stats:?}");
    let requests = agent.wait_for_requests(stats.upload_success as usize, Duration::from_secs(10));
    for r in &requests {
        assert_eq!(r.header("DD-API-KEY"), Some(KEY));
    }

    // Refused (nobody listens): failures are logged, without the key.
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = closed.local_addr().unwrap().port();
    drop(closed);
    let profiler = Profiler::builder()
        .api_key(KEY)
        .url(format!("http://127.0.0.1:{port}/api/v2/profile"))
        .period(Duration::from_millis(300))
        .upload_timeout(Duration::from_millis(500))
        .start_with_env(&|_| None)
        .expect("starts");
    std::thread::sleep(Duration::from_millis(700));
    let stats = profiler.stop();
    assert!(stats.upload_error >= 1, "{stats:?}");

    // Agentless with a bad site: the error names the site, not the key.
    let e = Profiler::builder()
        .agentless(true)
        .api_key(KEY)
        .site("bad/site")
        .start_with_env(&|_| None)
        .expect_err("a bad site");
    assert!(!e.to_string().contains(KEY) && !format!("{e:?}").contains(KEY));

    let lines = LINES.lock().unwrap();
    assert!(
        lines.iter().any(|l| l.contains("startup:")),
        "the startup line was logged: {lines:#?}"
    );
    assert!(
        lines.iter().any(|l| l.contains("could not upload")),
        "the failed upload was logged: {lines:#?}"
    );
    for line in lines.iter() {
        assert!(!line.contains(KEY), "the key leaked: {line}");
    }
}
