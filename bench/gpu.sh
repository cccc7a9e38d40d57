#!/usr/bin/env bash
# The GPU check in one command: a d12 training step (bf16 autocast, compiled, FlashAttention 3 on
# Hopper when its package is installed, SDPA otherwise) with tokens/s and MFU against the GPU's
# bf16 data-sheet peak, then KV-cache decoding tokens/s at batch 1 and 16. Random weights and
# tokens: it needs no tokenizer, data or checkpoint. Any crash (or a NaN loss) exits non-zero.
#
#   bash bench/gpu.sh                     # on a machine with one CUDA GPU
#   BATCH=16 bash bench/gpu.sh            # less memory (the default 32 x 2048 suits 80 GB)
#
# d12 is the speedrun's smallest model: depth 12, dim 768, 6 heads of 128, context 2048, vocab 32768.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
[ -f .venv/bin/activate ] && source .venv/bin/activate
BATCH=${BATCH:-32}
STEPS=${STEPS:-10}

python - <<'EOF'
import sys, torch
if not torch.cuda.is_available():
    sys.exit("error: no CUDA GPU is visible (torch.cuda.is_available() is False); run this on a GPU machine")
from nanochat.gpt import _fa3_func
name = torch.cuda.get_device_name()
major, minor = torch.cuda.get_device_capability()
attn = "FlashAttention 3" if _fa3_func is not None and major == 9 else "SDPA"
print(f"{name} (sm_{major}{minor}), torch {torch.__version__}, CUDA {torch.version.cuda}; training attention: {attn}")
EOF

echo; echo "=== training step: d12, bf16 autocast, torch.compile, batch $BATCH x 2048"
python -m bench.bench_train --device-type cuda --depth 12 --head-dim 128 --max-seq-len 2048 \
    --vocab-size 32768 --device-batch-size "$BATCH" --steps "$STEPS" --compile 1

echo; echo "=== decoding with the KV cache: d12, context 2048 model"
python -m bench.bench_engine --device-type cuda --depth 12 --head-dim 128 --vocab-size 32768 \
    --sequence-len 2048 --contexts 128,1024 --new-tokens 64 --samples 1,16 --prompts 16 --repeats 3

echo; echo "=== gpu.sh: done"
