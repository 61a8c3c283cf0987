#!/usr/bin/env bash
# The embedded-judge runs behind the "Hack-repair benchmark" section of benchmarks/RESULTS.md.
# Each run is resumable through its judge cache: a run stopped by `timeout` was continued by running the same
# command again (only calls not yet cached are made). Every run takes the embedded-model lock so that only one
# process loads the 1.5B judge at a time on the shared machine.
set -euo pipefail
cd "$(dirname "$0")/../../.."
PY=${PY:-.venv/bin/python}
OUT=benchmarks/results/hackbench
run() { flock /tmp/metapo-embedded.lock timeout 590 "$PY" -m metapo.cli --log-level WARNING hackbench --judge embedded --no-progress "$@"; }

# Runs 1-2 ran with the code of commit 0c47c2c (judge prompts: sample first, then the rubric item); runs 3-4 with
# that of 8e5dade (after the change that puts the rubric before the sample, for prefix caching); run 5 with 3b32f60
# (the acceptance gate merged in, as the third arm).

# 1. Essay, static protocol, logprob scoring: the first 4 prompts, all 9 families, one meta step.
run --task essay --prompts 4 --protocol static --meta-steps 1 --out $OUT/essay-static-logprob mpo.max_items=3
# 2. Essay, dynamic protocol: 2 prompts, 4 families (cost), 3 seeds, fixed rubric vs MPO (meta step at step 5 of 10),
#    sharing run 1's judge cache (its initial-rubric scores are reused).
run --task essay --prompts 2 --families padding,stuffing,injection,title_only --protocol dynamic --steps 10 \
  --meta-every 5 --seeds 0,1,2 --cache $OUT/essay-static-logprob/judge-cache.sqlite --out $OUT/essay-dynamic \
  mpo.samples=1 mpo.max_items=3
# 3. Math, static protocol, logprob scoring: the first 3 prompts, one meta step (guidelines mode, the math task's).
run --task math --prompts 3 --protocol static --meta-steps 1 --out $OUT/math-static-logprob
# 4. Scoring modes on the first 3 essay prompts, initial rubric only, all three with the same code (the judge
#    prompt layout changed between runs 1-2 and runs 3-4, so run 1's logprob scores are not reused here).
run --task essay --prompts 3 --protocol static --meta-steps 0 --scoring logprob --out $OUT/essay-modes-logprob
run --task essay --prompts 3 --protocol static --meta-steps 0 --scoring json --out $OUT/essay-modes-json
run --task essay --prompts 3 --protocol static --meta-steps 0 --scoring multiturn --out $OUT/essay-modes-multiturn
# 5. Essay, dynamic protocol with all three arms (fixed, MPO, MPO + acceptance gate), same subset as run 2, gate
#    sized down for CPU (one canary prompt, two exemplars).
run --task essay --prompts 2 --families padding,stuffing,injection,title_only --protocol dynamic --steps 10 \
  --meta-every 5 --seeds 0,1,2 --out $OUT/essay-dynamic-gate mpo.samples=1 mpo.max_items=3 \
  mpo.acceptance.max_exemplars=2 mpo.acceptance.canary_prompts=1
# 6. Scoring modes on all 12 essay prompts, initial rubric only (code of 92703e1, the layout of run 4); each was
#    resumed through its cache until complete.
for mode in logprob json multiturn; do
  run --task essay --prompts 12 --protocol static --meta-steps 0 --scoring $mode --out $OUT/essay-modes12-$mode
done
