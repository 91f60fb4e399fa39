//! What allocation profiling costs, ferroprof against its peers, as ratios
//! measured side by side in one run.
//!
//! ```sh
//! cd benches/peers
//! CARGO_TARGET_DIR=../../target/peers cargo bench --bench alloc_peers
//! # longer: more rounds (default 400), longer bursts (default 2000 µs)
//! ALLOC_PEERS_ROUNDS=2000 ALLOC_PEERS_BURST_US=4000 \
//!     CARGO_TARGET_DIR=../../target/peers cargo bench --bench alloc_peers
//! ```
//!
//! The report (Markdown tables) goes to stdout, progress to stderr. The
//! default run takes about a minute on an idle 2-vCPU machine, a few under
//! heavy load.
//!
//! # Configurations
//!
//! 1. bare jemalloc (`tikv_jemallocator::Jemalloc`, `prof:false`);
//! 2. ferroprof's `SamplingAllocator<Jemalloc>`, default 512 KiB interval;
//! 3. jemalloc's own heap profiling, `prof:true,lg_prof_sample:19` (the same
//!    512 KiB mean), plus `prof_stats:true` so that its sample counts can be
//!    read (it only adds work to sampled allocations);
//! 4. the system allocator (glibc), dhat's baseline;
//! 5. `dhat::Alloc` with a `dhat::Profiler` running: every allocation
//!    recorded with its backtrace (dhat's default: trimmed to 10 frames).
//!
//! Workloads (`workload`): alloc+free of 64 B and the 4096-live-block window
//! of `benches/window/mod.rs` (the allocator's `GlobalAlloc` methods called
//! directly), and a service-like request through the global allocator
//! (parse a JSON document into a `serde_json::Value`, index it into
//! `BTreeMap`s, build and serialize a response), each on 1 and on 2 threads.
//!
//! # One process per configuration
//!
//! The request workload allocates through `#[global_allocator]`, so the
//! allocator must be chosen per process: the benchmark re-executes itself
//! once per configuration (`parent`), and each child installs the allocator
//! its environment names (`global`) and serves timed bursts over a pipe
//! (`child`). The parent alternates short bursts of the children in
//! rotating order, so all see the same machine load, and reports the median
//! of the per-round ratios, as `examples/alloc_overhead.rs` does in the root
//! crate. Bursts are timed in each thread's CPU time (the main table: on a
//! shared machine it leaves out the time a child waits for a CPU between
//! two processes' bursts) and in wall time (a second table). A second
//! bare-jemalloc child is an A/A control: its ratio to the first is what
//! comparing separate processes cannot resolve (address-space layout, heap
//! history), a floor under the other ratios.
//!
//! jemalloc's profiling is configured per process too (`_RJEM_MALLOC_CONF`
//! in the jemalloc-prof child only) rather than with `prof:true,
//! prof_active:false` everywhere and `prof.active` switched on for its
//! bursts: `opt.prof` is fixed at start-up, and a `prof:true` process keeps
//! running jemalloc's sampling events and per-thread profiling state even
//! while inactive, so the bare rows would not be bare. Here the baseline
//! child checks that `opt.prof` is false, and the profiling child that
//! `prof.active` reads true at `lg_prof_sample` 19 and that 64 MiB kept live
//! shows up in a `prof.dump`.
//!
//! All jemalloc rows run over the one jemalloc of this crate, built with
//! `--enable-prof` (a Cargo feature, unified across the crate): that build
//! sends page-aligned small blocks off the sized-free fast path even with
//! profiling off, in the baseline as in ferroprof's row, so the ratios
//! compare like with like. The pair reuses one block, so before each pair
//! burst a thread sets aside page-aligned blocks until the one it will
//! reuse is not (`Worker::avoid_page_boundary`). The pair's single hot
//! block still makes it the row most sensitive to per-process differences:
//! read it against the A/A control (the root crate's
//! `examples/alloc_overhead.rs` measures ferroprof's pair in one process).
//!
//! Every profiler must prove it records: a child's `check` must pass, and
//! during each row ferroprof and jemalloc must have taken samples and dhat
//! must have recorded at least one block per operation, or the row's ratio
//! for that profiler is refused. The last table says how much each
//! recorded.
//!
//! The cost measured is the allocation path only: none of the three
//! profilers writes or uploads a profile during the bursts (ferroprof's
//! profiler thread is not started, jemalloc dumps only on request, dhat
//! writes its JSON when its profiler is dropped).

use global::{process_mode, Dispatch};

#[path = "alloc_peers/child.rs"]
mod child;
#[path = "alloc_peers/global.rs"]
mod global;
#[path = "alloc_peers/parent.rs"]
mod parent;
/// The `window` workload of the root crate's benches.
#[path = "../../window/mod.rs"]
mod window;
#[path = "alloc_peers/workload.rs"]
mod workload;

#[global_allocator]
static GLOBAL: Dispatch = Dispatch;

fn main() {
    match process_mode() {
        Some(mode) => child::main(mode),
        None => {
            if let Ok(name) = std::env::var(global::MODE_VAR) {
                panic!("unknown {}={name:?}", global::MODE_VAR);
            }
            parent::main();
        }
    }
}
