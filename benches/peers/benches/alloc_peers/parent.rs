//! The parent process: starts one child per configuration, alternates their
//! bursts, and prints the ratios and what each profiler recorded.
//!
//! Six children: the five configurations, and a second bare-jemalloc child
//! as an A/A control: the ratio between two identical processes is the
//! floor of what this one-process-per-configuration method can resolve
//! (address-space layout, heap history and scheduling differ between
//! processes, and stay fixed for a process's life).
//!
//! For each workload and thread count (a *cell*), the parent warms every
//! child up, sizes each child's bursts to about the target CPU time (counts
//! growing by 4, then the fastest of three bursts), then runs the rounds: in
//! each round every child runs one burst, starting with a different one each
//! round (rotating order), while the others wait, idle, on their pipes. A
//! ratio is computed per round, from bursts a few milliseconds apart, and the
//! tables show the median of those ratios with its quartiles.
//!
//! A profiler's column is printed only if its child passed its `check` and
//! its counters moved during the cell (samples for ferroprof and jemalloc;
//! at least one dhat block per operation).

use std::fmt::Write as _;
use std::io::{BufRead, BufReader, Write};
use std::process::{ChildStdin, ChildStdout, Command, Stdio};
use std::time::Instant;

use crate::global::{Mode, MODE_VAR};
use crate::workload::Workload;

/// jemalloc's configuration variable (tikv-jemalloc-sys prefixes with `_rjem_`).
const JEMALLOC_CONF_VAR: &str = "_RJEM_MALLOC_CONF";
/// jemalloc's heap profiling at a 2^19 B = 512 KiB mean interval, as
/// ferroprof's default; `prof_stats` makes its sample counts readable.
const JEMALLOC_PROF_CONF: &str = "prof:true,lg_prof_sample:19,prof_stats:true";

/// Rounds per cell unless `ALLOC_PEERS_ROUNDS` says otherwise.
const DEFAULT_ROUNDS: usize = 400;
/// Target burst length, in CPU time, unless `ALLOC_PEERS_BURST_US` says
/// otherwise.
const DEFAULT_BURST_US: u64 = 2000;

/// The children, by slot: the five configurations, then the A/A control.
const SLOTS: [Mode; 6] = [
    Mode::Jemalloc,
    Mode::Ferroprof,
    Mode::JemallocProf,
    Mode::System,
    Mode::Dhat,
    Mode::Jemalloc,
];
/// Slot of each configuration's child (`Mode::index`), and of the control.
const CONTROL: usize = 5;

/// Which clock a figure is read from.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Clock {
    /// Each thread's own CPU time.
    Cpu,
    /// Wall-clock time.
    Wall,
}

/// One child process and its pipes.
struct Child {
    slot: usize,
    process: std::process::Child,
    input: ChildStdin,
    output: BufReader<ChildStdout>,
}

