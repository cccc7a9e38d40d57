"""
Reinforcement learning: make an SFT model better at problems with checkable answers.

Pipeline position: after SFT (chatsft_checkpoints/); writes chatrl_checkpoints/<tag>/ with
metrics.jsonl (mean reward per step) and the "Chat RL" report section. The method (on-policy
REINFORCE with a per-question mean baseline) is explained in nanochat/rl.py.

Each step: --questions-per-step problems (split across processes), --num-samples replies each,
reward 1 for a right final answer; replies better than their siblings get pushed up. The
held-out mean reward (--eval-samples sampled replies per test problem, at the rollout temperature:
what RL maximises) and the greedy accuracy are printed before RL, every --eval-every steps and
after RL; with --eval-k > 1 also pass@k of sampled replies.

Examples:
    python -m scripts.chat_rl                                   # GSM8K if reachable, else TwoStepArithmetic
    python -m scripts.chat_rl --offline --num-steps 20 --num-samples 8 --questions-per-step 4
    python -m scripts.chat_rl --task Arithmetic --resume-from-step 40
    torchrun --standalone --nproc_per_node=8 -m scripts.chat_rl
"""

import argparse

from nanochat.common import run_main
from nanochat.rl import run_rl


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--run", default="dummy", help="run name (recorded in the meta and report)")
    p.add_argument("--device-type", default="", help="cuda|cpu|mps (empty: autodetect)")
    p.add_argument("--seed", type=int, default=42)
    # what to start from and where to write
    p.add_argument("--source", default="sft", help="stage to start from: base|mid|sft|rl (default sft)")
    p.add_argument("-g", "--model-tag", default=None, help="model tag to load (default: the largest)")
    p.add_argument("--model-step", type=int, default=None, help="step to load (default: the last)")
    p.add_argument("--output-tag", default=None, help="checkpoint folder name (default: the loaded tag)")
    # problems
    p.add_argument("--task", default="GSM8K", help="GSM8K, TwoStepArithmetic or Arithmetic (GSM8K falls back to "
                   "TwoStepArithmetic offline)")
    p.add_argument("--offline", action="store_true", help="never contact the hub: use the offline word problems")
    p.add_argument("--train-size", type=int, default=5000, help="synthetic training problems (offline tasks)")
    # rollouts
    p.add_argument("--num-samples", type=int, default=16, help="replies sampled per question")
    p.add_argument("--questions-per-step", type=int, default=16, help="questions per optimizer step (all processes)")
    p.add_argument("--max-new-tokens", type=int, default=256, help="longest reply")
    p.add_argument("--temperature", type=float, default=1.0, help="sampling temperature of the rollouts")
    p.add_argument("--top-k", type=int, default=50, help="top-k of the rollouts (0: off)")
    p.add_argument("--device-batch-size", type=int, default=0, help="rows per forward/backward (0: all samples)")
    p.add_argument("--num-steps", type=int, default=-1, help="optimizer steps (-1: one pass over the training problems)")
    # optimizer
    p.add_argument("--embedding-lr", type=float, default=0.2)
    p.add_argument("--unembedding-lr", type=float, default=0.004)
    p.add_argument("--matrix-lr", type=float, default=0.02, help="Muon learning rate")
    p.add_argument("--scalar-lr", type=float, default=0.5)
    p.add_argument("--weight-decay", type=float, default=0.0)
    p.add_argument("--init-lr-frac", type=float, default=0.05, help="fraction of the learning rates above to use")
    # evaluation and saving
    p.add_argument("--eval-every", type=int, default=60, help="held-out evaluation every N steps (-1: only before/after)")
    p.add_argument("--eval-examples", type=int, default=400, help="held-out problems (0: no evaluation)")
    p.add_argument("--eval-samples", type=int, default=4, help="sampled replies per held-out problem for the mean reward")
    p.add_argument("--eval-k", type=int, default=1, help="also report pass@k with k sampled replies (1: off)")
    p.add_argument("--save-every", type=int, default=60, help="checkpoint every N steps (the last step is always saved)")
    p.add_argument("--resume-from-step", type=int, default=-1, help="continue this RL run from its checkpoint at this step")
    return p.parse_args(argv)


def main(argv=None):
    return run_rl(parse_args(argv))


if __name__ == "__main__":
    run_main(main)
