#!/usr/bin/env bash
# OpenRLHF PPO (critic + GAE) with Meta Policy Optimization through metapo's reward service. Not run by metapo's
# tests: it needs GPUs, Ray, DeepSpeed and vLLM. Flags follow OpenRLHF's documented train_ppo_ray CLI (0.5-0.8;
# newer releases spell them with dots, e.g. --ref.num_nodes, --reward.remote_url, --data.label_key).
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
    --ref_num_nodes 1 --ref_num_gpus_per_node 2 \
    --critic_num_nodes 1 --critic_num_gpus_per_node 2 \
    --actor_num_nodes 1 --actor_num_gpus_per_node 2 \
    --vllm_num_engines 2 --vllm_tensor_parallel_size 1 \
    --pretrain "$MODEL" --critic_pretrain "$MODEL" \
    --remote_rm_url "$REMOTE_RM" \
    --advantage_estimator gae --gamma 1.0 --lambd 0.95 \
    --prompt_data data/essay-openrlhf/train.jsonl --input_key prompt --label_key label --apply_chat_template \
    --micro_train_batch_size 4 --train_batch_size 128 \
    --micro_rollout_batch_size 8 --rollout_batch_size "$ROLLOUT_BATCH" --n_samples_per_prompt 1 \
    --max_epochs 1 --num_episodes 1 --prompt_max_len 512 --generate_max_len 512 \
    --zero_stage 3 --bf16 --actor_learning_rate 5e-7 --critic_learning_rate 9e-6 --init_kl_coef 0.01 \
    --save_path checkpoints/essay-ppo-mpo "$@"

# The service strips the chat template and special tokens from each query (the response is what follows the
# prompt; a closing end-of-generation token tells the EOS gate it finished) and reads the label JSON as the
# sample's columns (task_input, lineage). Rewards answer as {"rewards", "scores", "extra_logs"}; extra_logs carries
# rubric_version and judge_failed per sample. OpenRLHF cannot mask a sample, so a judge failure gets
# service.fallback_reward, counted as metapo_fallback_rewards_total{engine="openrlhf"}.
