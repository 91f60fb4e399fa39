//! Every kind of profile ferroprof writes is read by Google's pprof with
//! the values, labels, comments and inline chains it was given: a profile
//! using every builder feature, and a sequence of delta profiles whose sum
//! is the cumulative profile.

mod support;

use std::path::Path;

use ferroprof::pprof::{self, Delta, FrameLine, LabelValue, MappingInfo, Profile, ProfileBuilder};
use support::pprof_tools::{self, Report};
use support::scratch::Scratch;

/// Writes `profile` to `name` in `dir` and reads it with pprof.
fn write_and_check(dir: &Path, name: &str, profile: &Profile) -> Report {
    let path = dir.join(name);
    std::fs::write(&path, pprof::encode(profile))
        .unwrap_or_else(|e| panic!("writing {}: {e}", path.display()));
    pprof_tools::check(&path)
}

fn line(function: &'static str, line: i64) -> FrameLine<'static> {
    FrameLine {
        function,
        system_name: function,
        file: "src/service.rs",
        line,
    }
}

/// A frame: its address and inline chain.
type Frame<'a> = (u64, &'a [FrameLine<'a>]);

/// Three stacks over a mapping, inline chains and a synthetic root frame,
/// with cumulative values scaled by `k`.
fn heap_like(k: i64, order: &[usize]) -> Profile {
    let mut b = ProfileBuilder::new(
        &[
            ("alloc_objects", "count"),
            ("alloc_space", "bytes"),
            ("inuse_objects", "count"),
            ("inuse_space", "bytes"),
        ],
        ("space", "bytes"),
        524288,
    );
    b.time(1_764_115_200_000_000_000 + k, 60_000_000_000);
    let m = b.mapping(&MappingInfo {
        memory_start: 0x5555_0000_0000,
        memory_limit: 0x5555_0010_0000,
        file_offset: 0x2000,
        filename: "/srv/bin/service",
        build_id: "0123456789abcdef",
        has_functions: true,
        has_lines: true,
        has_inline_frames: true,
    });
    let stacks: [(&[Frame], i64); 3] = [
        (
            &[
                (
                    0x5555_0000_1000,
                    &[line("encode_json", 10), line("handle_request", 20)],
                ),
                (0x5555_0000_2000, &[line("main", 5)]),
            ],
            3,
        ),
        (
            &[
                (0x5555_0000_3000, &[line("grow_cache", 30)]),
                (0x5555_0000_2000, &[line("main", 5)]),
            ],
            5,
        ),
        (&[(0x5555_0000_4000, &[line("compress", 40)])], 7),
    ];
    for &i in order {
        let (frames, weight) = stacks[i];
        let mut locations: Vec<u64> = frames
            .iter()
            .map(|(a, lines)| b.location(m, *a, lines))
            .collect();
        if i == 2 {
            locations.push(b.synthetic_location("[ferroprof: truncated stack]"));
        }
        b.sample(
            &locations,
            &[weight * k, weight * k * 512, weight, weight * 512],
            &[],
        );
    }
    b.build()
}

#[test]
fn a_profile_using_every_feature_reads_back_exactly() {
    let dir = Scratch::new("every-feature");
    let mut b = ProfileBuilder::new(
        &[("samples", "count"), ("cpu", "nanoseconds")],
        ("cpu", "nanoseconds"),
        10_000_000,
    );
    b.time(1_764_115_200_000_000_000, 60_000_000_000);
    b.comment("first comment");
    b.comment("second comment");
    b.drop_frames("^ferroprof::");
    b.default_sample_type("cpu");
    let m = b.mapping(&MappingInfo {
        memory_start: 0x40_0000,
        memory_limit: 0x80_0000,
        file_offset: 0,
        filename: "/usr/bin/service",
        build_id: "feedface",
        has_functions: true,
        has_lines: true,
        has_inline_frames: true,
    });
    let leaf = b.location(
        m,
        0x40_1000,
        &[line("inlined_helper", 3), line("worker", 9)],
    );
    let root = b.location(m, 0x40_2000, &[line("main", 1)]);
    let dropped = b.synthetic_location("[ferroprof: dropped samples]");
    b.sample(
        &[leaf, root],
        &[2, 20_000_000],
        &[
            ("thread id", LabelValue::Num(4242, "")),
            ("thread name", LabelValue::Str("worker-1")),
        ],
    );
    b.sample(
        &[root],
        &[1, 10_000_000],
        &[
            ("thread name", LabelValue::Str("main")),
            ("bytes", LabelValue::Num(512, "bytes")),
        ],
    );
    b.sample(&[dropped], &[4, 40_000_000], &[]);
    let r = write_and_check(dir.path(), "every_feature.pprof", &b.build());

    assert_eq!(r.sample_types, ["samples/count", "cpu/nanoseconds"]);
    assert_eq!(
        (r.period_type.as_str(), r.period),
        ("cpu/nanoseconds", 10_000_000)
    );
    assert_eq!(
        (r.time_nanos, r.duration_nanos),
        (1_764_115_200_000_000_000, 60_000_000_000)
    );
    assert_eq!(r.totals, [7, 70_000_000]);
    assert_eq!(
        r.flat["inlined_helper"],
        [2, 20_000_000],
        "the innermost inline line is the leaf"
    );
    assert_eq!(r.cum["worker"], [2, 20_000_000]);
    assert_eq!(r.cum["main"], [3, 30_000_000]);
    assert_eq!(r.flat["[ferroprof: dropped samples]"], [4, 40_000_000]);
    assert_eq!(r.comments, ["first comment", "second comment"]);
    assert_eq!(r.labels["thread id"], ["4242"]);
    assert_eq!(r.labels["thread name"], ["main", "worker-1"]);
    assert_eq!(r.labels["bytes"], ["512 bytes"]);
    let [mapping] = &r.mappings[..] else {
        panic!("{:?}", r.mappings)
    };
    assert_eq!(
        (mapping.file.as_str(), mapping.build_id.as_str()),
        ("/usr/bin/service", "feedface")
    );
    assert_eq!((mapping.start, mapping.limit), (0x40_0000, 0x80_0000));
}

#[test]
fn delta_profiles_read_back_and_sum_to_the_cumulative_one() {
    let dir = Scratch::new("delta-profiles");
    let mut delta = Delta::new(&["alloc_objects", "alloc_space"]);
    let orders: [&[usize]; 4] = [&[0, 1, 2], &[2, 0, 1], &[1, 2, 0], &[0, 2, 1]];
    let mut sums: std::collections::HashMap<String, Vec<i64>> = Default::default();
    let mut last = None;
    for (period, order) in orders.iter().enumerate() {
        let k = [1, 4, 4, 9][period];
        let out = delta.apply(heap_like(k, order));
        let r = write_and_check(dir.path(), &format!("delta_{period}.pprof"), &out);
        for (f, v) in &r.flat {
            let s = sums.entry(f.clone()).or_insert_with(|| vec![0; v.len()]);
            for (s, v) in s.iter_mut().zip(v) {
                *s += v;
            }
        }
        assert!(
            r.stacks.iter().all(|s| s.values.iter().all(|&v| v >= 0)),
            "{r:?}"
        );
        if period == 2 {
            // Nothing was allocated: only in-use values remain.
            assert_eq!(r.total("alloc_space"), 0);
            assert_eq!(r.total("inuse_space"), 15 * 512);
        }
        last = Some(r);
    }
    let cumulative = write_and_check(dir.path(), "cumulative.pprof", &heap_like(9, &[0, 1, 2]));
    let last = last.unwrap();
    for (f, v) in &cumulative.flat {
        let alloc = last.value("alloc_space");
        let inuse = last.value("inuse_space");
        assert_eq!(sums[f][alloc], v[alloc], "alloc_space of {f}");
        assert_eq!(
            last.flat[f][inuse], v[inuse],
            "inuse_space of {f} is the snapshot"
        );
    }
}
