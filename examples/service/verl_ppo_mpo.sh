#!/usr/bin/env bash
# verl PPO with a critic and GAE (the paper's algorithm) and Meta Policy Optimization through metapo's reward
# service. Not run by metapo's tests: it needs GPUs, Ray and vLLM. The keys are those of verl 0.9's
# `verl.trainer.main_ppo` configuration (checked against its generated ppo_trainer.yaml); releases before the
# `reward:` group spell the reward function keys custom_reward_function.* at the top level.
set -euo pipefail

MODEL=${MODEL:-Qwen/Qwen2.5-1.5B-Instruct}
GPUS=${GPUS:-8}
BATCH=${BATCH:-256}          # prompts per step (data.train_batch_size); PPO samples one response per prompt
META_EVERY_STEPS=${META_EVERY_STEPS:-10}
HEAD=${HEAD:-127.0.0.1}      # the node the reward service runs on
PORT=${PORT:-8765}
export METAPO_REWARD_TOKEN=${METAPO_REWARD_TOKEN:-$(python -c 'import secrets; print(secrets.token_hex(16))')}

# 1. Data in verl's layout, carrying the task text and rubric lineage in extra_info.
python examples/service/prepare_data.py --engine verl --task essay --out data/essay-verl

# 2. The reward service: one per run; it owns the rubric, the window and the meta steps. verl has no step hook,
#    so a meta step runs every BATCH x META_EVERY_STEPS scored samples.
metapo serve-reward --config examples/service/essay_service.yaml --host "$HEAD" --port "$PORT" \
    service.meta_every_samples=$((BATCH * META_EVERY_STEPS)) &
SERVICE=$!
trap 'kill -TERM $SERVICE; wait $SERVICE' EXIT   # SIGTERM: the service saves window and versions
until curl -fsS "http://$HEAD:$PORT/healthz" >/dev/null; do sleep 2; done

# 3. PPO: actor + critic, GAE advantages; the reward comes from the service through metapo.integrations.verl.
#    The Ray workers inherit METAPO_REWARD_TOKEN from this shell when verl starts Ray itself (one node); on a
#    cluster started with `ray start`, export it on every node first.
REWARD_FILE=$(python -c 'import metapo.integrations.verl as m; print(m.__file__)')
python3 -m verl.trainer.main_ppo \
    algorithm.adv_estimator=gae \
    algorithm.gamma=1.0 algorithm.lam=0.95 \
    algorithm.use_kl_in_reward=True algorithm.kl_ctrl.kl_coef=0.001 \
    data.train_files=data/essay-verl/train.parquet \
    data.val_files=data/essay-verl/train.parquet \
    data.train_batch_size="$BATCH" \
    data.max_prompt_length=512 data.max_response_length=512 \
    actor_rollout_ref.model.path="$MODEL" \
    actor_rollout_ref.actor.optim.lr=1e-6 \
    actor_rollout_ref.actor.ppo_mini_batch_size=64 \
    actor_rollout_ref.actor.ppo_micro_batch_size_per_gpu=4 \
    actor_rollout_ref.rollout.name=vllm \
    actor_rollout_ref.rollout.n=1 \
    actor_rollout_ref.rollout.gpu_memory_utilization=0.5 \
    actor_rollout_ref.rollout.log_prob_micro_batch_size_per_gpu=8 \
    actor_rollout_ref.ref.log_prob_micro_batch_size_per_gpu=8 \
    critic.model.path="$MODEL" \
    critic.optim.lr=1e-5 \
    critic.ppo_micro_batch_size_per_gpu=4 \
    reward.custom_reward_function.path="$REWARD_FILE" \
    reward.custom_reward_function.name=compute_score \
    +reward.custom_reward_function.reward_kwargs.metapo_url="http://$HEAD:$PORT" \
    +reward.custom_reward_function.reward_kwargs.metapo_token_env=METAPO_REWARD_TOKEN \
    trainer.critic_warmup=0 \
    trainer.logger='["console"]' \
    trainer.project_name=metapo-essay trainer.experiment_name=ppo-mpo \
    trainer.n_gpus_per_node="$GPUS" trainer.nnodes=1 \
    trainer.save_freq=50 trainer.test_freq=-1 trainer.total_epochs=1 "$@"

# compute_score is async: each of verl's reward.num_workers (8) reward-loop workers awaits many samples at once.
# A verl version whose reward manager calls a plain function needs compute_score_sync instead. Each result carries
# rubric_version and judge_failed (logged by verl with the reward extras); a judge failure gets
# service.fallback_reward, counted on the service's /metrics as metapo_fallback_rewards_total{engine="verl"}.
