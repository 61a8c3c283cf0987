#!/usr/bin/env bash
# The embedded-judge runs behind the hack-repair benchmark section of benchmarks/RESULTS.md.
# Each run is resumable through its judge cache (OUT/judge-cache.sqlite): a run stopped by `timeout` is continued by
# running the same command again, and only the calls not yet cached are made. Runs take the embedded-model lock so
# that only one process loads the 1.5B judge at a time on a shared machine.
set -euo pipefail
cd "$(dirname "$0")/../../.."
PY=${PY:-.venv/bin/python}
OUT=benchmarks/results/hackbench
run() { flock /tmp/metapo-embedded.lock timeout 590 "$PY" -m metapo.cli --log-level WARNING hackbench --judge embedded --no-progress "$@"; }

# 1. Essay, static protocol, logprob scoring: 4 prompts, all 9 families, one meta step.
run --task essay --prompts 4 --protocol static --meta-steps 1 --out $OUT/essay-static-logprob mpo.max_items=3
# 2. Math, static protocol, logprob scoring: 3 prompts, one meta step (guidelines mode, the math task's).
run --task math --prompts 3 --protocol static --meta-steps 1 --out $OUT/math-static-logprob
# 3. Scoring modes on the same essay prompts, initial rubric only (logprob's numbers are run 1's v0).
run --task essay --prompts 4 --protocol static --meta-steps 0 --scoring json --out $OUT/essay-static-json
run --task essay --prompts 4 --protocol static --meta-steps 0 --scoring multiturn --out $OUT/essay-static-multiturn
# 4. Essay, dynamic protocol: 3 prompts, 3 seeds, fixed rubric vs MPO (meta step at step 5 of 10).
run --task essay --prompts 3 --protocol dynamic --steps 10 --meta-every 5 --seeds 0,1,2 --out $OUT/essay-dynamic mpo.max_items=3
