//! A child process: one configuration, serving timed bursts to the parent.
//!
//! The child reads one command per line on stdin and answers one line on
//! stdout:
//!
//! - `check`: proves that the configuration does what its row claims (the
//!   profiler really records, the baseline really does not); answers
//!   `ok <what was seen>` or `fail <why>`.
//! - `run <workload> <threads> <n>`: runs `n` operations on each of
//!   `threads` (1 or 2) threads at once; answers `<wall> <cpu>`, the mean
//!   over the threads of each thread's nanoseconds per operation, in wall
//!   time and in the thread's CPU time.
//! - `stats`: answers `<operations run> <a> <b>`, the profiler's cumulative
//!   counters: ferroprof samples and dropped samples, jemalloc's sampled
//!   allocations and their requested bytes (`prof.stats`), dhat's blocks
//!   and bytes; `0 0` for the baselines.
//! - `quit`: exits at once (dhat's profiler is not dropped: writing its
//!   JSON is not part of what is measured).
//!
//! The second thread is started once and waits for its bursts, so a burst
//! times allocation, not thread creation.

use std::alloc::GlobalAlloc;
use std::fs;
use std::hint::black_box;
use std::io::{self, BufRead, Write};
use std::sync::mpsc;
use std::sync::{Arc, Barrier};
use std::thread;

use tikv_jemalloc_ctl::raw;

use crate::global::{Mode, DHAT, FERROPROF, JEMALLOC, SYSTEM};
use crate::workload::{corpus, Elapsed, Worker, Workload};

/// Serves the parent until `quit`; never returns.
pub fn main(mode: Mode) -> ! {
    match mode {
        Mode::Jemalloc | Mode::JemallocProf => serve(mode, &JEMALLOC),
        Mode::Ferroprof => serve(mode, &FERROPROF),
        Mode::System => serve(mode, &SYSTEM),
        Mode::Dhat => {
            // Runs until the process exits (`serve` never returns): every
            // allocation from here on is recorded with its backtrace.
            let _profiler = dhat::Profiler::new_heap();
            serve(mode, &DHAT)
        }
    }
}

/// A burst for the second thread.
struct Job {
    workload: Workload,
    n: u64,
}

fn serve<A: GlobalAlloc + Sync + 'static>(mode: Mode, alloc: &'static A) -> ! {
    // Generated before any burst, so no burst pays for it.
    corpus();
    let start = Arc::new(Barrier::new(2));
    let (jobs, job_rx) = mpsc::channel::<Job>();
    let (done_tx, done) = mpsc::channel::<Elapsed>();
    let barrier = Arc::clone(&start);
    thread::Builder::new()
        .name("second".into())
        .spawn(move || {
            let mut worker = Worker::new(alloc, 1);
            for job in job_rx {
                barrier.wait();
                let elapsed = worker.run(job.workload, job.n);
                if done_tx.send(elapsed).is_err() {
                    break;
                }
            }
        })
        .expect("spawning the second thread");
    let mut worker = Worker::new(alloc, 0);
    let mut ops: u64 = 0;
    let stdin = io::stdin().lock();
    let mut stdout = io::stdout().lock();
    for line in stdin.lines() {
        let line = line.expect("reading a command");
        let words: Vec<&str> = line.split_whitespace().collect();
        let answer = match words.as_slice() {
            ["check"] => match check(mode) {
                Ok(seen) => format!("ok {seen}"),
                Err(why) => format!("fail {why}"),
            },
            ["run", workload, threads, n] => {
                let workload = Workload::from_name(workload).expect("a known workload");
                let n: u64 = n.parse().expect("a count");
                let threads: u64 = threads.parse().expect("a thread count");
                let total = match threads {
                    1 => worker.run(workload, n),
                    2 => {
                        jobs.send(Job { workload, n })
                            .expect("the second thread runs");
                        start.wait();
                        let mine = worker.run(workload, n);
                        let other = done.recv().expect("the second thread answers");
                        Elapsed {
                            wall: mine.wall + other.wall,
                            cpu: mine.cpu + other.cpu,
                        }
                    }
                    other => panic!("threads must be 1 or 2, not {other}"),
                };
                ops += n * threads;
                let per_op = (threads * n) as f64;
                format!(
                    "{} {}",
                    total.wall as f64 / per_op,
                    total.cpu as f64 / per_op
                )
            }
            ["stats"] => {
                let (a, b) = counters(mode);
                format!("{ops} {a} {b}")
            }
            ["quit"] => std::process::exit(0),
            other => panic!("unknown command {other:?}"),
        };
        writeln!(stdout, "{answer}").expect("answering the parent");
        stdout.flush().expect("answering the parent");
    }
    // The parent closed the pipe without `quit`: it is gone.
    std::process::exit(1)
}

