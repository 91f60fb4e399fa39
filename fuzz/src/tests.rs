//! Every target over its seeds, its regressions and pseudo-random inputs
//! (a fixed SplitMix64 sequence: the same inputs on every run), on stable.
//!
//! A failing input is written to the system's temporary folder, and the
//! panic says where: copy it to `regressions/<target>/` once understood.
//! `cargo test --release -- --ignored write_seeds` rewrites the generated
//! seeds (`seeds/*/gen-*`).

use std::hash::{Hash, Hasher};
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::{Path, PathBuf};

use crate::{Body, SplitMix64, TARGETS};

/// Pseudo-random inputs per target, after the files.
const RANDOM_INPUTS: u64 = 20_000;

fn folder(kind: &str, target: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join(kind)
        .join(target)
}

/// The files of `seeds/<target>/` and `regressions/<target>/`, by name.
fn files(target: &str) -> Vec<(String, Vec<u8>)> {
    let mut out = Vec::new();
    for kind in ["seeds", "regressions"] {
        let Ok(dir) = std::fs::read_dir(folder(kind, target)) else {
            continue;
        };
        let mut paths: Vec<PathBuf> = dir.map(|e| e.unwrap().path()).collect();
        paths.sort();
        for path in paths.into_iter().filter(|p| p.is_file()) {
            out.push((path.display().to_string(), std::fs::read(&path).unwrap()));
        }
    }
    out
}

/// Runs `body` on `data`; on a panic, saves `data` and fails saying where.
fn run_one(target: &str, body: Body, what: &str, data: &[u8]) {
    if catch_unwind(AssertUnwindSafe(|| body(data))).is_err() {
        let mut h = std::collections::hash_map::DefaultHasher::new();
        data.hash(&mut h);
        let path =
            std::env::temp_dir().join(format!("ferroprof-fuzz-{target}-{:016x}", h.finish()));
        std::fs::write(&path, data).unwrap();
        panic!(
            "{target} failed on {what} (above); the input is in {}",
            path.display()
        );
    }
}

/// `seed` changed in one to four places, as a fuzzer would.
fn mutate(rng: &mut SplitMix64, seed: &[u8]) -> Vec<u8> {
    let mut v = seed.to_vec();
    for _ in 0..1 + rng.below(4) {
        let at = |rng: &mut SplitMix64, v: &Vec<u8>| rng.below(v.len() as u64 + 1) as usize;
        match rng.below(6) {
            0 if !v.is_empty() => {
                let i = rng.below(v.len() as u64) as usize;
                v[i] ^= 1 << rng.below(8);
            }
            1 if !v.is_empty() => {
                let i = rng.below(v.len() as u64) as usize;
                v[i] = [0, 0xff, 0x7f, 0x80, b',', b':'][rng.below(6) as usize];
            }
            2 => {
                let i = at(rng, &v);
                let n = rng.below(16) as usize;
                v.splice(i..i, rng.bytes(n));
            }
            3 => {
                let i = at(rng, &v);
                let n = (rng.below(32) as usize).min(v.len() - i);
                v.drain(i..i + n);
            }
            4 => {
                let i = at(rng, &v);
                let n = (rng.below(64) as usize).min(v.len() - i);
                let copy = v[i..i + n].to_vec();
                let j = at(rng, &v);
                v.splice(j..j, copy);
            }
            _ => {
                let i = at(rng, &v);
                v.truncate(i);
            }
        }
    }
    v
}

/// Runs target `name` over its files, then over [`RANDOM_INPUTS`]
/// inputs: random bytes, or a file mutated.
fn exercise(name: &str) {
    let body = TARGETS.iter().find(|t| t.0 == name).unwrap().1;
    let files = files(name);
    for (path, data) in &files {
        run_one(name, body, path, data);
    }
    let mut h = std::collections::hash_map::DefaultHasher::new();
    name.hash(&mut h);
    let mut rng = SplitMix64(h.finish());
    for i in 0..RANDOM_INPUTS {
        let data = if !files.is_empty() && rng.below(2) == 0 {
            let seed = &files[rng.below(files.len() as u64) as usize].1;
            mutate(&mut rng, seed)
        } else {
            let len = rng.below(600) as usize;
            rng.bytes(len)
        };
        run_one(name, body, &format!("pseudo-random input {i}"), &data);
    }
}

#[test]
fn pprof_decode() {
    exercise("pprof_decode");
}

#[test]
fn delta() {
    exercise("delta");
}

