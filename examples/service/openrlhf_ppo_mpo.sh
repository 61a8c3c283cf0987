#!/usr/bin/env bash
# OpenRLHF PPO (critic + GAE) with Meta Policy Optimization through metapo's reward service. Not run by metapo's
# tests: it needs GPUs, Ray, DeepSpeed and vLLM. Flags are those of OpenRLHF 0.11's train_ppo_ray (checked against
# its argument parser); releases before the dotted flags spell them --ref_num_nodes, --remote_rm_url, --label_key...
set -euo pipefail

MODEL=${MODEL:-Qwen/Qwen2.5-1.5B-Instruct}
HEAD=${HEAD:-127.0.0.1}
PORT=${PORT:-8765}
ROLLOUT_BATCH=${ROLLOUT_BATCH:-128}
META_EVERY_STEPS=${META_EVERY_STEPS:-10}

python examples/service/prepare_data.py --engine openrlhf --task essay --out data/essay-openrlhf

# OpenRLHF's own HTTP reward client sends no Authorization header. Either serve on a private address without a
# token and give OpenRLHF the URL (A), or keep the token and give it the reward_func file, which sends it (B).
metapo serve-reward --config examples/service/essay_service.yaml --host "$HEAD" --port "$PORT" \
    service.token_env=null service.meta_every_samples=$((ROLLOUT_BATCH * META_EVERY_STEPS)) &
SERVICE=$!
trap 'kill -TERM $SERVICE; wait $SERVICE' EXIT
until curl -fsS "http://$HEAD:$PORT/healthz" >/dev/null; do sleep 2; done

REMOTE_RM="http://$HEAD:$PORT/get_reward"                      # (A) the remote-RM URL contract
# REMOTE_RM="$PWD/examples/service/openrlhf_reward_func.py"   # (B) the reward_func file contract, with
#                                                              #     METAPO_REWARD_URL / METAPO_REWARD_TOKEN_ENV below

ray start --head --num-gpus 8
ray job submit --address="http://127.0.0.1:8265" \
    --runtime-env-json="{\"working_dir\": \"$PWD\", \"env_vars\": {\"METAPO_REWARD_URL\": \"http://$HEAD:$PORT\"}}" \
    -- python3 -m openrlhf.cli.train_ppo_ray \
    --ref.num_nodes 1 --ref.num_gpus_per_node 2 \
    --critic.num_nodes 1 --critic.num_gpus_per_node 2 \
    --actor.num_nodes 1 --actor.num_gpus_per_node 2 \
    --vllm.num_engines 2 --vllm.tensor_parallel_size 1 --vllm.enable_prefix_caching \
    --actor.model_name_or_path "$MODEL" --critic.model_name_or_path "$MODEL" \
    --reward.remote_url "$REMOTE_RM" \
    --algo.advantage.estimator gae --algo.advantage.gamma 1.0 --algo.advantage.lambd 0.95 \
    --data.prompt_dataset data/essay-openrlhf/train.jsonl --data.input_key prompt --data.label_key label \
    --data.apply_chat_template \
    --train.micro_batch_size 4 --train.batch_size 128 \
    --rollout.micro_batch_size 8 --rollout.batch_size "$ROLLOUT_BATCH" --rollout.n_samples_per_prompt 1 \
    --train.max_epochs 1 --train.num_episodes 1 --data.max_len 1024 --rollout.max_new_tokens 512 \
    --ds.zero_stage 3 --ds.param_dtype bf16 \
    --actor.adam.lr 5e-7 --critic.adam.lr 9e-6 --algo.kl.init_coef 0.01 \
    --ckpt.output_dir checkpoints/essay-ppo-mpo "$@"

# The service strips the chat template and special tokens from each query (the response is what follows the
# prompt; a closing end-of-generation token tells the EOS gate it finished) and reads the label JSON as the
# sample's columns (task_input, lineage). Rewards answer as {"rewards", "scores", "extra_logs"}; extra_logs carries
# rubric_version and judge_failed per sample. OpenRLHF cannot mask a sample, so a judge failure gets
# service.fallback_reward, counted as metapo_fallback_rewards_total{engine="openrlhf"}.
