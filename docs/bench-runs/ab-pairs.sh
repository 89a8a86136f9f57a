#!/bin/bash
# Alternating single child runs of the node bench (NODE_BENCH_CHILD), binary A then B, the order
# swapped every pair, printing each run's byte -> durable line and its stages' lines (cut at 140
# characters). Build each side's bench with `cargo bench -p node --bench node --no-run` (a second
# CARGO_TARGET_DIR for the other build) and pass the two executables it prints:
#   docs/bench-runs/ab-pairs.sh <rate> <pairs> <binA> <binB> > out.txt
#   python3 docs/bench-runs/ab-summary.py out.txt
# The child is given no floors of its own (NODE_BENCH_FLOOR=1,1,1,1), so read its ratios to the floor
# in turns, not those to the "paced floor before" or "back to back". SECS sets each run's seconds
# (default 8). Run it on a quiet machine: no build or bench beside it.
RATE=$1; PAIRS=$2; A=$3; B=$4
cd "$(dirname "$0")/../../node"
mkdir -p /dev/shm/rd-node
for i in $(seq 1 $PAIRS); do
  if [ $((i % 2)) = 1 ]; then order="A B"; else order="B A"; fi
  for w in $order; do
    bin=$A; [ $w = B ] && bin=$B
    echo "== pair $i $w"
    env RUNTIME_DIRECTORY=/dev/shm/rd-node NODE_BENCH_CHILD=$RATE NODE_BENCH_FLOOR=1,1,1,1 NODE_BENCH_DRAIN=0 \
        NODE_BENCH_SECONDS=${SECS:-8} RUST_LOG=error $bin --bench 2>/dev/null | grep -E "byte in -> durable|PTY \+ read|frame -> encode|write \+ fdatasync" | cut -c1-140
  done
done
