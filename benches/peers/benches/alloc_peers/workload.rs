//! The three workloads, run by each thread of a child in timed bursts.
//!
//! - `pair`: alloc+free of 64 B, calling the allocator directly.
//! - `window`: the ring of 4096 live blocks of `benches/window/mod.rs` (the
//!   same fixed size mix as the root crate's `alloc` bench), calling the
//!   allocator directly.
//! - `json`: a service-like request through the global allocator: parse a
//!   JSON document into a `serde_json::Value` tree, index it into
//!   `BTreeMap`s, build a response tree, serialize it, drop everything. The
//!   documents are generated once per process from a fixed seed, so every
//!   child allocates the same sequence of layouts.
//!
//! Each [`Worker`] belongs to one thread; its state (the window's ring, the
//! position in the documents) survives from burst to burst, and is set up
//! outside the timed part of a burst. A burst is timed twice ([`Clock`]):
//! wall time, and the thread's own CPU time, which leaves out the time the
//! thread spent preempted by other processes of a loaded machine.

use std::alloc::GlobalAlloc;
use std::collections::BTreeMap;
use std::hint::black_box;
use std::sync::OnceLock;
use std::time::Instant;

use serde_json::{json, Map, Value};

use crate::window::{layout, Window, SIZES};

/// One kind of operation, timed per operation.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Workload {
    /// alloc+free of one 64 B block.
    Pair,
    /// One step of the 4096-block window: free the oldest, allocate the next.
    Window,
    /// One request of the realistic workload.
    Json,
}

impl Workload {
    /// Every workload, in the order of the tables.
    pub const ALL: [Workload; 3] = [Workload::Pair, Workload::Window, Workload::Json];

    /// Its name in the protocol between parent and children.
    pub fn name(self) -> &'static str {
        match self {
            Workload::Pair => "pair",
            Workload::Window => "window",
            Workload::Json => "json",
        }
    }

    /// Its name in the tables.
    pub fn label(self) -> &'static str {
        match self {
            Workload::Pair => "alloc+free 64 B",
            Workload::Window => "window, 4096 live",
            Workload::Json => "JSON + BTreeMap request",
        }
    }

    /// The workload named `name`, if any.
    pub fn from_name(name: &str) -> Option<Workload> {
        Workload::ALL.into_iter().find(|w| w.name() == name)
    }
}

/// Size of the `pair` block.
const PAIR_SIZE: usize = 64;

/// One thread's workload state over allocator `A` (pair and window; the
/// JSON workload uses the global allocator, which is `A` in the child).
pub struct Worker<A: GlobalAlloc + 'static> {
    alloc: &'static A,
    thread: usize,
    window: Option<Window<'static, A>>,
    next_doc: usize,
    /// Page-aligned pair blocks set aside (see `avoid_page_boundary`).
    aside: Vec<*mut u8>,
}

impl<A: GlobalAlloc + 'static> Drop for Worker<A> {
    fn drop(&mut self) {
        for &p in &self.aside {
            // SAFETY: allocated from `self.alloc` with the pair's layout by
            // `avoid_page_boundary`, freed once here.
            unsafe { self.alloc.dealloc(p, layout(PAIR_SIZE)) };
        }
    }
}

