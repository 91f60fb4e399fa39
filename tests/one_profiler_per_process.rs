//! One profiler runs per process: a second `start()` is a clear error, and
//! once the first stops another can start. It works the same from inside
//! an application's own tokio runtime, which it never touches.

mod support;

use std::time::Duration;

use ferroprof::{Error, Profiler};
use support::scratch::Scratch;

fn builder(dir: &std::path::Path) -> ferroprof::ProfilerBuilder {
    // Nobody listens on port 9 (discard) here; the folder gets the batches.
    Profiler::builder()
        .agent_addr("127.0.0.1:9")
        .output_dir(dir)
        .period(Duration::from_millis(200))
        .upload_timeout(Duration::from_millis(300))
        .log_startup(false)
}

#[test]
fn a_second_start_is_refused_until_the_first_stops() {
    let scratch = Scratch::new("one");
    // Not made yet: the profiler makes its output folder.
    let dir = scratch.path().join("out");
    let first = builder(&dir)
        .start_with_env(&|_| None)
        .expect("the first starts");
    let second = builder(&dir).start_with_env(&|_| None);
    match second {
        Err(e @ Error::AlreadyRunning) => {
            assert_eq!(
                e.to_string(),
                "a ferroprof profiler is already running in this process"
            )
        }
        other => panic!("expected AlreadyRunning, got {other:?}"),
    }
    assert!(first.is_running());
    let stats = first.stop();
    assert!(stats.batches >= 1, "{stats:?}");

    // Stopped, the next one starts, here inside the application's own
    // (current-thread) tokio runtime, and stops from async code.
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let stats = runtime.block_on(async {
        let profiler = builder(&dir)
            .start_with_env(&|_| None)
            .expect("starts again");
        tokio::time::sleep(Duration::from_millis(500)).await;
        tokio::task::spawn_blocking(move || profiler.stop())
            .await
            .unwrap()
    });
    assert!(stats.batches >= 1, "{stats:?}");
}
