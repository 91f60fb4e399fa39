//! The test-agent harness of `tests/support/test_agent.rs` works: Datadog's
//! `ddapm-test-agent` starts, accepts a profile upload, and gives back the
//! request byte for byte, split into exactly the multipart parts sent, with
//! binary content (NUL, 0xff, CRLF, `--`) intact. Two agents run side by
//! side (the tests here run in parallel), and the harness's multipart, JSON
//! and base64 parsers reject malformed input instead of guessing.

mod support;

use std::time::Duration;

use support::test_agent::{base64_decode, parse_multipart, Json, TestAgent};

/// The boundary of the hand-made upload.
const BOUNDARY: &str = "ferroprof-test-7d1c0a";

/// The `event` part's JSON.
const EVENT: &str = r#"{"attachments":["cpu.pprof"],"tags_profiler":"service:harness,é=\"q\"","family":"rust","version":"4"}"#;

/// Binary content meant to break careless multipart handling: every byte
/// value, CRLF, lone CR and LF, "--", and a CRLF followed by most of the
/// boundary.
fn pprof_bytes() -> Vec<u8> {
    let mut bytes: Vec<u8> = (0..=255).collect();
    bytes.extend_from_slice(b"\r\n--\r\n\r\n--\r\r\n\n--");
    bytes.extend_from_slice(format!("\r\n--{}", &BOUNDARY[..BOUNDARY.len() - 1]).as_bytes());
    bytes.extend_from_slice(&[0x00, 0xff, 0x00, b'\r']);
    bytes
}

/// A `multipart/form-data` body with the `event` and `cpu.pprof` parts, as
/// an upload to the agent looks.
fn upload_body(pprof: &[u8]) -> Vec<u8> {
    let mut body = Vec::new();
    body.extend_from_slice(format!("--{BOUNDARY}\r\n").as_bytes());
    body.extend_from_slice(
        b"Content-Disposition: form-data; name=\"event\"; filename=\"event.json\"\r\n",
    );
    body.extend_from_slice(b"Content-Type: application/json\r\n\r\n");
    body.extend_from_slice(EVENT.as_bytes());
    body.extend_from_slice(format!("\r\n--{BOUNDARY}\r\n").as_bytes());
    body.extend_from_slice(
        b"content-disposition: form-data; name=\"cpu.pprof\"; filename=\"cpu.pprof\"\r\n",
    );
    body.extend_from_slice(b"content-type: application/octet-stream\r\n\r\n");
    body.extend_from_slice(pprof);
    body.extend_from_slice(format!("\r\n--{BOUNDARY}--\r\n").as_bytes());
    body
}

#[test]
fn agent_gives_back_the_upload_byte_for_byte() {
    let agent = TestAgent::start();
    assert_eq!(agent.url(), format!("http://127.0.0.1:{}", agent.port()));
    assert_eq!(agent.requests(), Vec::new(), "a new agent has no requests");

    let pprof = pprof_bytes();
    let body = upload_body(&pprof);
    let content_type = format!("multipart/form-data; boundary={BOUNDARY}");
    let response = agent.post(
        "/profiling/v1/input",
        &[
            ("Content-Type", &content_type),
            ("DD-EVP-ORIGIN", "ferroprof-harness"),
        ],
        &body,
    );
    assert!(
        (200..300).contains(&response.status),
        "the agent answered {}: {}",
        response.status,
        String::from_utf8_lossy(&response.body)
    );

    let requests = agent.wait_for_requests(1, Duration::from_secs(10));
    assert_eq!(requests.len(), 1, "{requests:?}");
    let request = &requests[0];
    assert_eq!(request.method, "POST");
    assert_eq!(request.path(), "/profiling/v1/input");
    assert_eq!(request.url, format!("{}/profiling/v1/input", agent.url()));
    assert_eq!(request.header("content-type"), Some(content_type.as_str()));
    assert_eq!(request.header("dd-evp-origin"), Some("ferroprof-harness"));
    assert_eq!(request.header("DD-EVP-ORIGIN"), Some("ferroprof-harness"));
    assert_eq!(
        request.header("Content-Length"),
        Some(body.len().to_string().as_str())
    );
    assert_eq!(request.header("X-Not-Sent"), None);
    assert!(request.body == body, "the body came back changed");

    let parts = request.parts();
    assert_eq!(parts.len(), 2, "{parts:?}");
    let (event, cpu) = (&parts[0], &parts[1]);
    assert_eq!(event.name, "event");
    assert_eq!(event.filename.as_deref(), Some("event.json"));
    assert_eq!(event.content_type.as_deref(), Some("application/json"));
    assert_eq!(event.body, EVENT.as_bytes());
    assert_eq!(event.headers.len(), 2, "{:?}", event.headers);
    assert_eq!(cpu.name, "cpu.pprof");
    assert_eq!(cpu.filename.as_deref(), Some("cpu.pprof"));
    assert_eq!(
        cpu.content_type.as_deref(),
        Some("application/octet-stream")
    );
    assert_eq!(
        cpu.header("Content-Disposition"),
        Some("form-data; name=\"cpu.pprof\"; filename=\"cpu.pprof\"")
    );
    assert_eq!(cpu.body.len(), pprof.len());
    assert!(cpu.body == pprof, "the cpu.pprof part came back changed");

    // The event part is JSON the harness can read.
    let json = Json::parse(std::str::from_utf8(&event.body).unwrap()).unwrap();
    assert_eq!(
        json.get("tags_profiler").and_then(Json::as_str),
        Some("service:harness,é=\"q\"")
    );
}