#[test]
fn config_env() {
    exercise("config_env");
}

#[test]
fn event_multipart() {
    exercise("event_multipart");
}

#[test]
fn cgroup() {
    exercise("cgroup");
}

#[test]
fn live_table() {
    exercise("live_table");
}

#[test]
fn every_target_has_seeds_and_a_binary() {
    for (name, _) in TARGETS {
        assert!(!files(name).is_empty(), "no seeds for {name}");
        let bin = Path::new(env!("CARGO_MANIFEST_DIR")).join(format!("fuzz_targets/{name}.rs"));
        assert!(bin.is_file(), "no {}", bin.display());
    }
}

/// A `,` in the service, env or version would split `tags_profiler` into
/// tags of its own; an empty one would send an empty tag. Both are refused.
#[test]
fn a_comma_in_a_tag_value_is_refused() {
    use ferroprof::fuzzing::{event_upload, EventInput};
    for (service, env, via_env) in [
        ("a,host:spoofed", None, false),
        ("a,host:spoofed", None, true),
        ("checkout", Some(" ".to_owned()), false),
        ("checkout", Some("prod,x:y".to_owned()), true),
    ] {
        let upload = event_upload(EventInput {
            service: service.into(),
            env: env.clone(),
            version: None,
            tags: vec![],
            via_env,
            seq: 0,
            start: std::time::UNIX_EPOCH,
            end: std::time::UNIX_EPOCH,
            files: vec![],
        });
        assert!(
            upload.is_err(),
            "{service:?} {env:?} via_env {via_env}: {upload:?}"
        );
    }
}

