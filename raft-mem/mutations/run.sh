#!/bin/sh
# Calibrates the simulation swarm by mutation (see ARCHITECTURE.md, "Calibration by mutation").
#
# Each *.patch in this directory breaks one rule of the engine on purpose. For each, this script
# applies it, runs the swarm (`cargo test -p raft-mem --test sim_swarm`) until its first failing
# seed or the seed budget, reverts it, and prints one line: the mutation, whether the swarm
# caught it, the seed and invariant, how many seeds ran and how long it took.
#
# It edits engine sources: run it only in a scratch worktree, never on a branch you commit:
#
#   git worktree add --detach /tmp/raft-mutations HEAD
#   cd /tmp/raft-mutations && raft-mem/mutations/run.sh [SEEDS] [FIRST_SEED]
#   cd - && git worktree remove --force /tmp/raft-mutations
#
# SEEDS defaults to the CI budget (the swarm's SWARM_SEEDS_CI), FIRST_SEED to its first seed.
# A patch that no longer applies (the engine changed) is reported as stale: update it.
set -u
cd "$(dirname "$0")/../.."
seeds=${1:-}
first=${2:-}
if ! git diff --quiet -- raft-core; then
    echo "raft-core has uncommitted changes: run this in a clean scratch worktree" >&2
    exit 2
fi
printf '%-38s %-7s %-12s %-7s %-9s %s\n' mutation caught seed seeds seconds invariant
for patch in raft-mem/mutations/*.patch; do
    name=$(basename "$patch" .patch)
    if ! git apply --check "$patch" 2>/dev/null; then
        printf '%-38s %s\n' "$name" "STALE: the patch no longer applies"
        continue
    fi
    git apply "$patch"
    start=$(date +%s)
    log=$(mktemp)
    RAFT_SWARM_SEEDS=$seeds RAFT_SWARM_FIRST=$first \
        cargo test -q -p raft-mem --test sim_swarm >"$log" 2>&1
    status=$?
    seconds=$(( $(date +%s) - start ))
    git apply -R "$patch"
    line=$(grep -m1 'swarm failed:' "$log")
    if [ $status -eq 0 ]; then
        printf '%-38s %-7s %-12s %-7s %-9s %s\n' "$name" no - - "$seconds" -
    elif [ -n "$line" ]; then
        seed=$(echo "$line" | sed -n 's/.*swarm failed: seed \([0-9]*\).*/\1/p')
        invariant=$(echo "$line" | sed -n 's/.*: \(.*\) violated.*/\1/p')
        count=$(echo "$line" | sed -n 's/.*found after \([0-9]*\) seeds.*/\1/p')
        printf '%-38s %-7s %-12s %-7s %-9s %s\n' "$name" yes "$seed" "$count" "$seconds" "$invariant"
    else
        printf '%-38s %s (see %s)\n' "$name" "BUILD OR TEST ERROR" "$log"
        continue
    fi
    rm -f "$log"
done