#[test]
fn agent_lists_requests_in_order_and_clears_them() {
    // Runs beside the other test's agent, on ports of its own.
    let agent = TestAgent::start();
    for body in [&b"first"[..], b"second\0\xff"] {
        let response = agent.post("/profiling/v1/input", &[], body);
        assert_eq!(response.status, 200);
    }
    let requests = agent.wait_for_requests(2, Duration::from_secs(10));
    let bodies: Vec<&[u8]> = requests.iter().map(|r| &r.body[..]).collect();
    assert_eq!(bodies, [&b"first"[..], b"second\0\xff"]);

    // No Content-Type: parts() must refuse, not return nothing.
    let refused = std::panic::catch_unwind(|| requests[0].parts());
    assert!(refused.is_err(), "parts() of a body without Content-Type");

    agent.clear();
    assert_eq!(agent.requests(), Vec::new());
}

#[test]
fn multipart_parser_rejects_malformed_bodies() {
    let ct = "multipart/form-data; boundary=b";
    let ok = b"--b\r\nContent-Disposition: form-data; name=\"x\"\r\n\r\n\r\n--b--\r\n";
    let parts = parse_multipart(ct, ok).unwrap();
    assert_eq!(parts.len(), 1);
    assert_eq!(
        (parts[0].name.as_str(), parts[0].filename.as_deref()),
        ("x", None)
    );
    assert_eq!(parts[0].body, b"", "empty content");

    // A quoted boundary, parameters in any case and order.
    let quoted = "Multipart/Form-Data; charset=utf-8; boundary=\"a b\"";
    let body = b"--a b\r\nContent-Disposition: form-data; name=x\r\n\r\nv\r\n--a b--\r\n";
    let parts = parse_multipart(quoted, body).unwrap();
    assert_eq!(
        (parts[0].name.as_str(), &parts[0].body[..]),
        ("x", &b"v"[..])
    );

    let cases: [(&str, &str, &[u8]); 9] = [
        ("not multipart", "application/json", ok),
        ("no boundary", "multipart/form-data", ok),
        (
            "no close delimiter",
            ct,
            b"--b\r\nContent-Disposition: form-data; name=x\r\n\r\nv",
        ),
        (
            "bare LF line ends",
            ct,
            b"--b\nContent-Disposition: form-data; name=x\n\nv\n--b--",
        ),
        (
            "no name",
            ct,
            b"--b\r\nContent-Disposition: form-data\r\n\r\nv\r\n--b--",
        ),
        (
            "no disposition",
            ct,
            b"--b\r\nContent-Type: text/plain\r\n\r\nv\r\n--b--",
        ),
        ("no boundary line", ct, b"just some bytes"),
        // Strict framing: ferroprof's uploads have neither.
        (
            "a preamble",
            ct,
            b"preamble\r\n--b\r\nContent-Disposition: form-data; name=x\r\n\r\nv\r\n--b--\r\n",
        ),
        (
            "an epilogue",
            ct,
            b"--b\r\nContent-Disposition: form-data; name=x\r\n\r\nv\r\n--b--\r\nepilogue",
        ),
    ];
    for (what, content_type, body) in cases {
        let result = parse_multipart(content_type, body);
        assert!(result.is_err(), "{what}: accepted as {result:?}");
    }
}

#[test]
fn json_and_base64_parsers_read_what_python_writes() {
    let json = Json::parse(
        r#" {"a": [1, -2.5e3, 0.25, true, false, null, {}], "s": "\u00e9\ud83d\ude00\n\t\"\\\/", "e": []} "#,
    )
    .unwrap();
    assert_eq!(
        json.get("a"),
        Some(&Json::Array(vec![
            Json::Number(1.0),
            Json::Number(-2500.0),
            Json::Number(0.25),
            Json::Bool(true),
            Json::Bool(false),
            Json::Null,
            Json::Object(vec![]),
        ]))
    );
    assert_eq!(
        json.get("s").and_then(Json::as_str),
        Some("é\u{1f600}\n\t\"\\/")
    );
    assert_eq!(json.get("e"), Some(&Json::Array(vec![])));
    for bad in [
        "",
        "[1,]",
        "{\"a\" 1}",
        "\"\\ud83d\"",
        "01",
        "[1] x",
        "tru",
        "\"\u{1}\"",
    ] {
        assert!(Json::parse(bad).is_err(), "{bad:?} accepted");
    }

    assert_eq!(base64_decode("").unwrap(), b"");
    assert_eq!(base64_decode("Zg==").unwrap(), b"f");
    assert_eq!(base64_decode("Zm8=").unwrap(), b"fo");
    assert_eq!(base64_decode("Zm9v").unwrap(), b"foo");
    assert_eq!(base64_decode("AP/+").unwrap(), [0x00, 0xff, 0xfe]);
    for bad in ["Zg=", "Zg==Zg==", "Z===", "Zm9*"] {
        assert!(base64_decode(bad).is_err(), "{bad:?} accepted");
    }
}
