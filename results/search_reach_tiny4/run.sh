#!/usr/bin/env bash
# item 4 of issue 53: tiny4 search settings that reach the answers (train problems only)
set -u
cd "$(dirname "$0")/../.."  # the repository root
OUT=results/search_reach_tiny4
mkdir -p "$OUT"
run() {
  name=$1; shift
  [ -f "$OUT/$name.json" ] && { echo "skip $name"; return; }
  echo "== $name $(date -u +%H:%M:%S)"
  sets=(); for s in "$@"; do sets+=("--set=search.$s"); done
  .venv/bin/python -m jaxdistill.experiments.search_diagnostics --preset=tiny4 \
    --model=results/compare_tiny4_state/warm_start --problems=128 --samples=16 \
    --deepsearch=False --out="$OUT/$name.json" "${sets[@]}" 2>&1 | grep -v "^I1\|^W1" | tail -3
}
run w4i8k4 
run w4i8k4_fpv-1 first_play_value=-1.0
run w4i8k4_fpv-1_dedup first_play_value=-1.0 dedup_children=True
run w4i8k2_fpv-1_dedup first_play_value=-1.0 dedup_children=True num_children=2
run w2i16k2_fpv-1_dedup first_play_value=-1.0 dedup_children=True num_children=2 num_agents=2 num_iterations=16
run w1i16k4_fpv-1_dedup first_play_value=-1.0 dedup_children=True num_agents=1 num_iterations=16
run w1i32k2_fpv-1_dedup first_play_value=-1.0 dedup_children=True num_children=2 num_agents=1 num_iterations=32
run w2i16k2_fpv-0.5_dedup first_play_value=-0.5 dedup_children=True num_children=2 num_agents=2 num_iterations=16
echo "== done $(date -u +%H:%M:%S)"
# dense terminal values (reward.dense is not a search field: run directly)
# .venv/bin/python -m jaxdistill.experiments.search_diagnostics --preset=tiny4 \
#   --model=results/compare_tiny4_state/warm_start --problems=128 --samples=16 --deepsearch=False \
#   --out=results/search_reach_tiny4/w4i8k4_fpv-1_dedup_dense.json \
#   --set=search.first_play_value=-1.0 --set=search.dedup_children=True --set=reward.dense=True
