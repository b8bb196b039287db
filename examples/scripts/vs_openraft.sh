#!/bin/bash
# Side by side with openraft's benchmarks/minimal (3 nodes in one process, in-memory, no-op
# state machine), interleaved in one run: for each round and each client count, openraft's
# bench, then each bench-mem binary given (e.g. a BEFORE and an AFTER build), writes only.
# Prints, per run, the throughput and the CPU time per write: for openraft its whole process's
# user+sys time (bash `time`, set-up included) over its operations; for bench-mem its own
# measured-window column (the process's CPU time during the measured window over its writes).
# usage: vs_openraft.sh OPENRAFT_BENCH ROUNDS SECONDS BENCH_MEM...
# OPENRAFT_BENCH is openraft's `bench` binary (`cargo build --release --bin bench` in a copy of
# its repository's benchmarks/minimal, outside this repository). CLIENTS overrides the client
# counts (default "1 64 256 1024 4096").
set -u
openraft=$1; rounds=$2; secs=$3; shift 3
clients=${CLIENTS:-"1 64 256 1024 4096"}
# openraft's operations per run: about as long as a bench-mem level on this machine.
declare -A ops=([1]=50000 [64]=2000000 [256]=3000000 [1024]=4000000 [4096]=4000000)
TIMEFORMAT='%U %S'
printf '%-6s %-7s %-22s %12s %12s\n' round clients binary ops/s "cpu-µs/write"
for r in $(seq 1 "$rounds"); do
  echo "# round $r $(date -u +%T) load $(cut -d' ' -f1-3 /proc/loadavg)"
  for c in $clients; do
    n=${ops[$c]:-4000000}
    out=$( { time "$openraft" -c "$c" -n "$n" -m 3 > /tmp/vs_openraft.$$ 2>&1; } 2>&1 )
    # Its last line: "...: time: ..., ns/op: N, op/ms: M".
    ns=$(grep -o "ns/op: [0-9]*" /tmp/vs_openraft.$$ | tail -1 | awk '{print $2}')
    rate=$(awk -v ns="${ns:-0}" 'BEGIN { if (ns > 0) printf "%.0f", 1e9 / ns; else print "-" }')
    cpu=$(echo "$out" | tail -1 | awk -v n="$n" '{printf "%.2f", ($1 + $2) * 1e6 / n}')
    printf '%-6s %-7s %-22s %12s %12s\n' "$r" "$c" openraft "$rate" "$cpu"
    for b in "$@"; do
      "$b" --seconds "$secs" --clients "$c" --writes-only > /tmp/vs_openraft.$$ 2>&1
      # The first table's row for $c holds ops/s; the CPU table's row holds µs/write.
      read -r rate us < <(awk -v c="$c" '$1 == c { n++; if (n == 1) r = $3; if (n == 2) u = $5 }
        END { print r, u }' /tmp/vs_openraft.$$)
      printf '%-6s %-7s %-22s %12s %12s\n' "$r" "$c" "$(basename "$(dirname "$b")")/$(basename "$b")" "$rate" "$us"
    done
  done
done
rm -f /tmp/vs_openraft.$$
