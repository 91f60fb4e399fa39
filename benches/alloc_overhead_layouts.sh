#!/bin/sh
# examples/alloc_overhead.rs over code layouts: one build and one run per
# pair of paddings, then the median of each row over the layouts.
# FERROPROF_LAYOUT_PAD bytes go before the benchmark loops, the allocators'
# code and jemalloc's, so all of them move; FERROPROF_LAYOUT_LOOP_PAD bytes
# go at the start of the loops' functions, so the loops move against the
# allocators. A ratio of two ~5 ns operations moves by several percent
# with where the code lands against cache lines; one build is one draw of
# that, the median over layouts is the number to quote (BENCHMARKS.md).
#
#   benches/alloc_overhead_layouts.sh       # 4 x 4 layouts, ~5 minutes
#   PADS="0" LOOP_PADS="0 16" benches/alloc_overhead_layouts.sh
set -eu
cd "$(dirname "$0")/.."
pads=${PADS:-"0 16 32 48"}
loop_pads=${LOOP_PADS:-"0 16 32 48"}
out=$(mktemp)
rows=$(mktemp)
trap 'rm -f "$out" "$rows"' EXIT
printf '%6s %8s %8s %8s %8s %8s %8s\n' pads window off "A/A" "pair 16" "pair 64" "sample"
for pad in $pads; do
for loop_pad in $loop_pads; do
    export FERROPROF_LAYOUT_PAD=$pad FERROPROF_LAYOUT_LOOP_PAD=$loop_pad
    cargo build --quiet --release --example alloc_overhead
    "${CARGO_TARGET_DIR:-target}/release/examples/alloc_overhead" > "$out"
    awk -v pad="$pad/$loop_pad" '
        /^pair 16 B/        { p16 = $6 }
        /^pair 64 B/        { p64 = $6 }
        /^window 4096 live/ { w = $6 }
        /sampling off/      { off = $5 }
        /A\/A control/      { aa = $5 }
        /per sample/        { s = $3 }
        END { printf "%6s %8s %8s %8s %8s %8s %8s\n", pad, w, off, aa, p16, p64, s }
    ' "$out" | tee -a "$rows"
done
done
awk '
    { for (c = 2; c <= 7; c++) v[c, NR] = $c; n = NR }
    END {
        printf "%6s", "median"
        for (c = 2; c <= 7; c++) {
            for (i = 1; i <= n; i++) a[i] = v[c, i] + 0
            # insertion sort: a handful of values
            for (i = 2; i <= n; i++) { x = a[i]; j = i - 1; while (j > 0 && a[j] > x) { a[j + 1] = a[j]; j-- } a[j + 1] = x }
            m = (n % 2) ? a[(n + 1) / 2] : (a[n / 2] + a[n / 2 + 1]) / 2
            printf c < 7 ? " %8.3f" : " %8.0f", m
        }
        printf "\n"
    }' "$rows"