impl Child {
    fn spawn(slot: usize) -> Child {
        let mode = SLOTS[slot];
        let exe = std::env::current_exe().expect("the benchmark's own path");
        let mut command = Command::new(exe);
        command
            .env(MODE_VAR, mode.name())
            .env_remove(JEMALLOC_CONF_VAR)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped());
        if mode == Mode::JemallocProf {
            command.env(JEMALLOC_CONF_VAR, JEMALLOC_PROF_CONF);
        }
        let mut process = command.spawn().expect("starting a child");
        let input = process.stdin.take().expect("piped stdin");
        let output = BufReader::new(process.stdout.take().expect("piped stdout"));
        Child {
            slot,
            process,
            input,
            output,
        }
    }

    fn name(&self) -> &'static str {
        slot_name(self.slot)
    }

    /// Sends one command and returns the answer.
    fn ask(&mut self, command: &str) -> String {
        let name = self.name();
        writeln!(self.input, "{command}")
            .and_then(|()| self.input.flush())
            .unwrap_or_else(|e| panic!("child {name} is gone ({command}): {e}"));
        let mut answer = String::new();
        let read = self
            .output
            .read_line(&mut answer)
            .unwrap_or_else(|e| panic!("child {name} ({command}): {e}"));
        assert!(read > 0, "child {name} exited during `{command}`");
        answer.trim_end().to_owned()
    }

    /// Nanoseconds per operation (per thread) of one burst: (wall, CPU).
    fn run(&mut self, workload: Workload, threads: usize, n: u64) -> (f64, f64) {
        let answer = self.ask(&format!("run {} {threads} {n}", workload.name()));
        let parsed = answer
            .split_once(' ')
            .and_then(|(wall, cpu)| Some((wall.parse().ok()?, cpu.parse().ok()?)));
        parsed.unwrap_or_else(|| panic!("child {}: bad answer {answer:?}", self.name()))
    }

    /// Operations run and the two profiler counters (see `child`).
    fn stats(&mut self) -> [u64; 3] {
        let answer = self.ask("stats");
        let values: Vec<u64> = answer
            .split_whitespace()
            .map(|v| v.parse().expect("a counter"))
            .collect();
        values.try_into().expect("three counters")
    }

    fn quit(mut self) {
        let _ = writeln!(self.input, "quit").and_then(|()| self.input.flush());
        let _ = self.process.wait();
    }
}

fn slot_name(slot: usize) -> &'static str {
    if slot == CONTROL {
        "jemalloc (A/A control)"
    } else {
        SLOTS[slot].name()
    }
}

/// The measurements of one workload on one thread count.
struct Cell {
    workload: Workload,
    threads: usize,
    /// Per slot, nanoseconds per operation of each round's burst, in CPU time.
    cpu: [Vec<f64>; 6],
    /// The same bursts in wall time.
    wall: [Vec<f64>; 6],
    /// Per slot, operations per thread in a burst.
    burst: [u64; 6],
    /// Per slot, the change of `Child::stats` over the rounds.
    counters: [[u64; 3]; 6],
}

/// Median and quartiles.
#[derive(Clone, Copy)]
struct Spread {
    low: f64,
    median: f64,
    high: f64,
}

fn spread(mut v: Vec<f64>) -> Spread {
    v.sort_by(f64::total_cmp);
    let at = |q: usize| v[(v.len() - 1) * q / 4];
    Spread {
        low: at(1),
        median: at(2),
        high: at(3),
    }
}

impl Cell {
    fn series(&self, slot: usize, clock: Clock) -> &[f64] {
        match clock {
            Clock::Cpu => &self.cpu[slot],
            Clock::Wall => &self.wall[slot],
        }
    }

    fn median_ns(&self, slot: usize, clock: Clock) -> f64 {
        spread(self.series(slot, clock).to_vec()).median
    }

    /// The per-round ratios of slot `num` over slot `den`.
    fn ratio(&self, num: usize, den: usize, clock: Clock) -> Spread {
        let (n, d) = (self.series(num, clock), self.series(den, clock));
        spread(n.iter().zip(d).map(|(n, d)| n / d).collect())
    }

    /// Whether the child in `slot` really profiled during this cell
    /// (baselines: yes, once checked).
    fn profiled(&self, slot: usize, checked: &[bool; 6]) -> Result<(), String> {
        if !checked[slot] {
            return Err("failed its check".into());
        }
        let [ops, recorded, _] = self.counters[slot];
        match SLOTS[slot] {
            Mode::Ferroprof | Mode::JemallocProf if recorded == 0 => {
                Err(format!("no sample in {ops} operations"))
            }
            Mode::Dhat if recorded < ops => Err(format!("{recorded} blocks for {ops} operations")),
            _ => Ok(()),
        }
    }

    /// Bytes allocated per operation, as dhat counted them (the workloads
    /// request the same layouts whatever the allocator).
    fn bytes_per_op(&self, checked: &[bool; 6]) -> Option<f64> {
        let dhat = Mode::Dhat.index();
        self.profiled(dhat, checked).ok()?;
        let [ops, _, bytes] = self.counters[dhat];
        (ops > 0).then(|| bytes as f64 / ops as f64)
    }