impl<A: GlobalAlloc + 'static> Worker<A> {
    /// The state of thread number `thread` (0 or 1) of a child.
    pub fn new(alloc: &'static A, thread: usize) -> Self {
        Worker {
            alloc,
            thread,
            window: None,
            // Each thread walks the documents from its own place.
            next_doc: thread * DOCS / 2,
            aside: Vec::new(),
        }
    }

    /// Makes sure the block the pair will reuse (the top of the thread's
    /// cache for its size) does not start a page, by setting such blocks
    /// aside.
    ///
    /// The jemalloc of this crate is built with `--enable-prof`, which sends
    /// the sized free of any page-aligned small block off the fast path (it
    /// might be a sampled one), profiling on or off. A real workload meets
    /// that on 1 in 64 frees of 64 B blocks (the window shows it); the pair
    /// frees one block over and over, so it would be all or nothing, decided
    /// by the heap's history. Other per-process differences remain on this
    /// row (the A/A control shows them).
    fn avoid_page_boundary(&mut self) {
        let layout = layout(PAIR_SIZE);
        loop {
            // SAFETY: a non-zero size; the block is either freed at once
            // with its layout or kept in `aside` and freed on drop.
            let p = unsafe { self.alloc.alloc(layout) };
            assert!(!p.is_null());
            if !(p as usize).is_multiple_of(4096) {
                // SAFETY: allocated just above with `layout`.
                unsafe { self.alloc.dealloc(p, layout) };
                return;
            }
            self.aside.push(p);
        }
    }

    /// Runs `n` operations of `workload`; returns the time they took.
    pub fn run(&mut self, workload: Workload, n: u64) -> Elapsed {
        match workload {
            Workload::Pair => {
                self.avoid_page_boundary();
                pairs(self.alloc, n)
            }
            Workload::Window => {
                let (alloc, start) = (self.alloc, self.thread * SIZES / 2);
                steps(
                    self.window.get_or_insert_with(|| Window::new(alloc, start)),
                    n,
                )
            }
            Workload::Json => requests(corpus(), &mut self.next_doc, n),
        }
    }
}

/// The duration of a burst.
#[derive(Clone, Copy, Debug, Default)]
pub struct Elapsed {
    /// Wall-clock nanoseconds.
    pub wall: u64,
    /// Nanoseconds of CPU time of the calling thread.
    pub cpu: u64,
}

/// A started burst: wall clock and the thread's CPU clock.
struct Clock {
    wall: Instant,
    cpu: u64,
}

impl Clock {
    #[inline(always)]
    fn start() -> Clock {
        let cpu = thread_cpu_ns();
        Clock {
            wall: Instant::now(),
            cpu,
        }
    }

    #[inline(always)]
    fn stop(self) -> Elapsed {
        let wall = self.wall.elapsed().as_nanos() as u64;
        Elapsed {
            wall,
            cpu: thread_cpu_ns() - self.cpu,
        }
    }
}

/// CPU time consumed by the calling thread, in nanoseconds.
fn thread_cpu_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a valid, writable `timespec`.
    let rc = unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) };
    assert_eq!(rc, 0, "clock_gettime(CLOCK_THREAD_CPUTIME_ID)");
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

/// `n` alloc+free pairs of [`PAIR_SIZE`] bytes from `a`.
#[inline(never)]
fn pairs<A: GlobalAlloc>(a: &A, n: u64) -> Elapsed {
    let layout = black_box(layout(PAIR_SIZE));
    let clock = Clock::start();
    for _ in 0..n {
        // SAFETY: `layout` has a non-zero size; the block is freed at once,
        // to the allocator that allocated it, with the same layout.
        unsafe {
            let p = a.alloc(layout);
            assert!(!p.is_null());
            a.dealloc(black_box(p), layout);
        }
    }
    clock.stop()
}

/// `n` steps of `window`.
#[inline(never)]
fn steps<A: GlobalAlloc>(window: &mut Window<'_, A>, n: u64) -> Elapsed {
    let clock = Clock::start();
    for _ in 0..n {
        window.step();
    }
    clock.stop()
}

/// `n` requests over `docs`, continuing from `*next`.
#[inline(never)]
fn requests(docs: &[String], next: &mut usize, n: u64) -> Elapsed {
    let clock = Clock::start();
    for _ in 0..n {
        black_box(request(&docs[*next % DOCS], *next as u64));
        *next = next.wrapping_add(1);
    }
    clock.stop()
}

