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
BASE_STEPS=${BASE_STEPS:-300}
TAG=d4
t_start=$(date +%s)
stage() { echo; echo "=== $1 ($(( $(date +%s) - t_start ))s since start)"; }

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

echo
echo "=== first half done in $(( $(date +%s) - t_start ))s"
