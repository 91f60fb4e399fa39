//! The configurations `cpu_peers` compares, and one burst of each: start the
//! profiler, run the workload, take the profile, stop; then read the profile
//! into the same figures for every profiler (samples per thread, frames, how
//! many stacks reach the worker's entry function) so the two are judged by
//! one rule.

use std::time::Duration;

use ferroprof::cpu::CpuProfiler;
use ferroprof::pprof::{Profile, Symbolizer};

use crate::workload::{thread_cpu, BurstCpu, Workers, DEPTH, ROLES};

/// Frames ferroprof keeps per sample (its default).
const MAX_FRAMES: usize = 64;

/// The profiler configurations, in the order of the tables.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Config {
    Unprofiled,
    Ferroprof,
    PprofRs,
}

pub const CONFIGS: [Config; 3] = [Config::Unprofiled, Config::Ferroprof, Config::PprofRs];

impl Config {
    pub fn name(self) -> &'static str {
        match self {
            Config::Unprofiled => "unprofiled",
            Config::Ferroprof => "ferroprof",
            Config::PprofRs if cfg!(feature = "pprof-frame-pointer") => "pprof-rs fp",
            Config::PprofRs => "pprof-rs",
        }
    }
}

/// What a profile says about one burst, in the terms the tables use.
/// Per-worker arrays are in [`ROLES`] order.
#[derive(Clone, Copy, Debug, Default)]
pub struct Sampled {
    /// Samples on each worker thread (by the thread the profiler recorded).
    pub workers: [u64; 2],
    /// Samples on any other thread, or on none (ferroprof's dropped-sample
    /// stack).
    pub other: u64,
    /// Worker samples whose stack reaches the worker's own entry function
    /// through all [`DEPTH`] frames of `at_depth` (the call with depth 0
    /// tail-calls the work, so it leaves no frame of its own).
    pub usable: u64,
    /// Worker samples with `work_unit` on the stack (nearly all the
    /// workers' CPU is spent in it).
    pub in_work_unit: u64,
    /// Frames over all samples (for the mean).
    pub frames: u64,
}

impl Sampled {
    pub fn total(&self) -> u64 {
        self.workers.iter().sum::<u64>() + self.other
    }

    pub fn add(&mut self, other: &Sampled) {
        for (a, b) in self.workers.iter_mut().zip(other.workers) {
            *a += b;
        }
        self.other += other.other;
        self.usable += other.usable;
        self.in_work_unit += other.in_work_unit;
        self.frames += other.frames;
    }

    /// Counts `count` samples of one stack: `worker` is the index of the
    /// worker it was taken on, if any; `frames` lists each frame's function
    /// names (inlined ones first).
    fn record<'a, F, N>(&mut self, worker: Option<usize>, count: u64, frames: F)
    where
        F: IntoIterator<Item = N>,
        N: IntoIterator<Item = &'a str>,
    {
        let (mut n, mut depth, mut entry, mut in_unit) = (0, 0, false, false);
        let wanted = worker.map(|w| ROLES[w].entry_function());
        for names in frames {
            n += 1;
            for name in names {
                let name = base_name(name);
                depth += u32::from(name == "at_depth");
                entry |= Some(name) == wanted;
                in_unit |= name == "work_unit";
            }
        }
        self.frames += n * count;
        match worker {
            Some(w) => {
                self.workers[w] += count;
                if entry && depth >= DEPTH {
                    self.usable += count;
                }
                if in_unit {
                    self.in_work_unit += count;
                }
            }
            None => self.other += count,
        }
    }
}

/// The last path segment of a demangled name, without a trailing
/// `::h<16 hex digits>` hash.
fn base_name(name: &str) -> &str {
    let name = match name.rsplit_once("::h") {
        Some((head, hash)) if hash.len() == 16 && hash.bytes().all(|b| b.is_ascii_hexdigit()) => {
            head
        }
        _ => name,
    };
    name.rsplit("::").next().unwrap_or(name)
}

/// One burst of one configuration.
#[derive(Clone, Copy, Debug, Default)]
pub struct Burst {
    /// Units of work, and CPU during the burst (throughput).
    pub cpu: BurstCpu,
    /// The main thread's CPU from the profiler's start to the moment its
    /// samples were taken out (the truth for samples on "other" threads).
    pub main_profiled: f64,
    /// What the profile says (none when unprofiled).
    pub sampled: Option<Sampled>,
}