/// One request: parse, index, build a response, serialize; everything is
/// dropped on return. Returns the response's length.
fn request(doc: &str, id: u64) -> usize {
    let v: Value = serde_json::from_str(doc).expect("the corpus is valid JSON");
    let items = v["items"].as_array().map_or(&[][..], Vec::as_slice);
    let mut attrs: BTreeMap<String, (u64, f64)> = BTreeMap::new();
    let mut by_tag: BTreeMap<String, Vec<u64>> = BTreeMap::new();
    for item in items {
        let item_id = item["id"].as_u64().unwrap_or(0);
        for (key, value) in item["attrs"].as_object().into_iter().flatten() {
            let weight = value
                .as_f64()
                .unwrap_or_else(|| value.as_str().map_or(0, str::len) as f64);
            let entry = attrs.entry(key.clone()).or_insert((0, 0.0));
            entry.0 += 1;
            entry.1 += weight;
        }
        for tag in item["tags"].as_array().into_iter().flatten() {
            let tag = tag.as_str().unwrap_or_default().to_owned();
            by_tag.entry(tag).or_default().push(item_id);
        }
    }
    let top: Vec<Value> = items
        .iter()
        .filter(|item| item["active"] == true)
        .take(16)
        .map(|item| json!({"id": item["id"], "name": item["name"], "score": item["score"]}))
        .collect();
    let response = json!({
        "request": id,
        "service": v["service"],
        "attrs": attrs
            .iter()
            .map(|(key, (count, sum))| json!({"key": key, "count": count, "sum": sum}))
            .collect::<Vec<_>>(),
        "tags": by_tag,
        "top": top,
    });
    serde_json::to_string(&response)
        .expect("a Value serializes")
        .len()
}

/// Number of documents in the corpus.
const DOCS: usize = 32;

/// Vocabulary of names, tags and string values.
const WORDS: [&str; 24] = [
    "alpha", "bravo", "charlie", "delta", "echo", "foxtrot", "golf", "hotel", "india", "juliett",
    "kilo", "lima", "mike", "november", "oscar", "papa", "quebec", "romeo", "sierra", "tango",
    "uniform", "victor", "whiskey", "xray",
];

/// The documents, generated once per process from a fixed seed: [`ITEMS`]
/// items each, every item with a few tags, attributes and a numeric history
/// of random lengths. All documents have the same number of items, so that a
/// request costs about the same whichever document it gets: children run
/// bursts of different lengths, and so are at different places in the
/// corpus in a given round.
pub fn corpus() -> &'static [String] {
    static DOCUMENTS: OnceLock<Vec<String>> = OnceLock::new();
    DOCUMENTS.get_or_init(|| {
        let mut rng = Rng(0x9E37_79B9_7F4A_7C15);
        (0..DOCS).map(|_| document(&mut rng)).collect()
    })
}

/// xorshift64* (Vigna), as in `benches/window/mod.rs`.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D) >> 32
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }

    fn word(&mut self) -> &'static str {
        WORDS[self.below(WORDS.len() as u64) as usize]
    }
}

/// Items per document.
const ITEMS: u64 = 32;

fn document(rng: &mut Rng) -> String {
    let items: Vec<Value> = (0..ITEMS).map(|id| item(rng, id)).collect();
    let service = rng.word();
    let request_id = format!("{:016x}", rng.next());
    let ts = 1_700_000_000_000 + rng.below(1 << 30);
    json!({"service": service, "request_id": request_id, "ts": ts, "items": items}).to_string()
}

fn item(rng: &mut Rng, id: u64) -> Value {
    let words = 2 + rng.below(4);
    let name = (0..words).map(|_| rng.word()).collect::<Vec<_>>().join("-");
    let tags: Vec<&str> = (0..1 + rng.below(5)).map(|_| rng.word()).collect();
    let mut attrs = Map::new();
    for _ in 0..rng.below(7) {
        let key = format!("attr_{}", rng.below(16));
        let value = if rng.below(2) == 0 {
            Value::from(rng.below(10_000))
        } else {
            let times = 1 + rng.below(3) as usize;
            Value::from(rng.word().repeat(times))
        };
        attrs.insert(key, value);
    }
    let history: Vec<f64> = (0..rng.below(21))
        .map(|_| rng.below(1_000_000) as f64 / 1000.0)
        .collect();
    let score = rng.below(100_000) as f64 / 100.0;
    let active = rng.below(4) != 0;
    json!({
        "id": id, "name": name, "score": score, "active": active,
        "tags": tags, "attrs": attrs, "history": history,
    })
}
