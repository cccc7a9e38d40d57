"""
Supervised finetuning (SFT): train on whole conversations, one per row, loss on the assistant only.

Pipeline position: after midtraining; loads mid_checkpoints/<tag>/ and writes
chatsft_checkpoints/<tag>/ (model, meta, optimizer, metrics.jsonl), which chat_eval, chat_cli,
chat_web and RL load.

Why another stage after midtraining: midtraining packs conversations densely into long rows; SFT
shows each conversation on its own, padded, starting at position 0 of a row, exactly as the model
sees a conversation when it chats, with a small learning rate (--init-lr-frac) that decays to 0.
The training loop is the one midtraining uses, in scripts/chat_finetune.py; this file adds the
flags that only SFT has.

The default mixture is ARC-Easy + ARC-Challenge + GSM8K + SmolTalk from the Hugging Face hub plus
the offline synthetic tasks (Identity, SpellingBee, SimpleSpelling, Arithmetic) and one family
midtraining never sees: Refusal, declining what the model cannot do (browse, see pictures, send
messages...), so that chat_eval's Refusal row shows what SFT taught. Without a network (or with
--offline) it trains on the offline tasks alone, plus --custom-json if you give one.

Examples:
    python -m scripts.chat_sft --offline --device-batch-size 8 --target-examples-per-step 32 --num-iterations 100
    python -m scripts.chat_sft --source mid --model-tag d4 --custom-json my_conversations.jsonl
    torchrun --standalone --nproc_per_node=8 -m scripts.chat_sft
    python -m scripts.chat_sft --offline --num-iterations 100 --save-every 50 --resume-from-step 50
"""

import argparse

from nanochat.common import run_main, ArgumentParser, int_range
from scripts.chat_finetune import add_finetune_args, finetune


def parse_args(argv=None):
    p = ArgumentParser(prog="python -m scripts.chat_sft", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_finetune_args(p, "sft")
    p.add_argument("--device-batch-size", type=int_range(1, 65536), default=4, help="conversations per forward/backward per process")
    p.add_argument("--target-examples-per-step", type=int_range(1, 10**7), default=32, help="conversations per optimizer step")
    p.add_argument("--eval-steps", type=int_range(1, 10**7), default=100, help="val batches per val bpb evaluation")
    return p.parse_args(argv)


def main(argv=None):
    finetune(parse_args(argv), "sft")


if __name__ == "__main__":
    run_main(main)
