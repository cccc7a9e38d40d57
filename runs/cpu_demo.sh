#!/usr/bin/env bash
# The CPU demo: the whole pipeline on the embedded corpus, on a laptop CPU, in minutes.
#
#   bash runs/cpu_demo.sh
#
# It installs what it needs into .venv, then: tokenizer -> base model -> bits per byte and samples
# -> midtraining -> SFT -> chat evaluation -> RL -> report card. Everything is written under
# $NANOCHAT_BASE_DIR (default ~/.cache/nanochat), where the learning tools look for it.
# Settings are sized for 2 CPU cores; on a faster machine raise BASE_STEPS for a better model.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
source runs/setup_env.sh

export OMP_NUM_THREADS=${OMP_NUM_THREADS:-$(nproc)}
# waiting threads sleep instead of spinning: beside one other busy process the training step ran
# 0.79-0.84x its speed alone with this, 0.29-0.61x without (bench/README.md, bench.bench_threads)
export OMP_WAIT_POLICY=${OMP_WAIT_POLICY:-PASSIVE}
BASE_STEPS=${BASE_STEPS:-300}
TAG=d4
RL_ARGS=${RL_ARGS:---num-steps 30 --questions-per-step 8 --num-samples 8 --max-new-tokens 128 --eval-examples 50 --eval-samples 8 --eval-every -1 --save-every -1}
t_start=$(date +%s)
stage() { echo; echo "=== $1 ($(( $(date +%s) - t_start ))s since start)"; }

# run again into the same base dir: the previous demo's checkpoints move aside (a fresh run never
# writes over another run's checkpoints, and would stop with a one-line refusal)
for d in base_checkpoints mid_checkpoints chatsft_checkpoints chatrl_checkpoints; do
    old="${NANOCHAT_BASE_DIR:-$HOME/.cache/nanochat}/$d/$TAG"
    if [ -d "$old" ]; then
        aside="$old.previous-$(date +%Y%m%d-%H%M%S)"
        mv "$old" "$aside"
        echo "moved the previous demo's $d/$TAG aside to $aside"
    fi
done

stage "report: start a new report card"
python -m nanochat.report reset

stage "tokenizer: train a 4096-token BPE vocabulary on the embedded corpus"
python -m scripts.tok_train --vocab-size 4096
python -m scripts.tok_eval

stage "pretraining: a 4-layer model, $BASE_STEPS steps"
python -m scripts.base_train --depth 4 --head-dim 64 --max-seq-len 256 --window-pattern L \
    --device-batch-size 16 --total-batch-size 4096 --num-iterations "$BASE_STEPS" \
    --eval-every 100 --eval-tokens 65536 --sample-every -1 --core-metric-every -1 --save-every 100 \
    --model-tag $TAG --run cpu-demo

stage "base model: bits per byte on train/val and samples"
python -m scripts.base_loss --model-tag $TAG --split-tokens 65536
echo "=== first half (tokenizer + base model) done in $(( $(date +%s) - t_start ))s"

stage "midtraining: conversation format, tool use, spelling (offline task mixture)"
python -m scripts.mid_train --offline --model-tag $TAG --synthetic-size 2000 --device-batch-size 16 \
    --total-batch-size 4096 --num-iterations 120 --eval-every 60 --eval-tokens 16384

stage "SFT: supervised finetuning on conversations"
python -m scripts.chat_sft --offline --model-tag $TAG --synthetic-size 2000 --device-batch-size 16 \
    --target-examples-per-step 16 --num-iterations 100 --eval-every 50 --eval-steps 8

EVAL_TASKS="SpellingBee|SimpleSpelling|Arithmetic|TwoStepArithmetic|Refusal"
stage "chat evaluation: held-out spelling, letter counting and arithmetic, base vs mid vs SFT"
for src in base mid sft; do
    python -m scripts.chat_eval -i $src -g $TAG -a "$EVAL_TASKS" -x 50 -m 128
done

stage "RL: on-policy reinforcement learning on two-step arithmetic word problems"
python -m scripts.chat_rl --offline --model-tag $TAG $RL_ARGS
python -m scripts.chat_eval -i rl -g $TAG -a "$EVAL_TASKS" -x 50 -m 128

stage "report card"
python -m nanochat.report generate

stage "talk to your model"
python -m scripts.chat_cli -i sft -g $TAG -t 0 -p "Mia has 12 shells. Mia gets 30 more. How many shells does Mia have now?"
echo
echo "=== demo done in $(( $(date +%s) - t_start ))s. Chat with it:"
echo "    source .venv/bin/activate && python -m scripts.chat_cli -i sft -g $TAG   # in the terminal"
echo "    source .venv/bin/activate && python -m scripts.chat_web -i sft -g $TAG   # in the browser"
echo
python -m nanochat_tasks.examples