/// The profiler's cumulative counters (see the module doc).
fn counters(mode: Mode) -> (u64, u64) {
    match mode {
        Mode::Jemalloc | Mode::System => (0, 0),
        Mode::Ferroprof => {
            let stats = ferroprof::alloc::stats();
            (stats.samples, stats.dropped)
        }
        Mode::JemallocProf => jemalloc_samples().unwrap_or((0, 0)),
        Mode::Dhat => {
            let stats = dhat::HeapStats::get();
            (stats.total_blocks, stats.total_bytes)
        }
    }
}

/// jemalloc's sampled allocations since start and their requested bytes,
/// summed over every size class of `prof.stats` (needs `prof_stats:true`).
fn jemalloc_samples() -> Result<(u64, u64), String> {
    let classes = |name: &[u8]| -> Result<u32, String> {
        // SAFETY: `arenas.nbins` and `arenas.nlextents` are `unsigned`.
        unsafe { raw::read::<u32>(name) }.map_err(|e| format!("{e}"))
    };
    let bins = classes(b"arenas.nbins\0")?;
    let large = classes(b"arenas.nlextents\0")?;
    let names = (0..bins)
        .map(|i| format!("prof.stats.bins.{i}.accum\0"))
        .chain((0..large).map(|j| format!("prof.stats.lextents.{j}.accum\0")));
    let (mut count, mut bytes) = (0, 0);
    for name in names {
        // SAFETY: these nodes are a `prof_stats_t`: two `uint64_t`,
        // `req_sum` then `count`.
        let [req_sum, n] = unsafe { raw::read::<[u64; 2]>(name.as_bytes()) }
            .map_err(|e| format!("{}: {e}", name.trim_end_matches('\0')))?;
        count += n;
        bytes += req_sum;
    }
    Ok((count, bytes))
}

/// Proves the configuration is what its row claims (see the module doc).
///
/// Every child runs the same allocations here (32 MiB allocated and freed
/// in 1 KiB blocks, then 64 MiB kept live in 4 KiB blocks and freed), so
/// that every heap starts the measurements from the same history; each
/// configuration then reads what its profiler saw of them.
fn check(mode: Mode) -> Result<String, String> {
    let options = match mode {
        Mode::Jemalloc => {
            // SAFETY: `opt.prof` is a `bool`.
            let prof = unsafe { raw::read::<bool>(b"opt.prof\0") }.map_err(|e| e.to_string())?;
            if prof {
                return Err("jemalloc's profiling is on in the baseline".into());
            }
            "opt.prof=false".to_owned()
        }
        Mode::System => "glibc malloc".to_owned(),
        Mode::Ferroprof => {
            let interval = ferroprof::alloc::sample_interval();
            if interval != ferroprof::alloc::DEFAULT_SAMPLE_INTERVAL {
                return Err(format!("sampling interval {interval} B"));
            }
            format!("interval {interval} B")
        }
        Mode::JemallocProf => jemalloc_prof_options()?,
        Mode::Dhat => "heap profiler running".to_owned(),
    };
    let (before, _) = counters(mode);
    churn(32 << 20, 1024);
    let live: Vec<Vec<u8>> = (0..(64 << 20) / 4096).map(|_| vec![1u8; 4096]).collect();
    let dump = match mode {
        Mode::JemallocProf => Some(jemalloc_dump()?),
        _ => None,
    };
    drop(black_box(live));
    let (after, _) = counters(mode);
    let recorded = after - before;
    // 32 768 + 16 384 blocks (and the outer `Vec`), 96 MiB in all.
    let seen = match mode {
        Mode::Jemalloc | Mode::System => return Ok(options),
        Mode::Dhat if recorded < 49_153 => {
            return Err(format!("49 153 allocations, {recorded} blocks recorded"));
        }
        Mode::Dhat => format!("49 153 allocations recorded as {recorded} blocks"),
        Mode::Ferroprof | Mode::JemallocProf if recorded == 0 => {
            return Err("96 MiB allocated, no sample".into());
        }
        Mode::Ferroprof => {
            let snapshot = ferroprof::alloc::snapshot();
            let with_frames = snapshot
                .stacks
                .iter()
                .filter(|s| !s.frames.is_empty())
                .count();
            if with_frames == 0 {
                return Err(format!("{recorded} samples, none with a stack"));
            }
            format!(
                "96 MiB allocated -> {recorded} samples (expected ~192), {with_frames} \
                 stacks with frames"
            )
        }
        Mode::JemallocProf => {
            let (live_samples, stacks, bytes) = dump.expect("dumped above");
            if live_samples == 0 || stacks == 0 {
                return Err(format!(
                    "64 MiB live, dump of {live_samples} live samples in {stacks} stacks"
                ));
            }
            format!(
                "96 MiB allocated -> {recorded} sampled allocations (expected ~192); \
                 with 64 MiB live, prof.dump wrote {live_samples} live samples in {stacks} \
                 stacks, {} KiB, unsymbolized",
                bytes / 1024
            )
        }
    };
    Ok(format!("{options}; {seen}"))
}

