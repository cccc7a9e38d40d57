#!/usr/bin/env bash
# The CPU demo: the whole pipeline on the embedded corpus, on a laptop CPU.
#
#   bash runs/cpu_demo.sh           # the full path
#   bash runs/cpu_demo.sh --quick   # a smaller pipeline: a first chat with your own model sooner
#
# It installs what it needs into .venv, then: tokenizer -> base model -> bits per byte and samples
# -> midtraining -> SFT -> chat evaluation -> RL -> report card. Everything is written under
# $NANOCHAT_BASE_DIR (default ~/.cache/nanochat), where the learning tools look for it.
# Settings are sized for 2 CPU cores; on a faster machine raise BASE_STEPS for a better model.
# Measured on 2 cores with nothing else running (2026-12-03, a fresh clone): the quick path 3 min 9 s,
# the full path 28 min 15 s, plus about 4 min the first time to set up .venv.
set -euo pipefail
usage() {
    cat <<'USAGE'
usage: bash runs/cpu_demo.sh [--quick]

  (no argument)  the full path: tokenizer, a 300-step base model, its loss and samples, midtraining,
                 SFT, chat evaluation, RL, the report card, a first answer. Model tag d4.
  --quick        the quick path: tokenizer, a 60-step base model, short midtraining and SFT, a first
                 answer. Model tag d4q. The guides' snippets run on its output.
  -h, --help     print this help

Everything is written under $NANOCHAT_BASE_DIR (default ~/.cache/nanochat). Running again moves the
previous run's checkpoints of the same tag aside.
USAGE
}
QUICK=0
for arg in "$@"; do
    case "$arg" in
        --quick) QUICK=1 ;;
        -h|--help) usage; exit 0 ;;
        *) echo "error: unknown argument '$arg' (bash runs/cpu_demo.sh --help lists the options)" >&2; exit 2 ;;
    esac
done
cd "$(dirname "${BASH_SOURCE[0]}")/.."
source runs/setup_env.sh

export OMP_NUM_THREADS=${OMP_NUM_THREADS:-$(nproc)}
# waiting threads sleep instead of spinning: beside one other busy process the training step ran
# 0.79-0.84x its speed alone with this, 0.29-0.61x without (bench/README.md, bench.bench_threads)
export OMP_WAIT_POLICY=${OMP_WAIT_POLICY:-PASSIVE}
BASE_STEPS=${BASE_STEPS:-300}
TAG=d4
QUICK_TAG=d4q
RL_ARGS=${RL_ARGS:---num-steps 30 --questions-per-step 8 --num-samples 8 --max-new-tokens 128 --eval-examples 50 --eval-samples 8 --eval-every -1 --save-every -1}
t_start=$(date +%s)
stage() { echo; echo "=== $1 ($(( $(date +%s) - t_start ))s since start)"; }

# run again into the same base dir: the previous demo's checkpoints move aside (a fresh run never
# writes over another run's checkpoints, and would stop with a one-line refusal)
move_aside() {
    local d old aside
    for d in base_checkpoints mid_checkpoints chatsft_checkpoints chatrl_checkpoints; do
        old="${NANOCHAT_BASE_DIR:-$HOME/.cache/nanochat}/$d/$1"
        if [ -d "$old" ]; then
            aside="$old.previous-$(date +%Y%m%d-%H%M%S)"
            mv "$old" "$aside"
            echo "moved the previous demo's $d/$1 aside to $aside"
        fi
    done
}

# the quick path: the same model and tokenizer (so the two runs share tokenizer/), far fewer
# steps of half the tokens each. Its own tag, QUICK_TAG, keeps it apart from the full path's TAG.
quick_path() {
    move_aside $QUICK_TAG
    stage "report: start a new report card"
    python -m nanochat.report reset
    stage "tokenizer: train a 4096-token BPE vocabulary on the embedded corpus"
    python -m scripts.tok_train --vocab-size 4096
    stage "pretraining: a 4-layer model, 60 steps of 2048 tokens"
    python -m scripts.base_train --depth 4 --head-dim 64 --max-seq-len 256 --window-pattern L \
        --device-batch-size 8 --total-batch-size 2048 --num-iterations 60 \
        --eval-every 20 --eval-tokens 16384 --sample-every -1 --core-metric-every -1 --save-every 20 \
        --model-tag $QUICK_TAG --run cpu-demo-quick --logger none
    stage "midtraining: conversation format, tool use, spelling (offline task mixture)"
    python -m scripts.mid_train --offline --model-tag $QUICK_TAG --synthetic-size 500 --device-batch-size 8 \
        --total-batch-size 2048 --num-iterations 30 --eval-every 30 --eval-tokens 8192
    stage "SFT: supervised finetuning on conversations"
    python -m scripts.chat_sft --offline --model-tag $QUICK_TAG --synthetic-size 500 --device-batch-size 8 \
        --target-examples-per-step 8 --num-iterations 30 --eval-every 30 --eval-steps 4 --init-lr-frac 1.0
    stage "talk to your model"
    python -m scripts.chat_cli -i sft -g $QUICK_TAG -t 0 -p "Mia has 12 shells. Mia gets 30 more. How many shells does Mia have now?"
    echo
    echo "=== quick demo done in $(( $(date +%s) - t_start ))s. Chat with it:"
    echo "    source .venv/bin/activate && python -m scripts.chat_cli -i sft -g $QUICK_TAG   # in the terminal"
    echo "    source .venv/bin/activate && python -m scripts.chat_web -i sft -g $QUICK_TAG   # in the browser"
    echo "The guides' snippets (docs/) run on this run. The full path (a better model, chat evaluation,"
    echo "RL and the report card; it takes longer): bash runs/cpu_demo.sh"
}
if [ "$QUICK" = 1 ]; then
    quick_path
    exit 0
fi

move_aside $TAG

stage "report: start a new report card"
python -m nanochat.report reset

stage "tokenizer: train a 4096-token BPE vocabulary on the embedded corpus"
python -m scripts.tok_train --vocab-size 4096
python -m scripts.tok_eval

stage "pretraining: a 4-layer model, $BASE_STEPS steps"
python -m scripts.base_train --depth 4 --head-dim 64 --max-seq-len 256 --window-pattern L \
    --device-batch-size 16 --total-batch-size 4096 --num-iterations "$BASE_STEPS" \
    --eval-every 100 --eval-tokens 65536 --sample-every -1 --core-metric-every -1 --save-every 100 \
    --model-tag $TAG --run cpu-demo --logger none

stage "base model: bits per byte on train/val and samples"
python -m scripts.base_loss --model-tag $TAG --split-tokens 65536
echo "=== first half (tokenizer + base model) done in $(( $(date +%s) - t_start ))s"

stage "midtraining: conversation format, tool use, spelling (offline task mixture)"
python -m scripts.mid_train --offline --model-tag $TAG --synthetic-size 2000 --device-batch-size 16 \
    --total-batch-size 4096 --num-iterations 120 --eval-every 60 --eval-tokens 16384

# SFT at the full learning rate (its default, 0.02 of it, suits a long pretrained model): at the
# default it learned no refusals in a measured run (0/50), at 1.0 it did (30/50), Arithmetic unchanged
stage "SFT: supervised finetuning on conversations, plus refusals (a family midtraining never saw)"
python -m scripts.chat_sft --offline --model-tag $TAG --synthetic-size 2000 --device-batch-size 16 \
    --target-examples-per-step 16 --num-iterations 100 --eval-every 50 --eval-steps 8 --init-lr-frac 1.0

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
