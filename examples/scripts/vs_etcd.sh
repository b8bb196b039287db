#!/bin/bash
# Side by side with etcd 3.4, interleaved, on one disk: each round starts a fresh 3-member etcd
# cluster (etcd3.sh), runs etcdbench at 1, 64 and 256 clients, stops it, then runs each bench-kv
# binary given at the same client counts. Data of both under DIR.
# usage: vs_etcd.sh DIR ROUNDS SECONDS BENCH_KV...
# The etcd cluster script and load generator are the team's, in ../shared/bench (from the
# project root): SHARED_BENCH overrides that folder; ETCDBENCH the load generator (default: a
# release build of shared/bench/etcdbench made in a copy outside the repository, see its README).
set -u
here=$(cd "$(dirname "$0")" && pwd)
shared=${SHARED_BENCH:-$here/../../../shared/bench}
dir=$1; rounds=$2; secs=$3; shift 3
bench=${ETCDBENCH:-etcdbench}
endpoints=http://127.0.0.1:12379,http://127.0.0.1:22379,http://127.0.0.1:32379
for r in $(seq 1 "$rounds"); do
  echo "=== round $r $(date -u +%T) load $(cut -d' ' -f1-3 /proc/loadavg)"
  "$shared/etcd3.sh" start "$dir/etcd-data" > /dev/null 2>&1
  for c in 1 64 256; do "$bench" "$endpoints" "$c" "$secs" 2>&1 | tail -1; done
  "$shared/etcd3.sh" stop "$dir/etcd-data" > /dev/null 2>&1
  for b in "$@"; do
    echo "--- $b $(date -u +%T)"
    "$b" --seconds "$secs" --clients 1,64,256 --trials 0 --dir "$dir" 2>&1 | grep "clients:" | grep puts
  done
done