    /// "median (low–high)" of slot `num` over slot `den`, or why refused.
    fn ratio_text(&self, num: usize, den: usize, clock: Clock, checked: &[bool; 6]) -> String {
        let refused = [num, den]
            .into_iter()
            .find_map(|s| self.profiled(s, checked).err().map(|why| (s, why)));
        if let Some((slot, why)) = refused {
            return format!("refused: {} {why}", slot_name(slot));
        }
        let s = self.ratio(num, den, clock);
        match clock {
            Clock::Cpu => format!("{:.2} ({:.2}–{:.2})", s.median, s.low, s.high),
            Clock::Wall => format!("{:.2}", s.median),
        }
    }
}

fn env_or<T: std::str::FromStr>(name: &str, default: T) -> T {
    match std::env::var(name) {
        Ok(v) => v
            .parse()
            .unwrap_or_else(|_| panic!("{name}={v:?} is not a valid number")),
        Err(_) => default,
    }
}

fn load_average() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_else(|_| "unknown".into())
}

fn cpu_model() -> String {
    std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split(':').nth(1))
                .map(|m| m.trim().to_owned())
        })
        .unwrap_or_else(|| "unknown CPU".into())
}

/// Runs every cell and prints the report (Markdown) on stdout; progress on
/// stderr.
pub fn main() {
    let rounds: usize = env_or("ALLOC_PEERS_ROUNDS", DEFAULT_ROUNDS).max(1);
    let burst_us: u64 = env_or("ALLOC_PEERS_BURST_US", DEFAULT_BURST_US).max(1);
    let target_ns = burst_us as f64 * 1000.0;
    let load_before = load_average();
    let started = Instant::now();

    let mut children: Vec<Child> = (0..SLOTS.len()).map(Child::spawn).collect();
    let mut checked = [false; 6];
    let mut checks = String::new();
    for child in &mut children {
        let answer = child.ask("check");
        let (ok, seen) = match answer.split_once(' ') {
            Some(("ok", seen)) => (true, seen),
            Some((_, why)) => (false, why),
            None => (false, answer.as_str()),
        };
        checked[child.slot] = ok;
        let verdict = if ok {
            "ok"
        } else {
            "FAILED, its columns are refused"
        };
        writeln!(checks, "- {}: {verdict}: {seen}", child.name()).unwrap();
    }
    eprint!("{checks}");

    let mut cells = Vec::new();
    for threads in [1, 2] {
        for workload in Workload::ALL {
            eprintln!(
                "[{:>5.1} s] {} on {threads} thread(s): sizing bursts, then {rounds} rounds",
                started.elapsed().as_secs_f64(),
                workload.name()
            );
            cells.push(measure(&mut children, workload, threads, rounds, target_ns));
        }
    }
    let elapsed = started.elapsed().as_secs_f64();
    let load_after = load_average();
    for child in children {
        child.quit();
    }

    let mut out = String::new();
    let cpus = std::thread::available_parallelism().map_or(0, |n| n.get());
    writeln!(
        out,
        "{cpus} CPUs ({}); load average {load_before} at start, {load_after} at end; \
         {rounds} rounds per row, bursts of ~{burst_us} µs of CPU time; {elapsed:.0} s in all.\n",
        cpu_model()
    )
    .unwrap();
    writeln!(
        out,
        "Checks (each profiler proved it records before measuring):\n"
    )
    .unwrap();
    writeln!(out, "{checks}").unwrap();
    overhead_table(&mut out, &cells, &checked);
    wall_table(&mut out, &cells, &checked);
    ns_table(&mut out, &cells, &checked);
    recorded_table(&mut out, &cells, &checked);
    print!("{out}");
}

