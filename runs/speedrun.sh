#!/usr/bin/env bash
# The GPU speedrun: a depth-20 chat model on one 8-GPU node (fewer GPUs work too, just slower).
#
#   bash runs/speedrun.sh               # NPROC=8 by default
#   NPROC=1 bash runs/speedrun.sh       # one GPU
#
# Needs internet for the FineWeb-Edu shards, the CORE eval bundle and the hub chat datasets.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
source runs/setup_env.sh

NPROC=${NPROC:-8}
DEPTH=${DEPTH:-20}
export OMP_NUM_THREADS=1
run() { torchrun --standalone --nproc_per_node="$NPROC" -m "$@"; }

python -m nanochat.report reset
python -m nanochat.dataset -n 8                  # enough shards to train the tokenizer
python -m nanochat.dataset -n 240 &              # the rest downloads while the tokenizer trains
DOWNLOAD_PID=$!
python -m scripts.tok_train --vocab-size 65536 --max-chars 2000000000
python -m scripts.tok_eval
wait $DOWNLOAD_PID

run scripts.base_train --depth "$DEPTH" --target-param-data-ratio 20 --run speedrun
run scripts.base_loss
run scripts.base_eval
run scripts.mid_train
run scripts.chat_eval -i mid
run scripts.chat_sft
run scripts.chat_eval -i sft
python -m nanochat.report generate
echo "talk to it: python -m scripts.chat_web   (then open http://127.0.0.1:8000)"