impl Burst {
    /// Work units per CPU-second of the whole process.
    pub fn throughput(&self) -> f64 {
        self.cpu.units as f64 / (self.cpu.workers.iter().sum::<f64>() + self.cpu.main)
    }

    /// The CPU seconds each sample count should reflect: workers (in
    /// [`ROLES`] order), then the main thread over the profiled window.
    pub fn truth(&self) -> [f64; 3] {
        [self.cpu.workers[0], self.cpu.workers[1], self.main_profiled]
    }
}

/// Runs one burst of `config` at `hz`, the profiler started before and
/// stopped after it.
pub fn run(
    workers: &Workers,
    config: Config,
    hz: u32,
    length: Duration,
    symbols: &mut Symbolizer,
) -> Burst {
    match config {
        Config::Unprofiled => Burst {
            cpu: workers.burst(length, || {}),
            ..Burst::default()
        },
        Config::Ferroprof => {
            let mut profiler = CpuProfiler::start(hz, MAX_FRAMES).expect("start ferroprof");
            let main0 = thread_cpu();
            let cpu = workers.burst(length, || {
                profiler.poll().expect("poll ferroprof");
            });
            // `collect` drains the ring before it symbolizes: samples taken
            // while it symbolizes are not in this profile.
            let main_profiled = thread_cpu() - main0;
            let profile = profiler.collect(symbols);
            profiler.stop().expect("stop ferroprof");
            Burst {
                cpu,
                main_profiled,
                sampled: Some(read_ferroprof(&profile, &workers.tids)),
            }
        }
        Config::PprofRs => {
            let guard = pprof::ProfilerGuard::new(hz as i32).expect("start pprof-rs");
            let main0 = thread_cpu();
            let cpu = workers.burst(length, || {});
            let main_profiled = thread_cpu() - main0;
            // Taken unresolved while the timer runs (cheap), resolved after
            // it stopped, so symbolizing is neither sampled nor measured.
            let report = guard.report().build_unresolved().expect("pprof-rs report");
            drop(guard);
            Burst {
                cpu,
                main_profiled,
                sampled: Some(read_pprof_rs(report)),
            }
        }
    }
}

/// Reads ferroprof's profile: workers by the `thread id` label, functions
/// from each location's lines.
fn read_ferroprof(profile: &Profile, tids: &[i32; 2]) -> Sampled {
    let string = |i: i64| profile.string_table[i as usize].as_str();
    let key = profile
        .string_table
        .iter()
        .position(|s| s == "thread id")
        .map(|i| i as i64);
    let mut out = Sampled::default();
    for sample in &profile.sample {
        let tid = sample
            .label
            .iter()
            .find(|l| Some(l.key) == key)
            .map(|l| l.num);
        let worker = tids.iter().position(|&t| Some(i64::from(t)) == tid);
        let frames = sample.location_id.iter().map(|&id| {
            // Ids are positions plus one (the pprof convention).
            let location = &profile.location[id as usize - 1];
            debug_assert_eq!(location.id, id);
            location.line.iter().map(move |line| {
                let function = &profile.function[line.function_id as usize - 1];
                string(function.name)
            })
        });
        out.record(worker, sample.value[0] as u64, frames);
    }
    out
}

/// Reads pprof-rs's report: workers by the recorded thread name, functions
/// resolved through pprof-rs's own symbolization (the `backtrace` crate).
fn read_pprof_rs(report: pprof::UnresolvedReport) -> Sampled {
    let mut out = Sampled::default();
    for (stack, count) in report.data {
        let frames = pprof::Frames::from(stack);
        let worker = ROLES
            .iter()
            .position(|r| r.thread_name() == frames.thread_name);
        let names: Vec<Vec<String>> = frames
            .frames
            .iter()
            .map(|symbols| symbols.iter().map(|s| s.name()).collect())
            .collect();
        out.record(
            worker,
            count as u64,
            names.iter().map(|f| f.iter().map(String::as_str)),
        );
    }
    out
}
