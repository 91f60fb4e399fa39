//! A machine without CA certificates (a minimal container) can still send
//! to an agent over plain HTTP: only HTTPS reads the platform's roots.
//! (Regression: the platform verifier was built for every client and
//! failed `start()` there.) One test in its own binary, as it points the
//! certificate variables of the whole process at nothing.

mod support;

use std::time::Duration;

use support::scratch::Scratch;

#[test]
fn a_plain_http_agent_needs_no_certificates() {
    let scratch = Scratch::new("no-certs");
    let empty = scratch.path().join("empty.pem");
    std::fs::write(&empty, "").unwrap_or_else(|e| panic!("writing {}: {e}", empty.display()));
    // No other thread runs in this binary yet.
    std::env::set_var("SSL_CERT_FILE", &empty);
    std::env::set_var("SSL_CERT_DIR", "/nonexistent-ferroprof-test");
    let profiler = ferroprof::Profiler::builder()
        .agent_addr("127.0.0.1:9")
        .upload_timeout(Duration::from_millis(300))
        .log_startup(false)
        .start_with_env(&|_| None)
        .expect("no certificates are needed for http://");
    let stats = profiler.stop();
    assert_eq!(stats.batches, 1, "{stats:?}");
}