/// Allocates and frees `total` bytes in blocks of `block` bytes through the
/// global allocator.
fn churn(total: usize, block: usize) {
    for _ in 0..total / block {
        drop(black_box(vec![1u8; block]));
    }
}

fn jemalloc_err(what: &'static str) -> impl Fn(tikv_jemalloc_ctl::Error) -> String {
    move |e| format!("{what}: {e}")
}

/// Checks that jemalloc profiles: `opt.prof`, `prof.active` (process and
/// thread), `opt.prof_stats` and `opt.lg_prof_sample` 19.
fn jemalloc_prof_options() -> Result<String, String> {
    // SAFETY: each node has the type read: `bool` for the switches, `size_t`
    // for `opt.lg_prof_sample`.
    let (prof, active, thread_active, stats, lg_sample) = unsafe {
        (
            raw::read::<bool>(b"opt.prof\0").map_err(jemalloc_err("opt.prof"))?,
            raw::read::<bool>(b"prof.active\0").map_err(jemalloc_err("prof.active"))?,
            raw::read::<bool>(b"thread.prof.active\0")
                .map_err(jemalloc_err("thread.prof.active"))?,
            raw::read::<bool>(b"opt.prof_stats\0").map_err(jemalloc_err("opt.prof_stats"))?,
            raw::read::<usize>(b"opt.lg_prof_sample\0")
                .map_err(jemalloc_err("opt.lg_prof_sample"))?,
        )
    };
    let seen = format!(
        "opt.prof={prof} prof.active={active} thread.prof.active={thread_active} \
         opt.prof_stats={stats} opt.lg_prof_sample={lg_sample}"
    );
    if prof && active && thread_active && stats && lg_sample == 19 {
        // Its sample counts are readable.
        jemalloc_samples()?;
        Ok(seen)
    } else {
        Err(seen)
    }
}

/// Has jemalloc write a heap profile; returns its live samples, its stacks
/// and its size in bytes.
fn jemalloc_dump() -> Result<(u64, usize, usize), String> {
    let path = std::env::temp_dir().join(format!("alloc_peers-{}.heap", std::process::id()));
    let c_path = std::ffi::CString::new(path.to_str().ok_or("temporary path is not UTF-8")?)
        .map_err(|e| e.to_string())?;
    // SAFETY: `prof.dump` takes a `const char *` file name, valid for the
    // call (`c_path` lives until the end of this function).
    unsafe { raw::write(b"prof.dump\0", c_path.as_ptr()) }.map_err(jemalloc_err("prof.dump"))?;
    let dump = fs::read_to_string(&path).map_err(|e| format!("reading {}: {e}", path.display()));
    let _ = fs::remove_file(&path);
    let dump = dump?;
    // "heap_v2/524288", then "  t*: <live samples>: <bytes> [...]", then
    // one "@ <addresses>" line per stack with live samples.
    let mut lines = dump.lines();
    let header = lines.next().unwrap_or_default();
    let live_samples: u64 = lines
        .next()
        .and_then(|l| l.trim().strip_prefix("t*: "))
        .and_then(|l| l.split(':').next())
        .and_then(|n| n.trim().parse().ok())
        .filter(|_| header == "heap_v2/524288")
        .ok_or_else(|| format!("unexpected dump header {header:?}"))?;
    let stacks = dump.lines().filter(|l| l.starts_with('@')).count();
    Ok((live_samples, stacks, dump.len()))
}