/// Writes the generated seeds: profiles made with `ProfileBuilder` (gzip
/// and raw) for `pprof_decode` and `delta`, environments for
/// `config_env`, cgroup files for `cgroup`. The real profiles among the
/// seeds (`seeds/pprof_decode/real-*`) come from the demo's output folder
/// and are not rewritten.
#[test]
#[ignore = "writes files; run by hand to regenerate the seeds"]
fn write_seeds() {
    use ferroprof::fuzzing::encode_raw;
    use ferroprof::pprof::{encode, FrameLine, LabelValue, MappingInfo, ProfileBuilder};

    let write = |target: &str, name: &str, bytes: &[u8]| {
        let dir = folder("seeds", target);
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join(format!("gen-{name}")), bytes).unwrap();
    };
    let heap = |bump: i64| {
        let mut b = ProfileBuilder::new(
            &[
                ("alloc_objects", "count"),
                ("alloc_space", "bytes"),
                ("inuse_objects", "count"),
                ("inuse_space", "bytes"),
            ],
            ("space", "bytes"),
            524_288,
        );
        b.time(1_700_000_000_000_000_000 + bump, 60_000_000_000);
        b.default_sample_type("alloc_space");
        let m = b.mapping(&MappingInfo {
            memory_start: 0x40_0000,
            memory_limit: 0x80_0000,
            file_offset: 0,
            filename: "/usr/bin/service",
            build_id: "00112233445566778899aabbccddeeff00112233",
            has_functions: true,
            has_lines: true,
            has_inline_frames: true,
        });
        let line = |function, line| FrameLine {
            function,
            system_name: "",
            file: "src/main.rs",
            line,
        };
        let a = b.location(m, 0x40_1000, &[line("alloc_inner", 7), line("alloc", 12)]);
        let c = b.location(m, 0x40_2000, &[line("main", 40)]);
        let t = b.synthetic_location("[ferroprof: truncated stack]");
        b.sample(&[a, c], &[2 + bump, 1024 + 512 * bump, 1, 512], &[]);
        b.sample(
            &[t, c],
            &[bump, 64 * bump, 0, 0],
            &[("thread name", LabelValue::Str("worker-1"))],
        );
        b.sample(
            &[c],
            &[5, 5000, -1, 0],
            &[("thread id", LabelValue::Num(7, ""))],
        );
        b.build()
    };
    let cpu = {
        let mut b = ProfileBuilder::new(
            &[("samples", "count"), ("cpu", "nanoseconds")],
            ("cpu", "nanoseconds"),
            10_000_000,
        );
        b.comment("ferroprof");
        let l = b.location(
            0,
            0x1234,
            &[FrameLine {
                function: "spin",
                system_name: "_ZN4spin",
                file: "",
                line: 0,
            }],
        );
        b.sample(&[l], &[3, 30_000_000], &[]);
        b.build()
    };
    write("pprof_decode", "heap.pprof", &encode(&heap(1)));
    write("pprof_decode", "heap.pb", &encode_raw(&heap(1)));
    write("pprof_decode", "cpu.pb", &encode_raw(&cpu));
    write("pprof_decode", "empty.pb", b"");

    // `delta`'s two-profile form: 1, the first's length (u16 LE), both.
    let pair = |a: &[u8], b: &[u8]| {
        let mut v = vec![1];
        v.extend((a.len() as u16).to_le_bytes());
        v.extend(a);
        v.extend(b);
        v
    };
    let (one, two) = (encode_raw(&heap(1)), encode_raw(&heap(3)));
    write("delta", "heap-pair.pb", &pair(&one, &two));
    write("delta", "heap-pair-restart.pb", &pair(&two, &one));
    write("delta", "heap-then-cpu.pb", &pair(&one, &encode_raw(&cpu)));
    let mut rng = SplitMix64(7);
    for i in 0..3 {
        let mut v = vec![0];
        v.extend(rng.bytes(256 << i));
        write("delta", &format!("steps-{i}"), &v);
    }

    let env = |vars: &[(&str, &str)]| {
        let fields: Vec<&str> = vars.iter().flat_map(|(n, v)| [*n, *v]).collect();
        fields.join("\0").into_bytes()
    };
    let key = "0123456789abcdef0123456789abcdef";
    let seeds: [(&str, Vec<u8>); 6] = [
        (
            "agent",
            env(&[
                ("DD_SERVICE", "checkout"),
                ("DD_ENV", "prod"),
                ("DD_VERSION", "1.4.2"),
                ("DD_TAGS", "team:payments, zone:a env:staging"),
                ("DD_AGENT_HOST", "fd00::7"),
                ("DD_TRACE_AGENT_PORT", "9126"),
                ("DD_PROFILING_UPLOAD_TIMEOUT", "1m30.5s"),
                ("DD_PROFILING_MAX_FRAMES", "128"),
                ("DD_PROFILING_HEAP_SAMPLE_SIZE", "0"),
                ("DD_PROFILING_DELTA", "F"),
                ("DD_TRACE_STARTUP_LOGS", "0"),
                ("DD_PROFILING_OUTPUT_DIR", "profiles"),
            ]),
        ),
        (
            "agentless",
            env(&[
                ("DD_PROFILING_AGENTLESS", "true"),
                ("DD_API_KEY", key),
                ("DD_SITE", "datadoghq.eu"),
            ]),
        ),
        (
            "agentless-bad-key",
            env(&[("DD_PROFILING_AGENTLESS", "1"), ("DD_API_KEY", "hunter22")]),
        ),
        (
            "urls",
            env(&[
                ("DD_TRACE_AGENT_URL", "unix:///var/run/datadog/apm.socket"),
                (
                    "DD_PROFILING_URL",
                    "https://user:pw@intake.example:8443/x?y",
                ),
                ("DD_API_KEY", key),
            ]),
        ),
        (
            "bad-values",
            env(&[
                ("DD_PROFILING_UPLOAD_TIMEOUT", "99999999999999999999h"),
                ("DD_TRACE_AGENT_PORT", "0"),
                ("DD_PROFILING_ENABLED", "yes"),
            ]),
        ),
        ("disabled", env(&[("DD_PROFILING_ENABLED", "false")])),
    ];
    for (name, bytes) in seeds {
        write("config_env", name, &bytes);
    }

    write(
        "cgroup",
        "docker",
        b"0::/system.slice/docker-3726184226f5d3147c25fdeab5b60097e378e8a720503a5e19ecfdf29f869860.scope\n",
    );
    write(
        "cgroup",
        "ecs",
        b"9:perf_event:/ecs/task/34dc0b5e626f2c5c4c5170e34b10e765-1234567890\n1:cpu:/\n",
    );
    write(
        "cgroup",
        "kubepods",
        b"1:name=systemd:/kubepods/pod/5c2a6d13-4c8f-4b6e-9b0e-2c3d4e5f6a7b\n0::/\n",
    );
    write(
        "cgroup",
        "none",
        b"0::/user.slice/user-1000.slice/session-2.scope\n",
    );

    for (target, sizes) in [("event_multipart", [64, 400]), ("live_table", [64, 1024])] {
        for (i, n) in sizes.into_iter().enumerate() {
            write(target, &format!("random-{i}"), &rng.bytes(n));
        }
    }
}
