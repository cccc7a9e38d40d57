"""
Midtraining: teach the base model the conversation format, tool use and multiple choice.

Pipeline position: after pretraining (scripts/base_train.py); loads base_checkpoints/<tag>/ and
writes mid_checkpoints/<tag>/ (model, meta, optimizer, metrics.jsonl), which SFT
(scripts/chat_sft.py) starts from.

One batch, followed with a finger: task conversations (nanochat_tasks/mixtures.py) -> render_conversation
-> ids + mask -> whole conversations packed into (B, T) rows, targets -1 except on what the
assistant writes (nanochat/chat_data.py) -> the training loop shared with SFT, in
scripts/chat_finetune.py: the same optimizer step, schedule, metrics and checkpoints as
pretraining (pieces from nanochat/training.py).

The default mixture is SmolTalk + MMLU auxiliary_train + GSM8K from the Hugging Face hub plus the
offline synthetic tasks (Identity, SpellingBee, SimpleSpelling, Arithmetic). Without a network
(or with --offline) it trains on the offline tasks alone, plus --custom-json if you give one.

Examples:
    python -m scripts.mid_train --offline --device-batch-size 8 --total-batch-size 4096 --num-iterations 100
    python -m scripts.mid_train --custom-json my_conversations.jsonl
    torchrun --standalone --nproc_per_node=8 -m scripts.mid_train
    python -m scripts.mid_train --offline --num-iterations 100 --save-every 50 --resume-from-step 50
"""

import argparse

from nanochat.common import run_main, ArgumentParser, int_range
from scripts.chat_finetune import add_finetune_args, finetune


def parse_args(argv=None):
    p = ArgumentParser(prog="python -m scripts.mid_train", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_finetune_args(p, "mid")
    p.add_argument("--device-batch-size", type=int_range(1, 65536), default=32, help="rows per forward/backward per process")
    p.add_argument("--total-batch-size", type=int_range(1, 2**40), default=524288, help="tokens per optimizer step")
    p.add_argument("--eval-tokens", type=int_range(1, 10**12), default=20 * 524288, help="tokens per val bpb evaluation")
    return p.parse_args(argv)


def main(argv=None):
    finetune(parse_args(argv), "mid")


if __name__ == "__main__":
    run_main(main)