/// Sizes the bursts of one cell, then runs its rounds.
fn measure(
    children: &mut [Child],
    workload: Workload,
    threads: usize,
    rounds: usize,
    target_ns: f64,
) -> Cell {
    // Warm-up: sets up each thread's state (the window's ring of 4096
    // blocks) and faults in what it touches.
    for child in children.iter_mut() {
        child.run(workload, threads, 1);
    }
    let mut burst = [0; 6];
    for child in children.iter_mut() {
        let mut n = 1u64;
        while n < 1 << 32 && child.run(workload, threads, n).1 * (n as f64) < target_ns / 4.0 {
            n *= 4;
        }
        // The fastest of three bursts: the least disturbed by the load.
        let ns = (0..3)
            .map(|_| child.run(workload, threads, n).1)
            .fold(f64::INFINITY, f64::min);
        burst[child.slot] = ((target_ns / ns.max(0.1)) as u64).max(1);
    }
    let before: Vec<[u64; 3]> = children.iter_mut().map(Child::stats).collect();
    let mut cpu: [Vec<f64>; 6] = Default::default();
    let mut wall: [Vec<f64>; 6] = Default::default();
    for round in 0..rounds {
        for k in 0..children.len() {
            let child = &mut children[(round + k) % SLOTS.len()];
            let slot = child.slot;
            let (w, c) = child.run(workload, threads, burst[slot]);
            wall[slot].push(w);
            cpu[slot].push(c);
        }
    }
    let mut counters = [[0; 3]; 6];
    for (child, before) in children.iter_mut().zip(before) {
        let after = child.stats();
        counters[child.slot] = std::array::from_fn(|k| after[k] - before[k]);
    }
    Cell {
        workload,
        threads,
        cpu,
        wall,
        burst,
        counters,
    }
}

const JEMALLOC: usize = 0;
const FERROPROF: usize = 1;
const JEMALLOC_PROF: usize = 2;
const SYSTEM: usize = 3;
const DHAT: usize = 4;

fn overhead_table(out: &mut String, cells: &[Cell], checked: &[bool; 6]) {
    writeln!(
        out,
        "Cost of each profiler, in CPU time: median of the per-round ratios of \
         CPU ns per operation (quartiles in brackets); 1.00 = no cost. The last \
         column compares two bare-jemalloc processes: what this method cannot \
         resolve.\n"
    )
    .unwrap();
    writeln!(
        out,
        "| workload | threads | jemalloc ns/op | ferroprof / jemalloc | jemalloc prof / jemalloc \
         | System ns/op | dhat / System | dhat / jemalloc | A/A control |"
    )
    .unwrap();
    writeln!(out, "|---|--:|--:|--:|--:|--:|--:|--:|--:|").unwrap();
    for cell in cells {
        let r = |num, den| cell.ratio_text(num, den, Clock::Cpu, checked);
        writeln!(
            out,
            "| {} | {} | {:.1} | {} | {} | {:.1} | {} | {} | {} |",
            cell.workload.label(),
            cell.threads,
            cell.median_ns(JEMALLOC, Clock::Cpu),
            r(FERROPROF, JEMALLOC),
            r(JEMALLOC_PROF, JEMALLOC),
            cell.median_ns(SYSTEM, Clock::Cpu),
            r(DHAT, SYSTEM),
            r(DHAT, JEMALLOC),
            r(CONTROL, JEMALLOC),
        )
        .unwrap();
    }
    writeln!(out).unwrap();
}

fn wall_table(out: &mut String, cells: &[Cell], checked: &[bool; 6]) {
    writeln!(
        out,
        "The same bursts in wall time (median of the per-round ratios), which \
         also counts the time a thread waited: preempted by the machine's other \
         work, or for a lock.\n"
    )
    .unwrap();
    writeln!(
        out,
        "| workload | threads | ferroprof / jemalloc | jemalloc prof / jemalloc \
         | dhat / System | dhat / jemalloc | A/A control |"
    )
    .unwrap();
    writeln!(out, "|---|--:|--:|--:|--:|--:|--:|").unwrap();
    for cell in cells {
        let r = |num, den| cell.ratio_text(num, den, Clock::Wall, checked);
        writeln!(
            out,
            "| {} | {} | {} | {} | {} | {} | {} |",
            cell.workload.label(),
            cell.threads,
            r(FERROPROF, JEMALLOC),
            r(JEMALLOC_PROF, JEMALLOC),
            r(DHAT, SYSTEM),
            r(DHAT, JEMALLOC),
            r(CONTROL, JEMALLOC),
        )
        .unwrap();
    }
    writeln!(out).unwrap();
}

fn ns_table(out: &mut String, cells: &[Cell], checked: &[bool; 6]) {
    writeln!(
        out,
        "Median CPU ns per operation (per thread), and operations per burst:\n"
    )
    .unwrap();
    writeln!(
        out,
        "| workload | threads | jemalloc | ferroprof | jemalloc prof | System | dhat |"
    )
    .unwrap();
    writeln!(out, "|---|--:|--:|--:|--:|--:|--:|").unwrap();
    for cell in cells {
        let columns: Vec<String> = (0..CONTROL)
            .map(|slot| match cell.profiled(slot, checked) {
                Ok(()) => format!(
                    "{:.1} (×{})",
                    cell.median_ns(slot, Clock::Cpu),
                    cell.burst[slot]
                ),
                Err(_) => "refused".into(),
            })
            .collect();
        writeln!(
            out,
            "| {} | {} | {} |",
            cell.workload.label(),
            cell.threads,
            columns.join(" | ")
        )
        .unwrap();
    }
    writeln!(out).unwrap();
}

fn recorded_table(out: &mut String, cells: &[Cell], checked: &[bool; 6]) {
    writeln!(
        out,
        "What each profiler recorded over the rounds of the row. Bytes per \
         operation as dhat counted them; at a 512 KiB mean interval both \
         samplers should take about 2 samples per MiB allocated.\n"
    )
    .unwrap();
    writeln!(
        out,
        "| workload | threads | B/op | ferroprof samples | per MiB | jemalloc prof samples \
         | per MiB | dhat blocks | per op |"
    )
    .unwrap();
    writeln!(out, "|---|--:|--:|--:|--:|--:|--:|--:|--:|").unwrap();
    for cell in cells {
        let bytes_per_op = cell.bytes_per_op(checked);
        let per_mib = |slot: usize| {
            let [ops, samples, _] = cell.counters[slot];
            match (cell.profiled(slot, checked), bytes_per_op) {
                (Ok(()), Some(b)) if ops > 0 => {
                    format!(
                        "{:.2}",
                        samples as f64 / (ops as f64 * b / (1 << 20) as f64)
                    )
                }
                _ => "–".into(),
            }
        };
        let count = |slot: usize| {
            let [_, recorded, second] = cell.counters[slot];
            match cell.profiled(slot, checked) {
                // ferroprof's second counter is its dropped samples.
                Ok(()) if slot == FERROPROF && second > 0 => {
                    format!("{recorded} ({second} dropped)")
                }
                Ok(()) => recorded.to_string(),
                Err(why) => format!("refused: {why}"),
            }
        };
        let [dhat_ops, dhat_blocks, _] = cell.counters[DHAT];
        let blocks_per_op = match cell.profiled(DHAT, checked) {
            Ok(()) if dhat_ops > 0 => format!("{:.1}", dhat_blocks as f64 / dhat_ops as f64),
            _ => "–".into(),
        };
        writeln!(
            out,
            "| {} | {} | {} | {} | {} | {} | {} | {} | {} |",
            cell.workload.label(),
            cell.threads,
            bytes_per_op.map_or("–".into(), |b| format!("{b:.0}")),
            count(FERROPROF),
            per_mib(FERROPROF),
            count(JEMALLOC_PROF),
            per_mib(JEMALLOC_PROF),
            count(DHAT),
            blocks_per_op,
        )
        .unwrap();
    }
    writeln!(out).unwrap();
}
