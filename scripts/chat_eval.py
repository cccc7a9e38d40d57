"""
Chat evaluation: accuracy of a chat model on the task suite, and ChatCORE.

Pipeline position: after midtraining / SFT / RL; loads a checkpoint of the stage given by -i and
runs nanochat/task_eval.py on each task: letter logits for multiple choice (ARC, MMLU), sampled
replies checked by the task for the rest (GSM8K, HumanEval in a sandbox, SpellingBee,
SimpleSpelling, Arithmetic, TwoStepArithmetic, Refusal). Hub tasks that cannot be loaded offline are skipped with one line
each. Prints a table and ChatCORE (mean centered accuracy over the tasks that ran), and logs them
to the report when nanochat.report is present.

Examples:
    python -m scripts.chat_eval -i sft
    python -m scripts.chat_eval -i sft -a "SimpleSpelling|Arithmetic" -x 50
    python -m scripts.chat_eval -i mid -a ARC-Easy -b 16
    python -m scripts.chat_eval -i sft -a GSM8K -n 8 -t 0.7 -k 50
    torchrun --standalone --nproc_per_node=8 -m scripts.chat_eval -i sft
"""

import argparse

from nanochat.common import (compute_init, compute_cleanup, print0, run_main, UserError, add_device_arg, ArgumentParser,
                             int_range, nonneg_int, positive_int, sampling_temperature)
from nanochat.checkpoint_manager import add_checkpoint_args, load_model_from_args
from nanochat.task_eval import EVAL_TASKS, run_task_eval, chatcore, format_results_table
from nanochat_tasks import TASK_NAMES, get_task
from nanochat_tasks.hub import TaskUnavailable


def parse_args(argv=None):
    p = ArgumentParser(prog="python -m scripts.chat_eval", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_checkpoint_args(p, "sft")
    p.add_argument("-a", "--task-name", type=str, default=None,
                   help=f"tasks separated by '|' (default: all of {'|'.join(EVAL_TASKS)})")
    p.add_argument("-t", "--temperature", type=sampling_temperature, default=0.0, help="sampling temperature (0: greedy)")
    p.add_argument("-m", "--max-new-tokens", type=int_range(1, 2**20), default=256, help="longest reply, in tokens")
    p.add_argument("-n", "--num-samples", type=int_range(1, 1000), default=1, help="samples per problem (solved if any is right)")
    p.add_argument("-k", "--top-k", type=nonneg_int, default=50, help="top-k sampling (0: off)")
    p.add_argument("-b", "--batch-size", type=int_range(1, 4096), default=16, help="problems per batch: one forward for multiple choice, decoded together for generative tasks")
    p.add_argument("-x", "--max-problems", type=positive_int, default=None, help="evaluate at most this many problems per task")
    add_device_arg(p)
    return p.parse_args(argv)


def main(argv=None):
    args = parse_args(argv)
    names = [n.strip() for n in args.task_name.split("|")] if args.task_name else list(EVAL_TASKS)
    unknown = [n for n in names if n not in TASK_NAMES]
    if unknown:
        raise UserError(f"unknown task {unknown[0]!r} in -a: choose from {'|'.join(EVAL_TASKS)}")
    rt = compute_init(args.device_type)
    model, tokenizer, meta, _ = load_model_from_args(args, rt.device)
    results = []
    for name in names:
        try:
            task = get_task(name, "test")
        except TaskUnavailable as e:
            print0(f"skipped {name}: {str(e).split('; ')[0]}")
            continue
        try:
            task.eval_type
        except NotImplementedError:
            print0(f"skipped {name}: it is a training task with no automatic check")
            continue
        result = run_task_eval(task, tokenizer, model, name=name, batch_size=args.batch_size,
                               num_samples=args.num_samples, max_new_tokens=args.max_new_tokens,
                               temperature=args.temperature, top_k=args.top_k or None,
                               max_problems=args.max_problems, autocast=rt.autocast, progress_every=50)
        print0(f"{name}: {result.correct}/{result.total} = {100 * result.accuracy:.2f}%")
        results.append(result)
    if not results:
        raise UserError("no task could be evaluated (see the lines above); try -a \"SpellingBee|SimpleSpelling|Arithmetic\"")
    score, covered = chatcore(results)
    print0("")
    print0(format_results_table(results))
    print0(f"ChatCORE ({args.source}): {score:.4f} over {len(covered)} task(s): {', '.join(covered)}")
    if rt.master:
        try:
            from nanochat.report import get_report
        except ImportError:
            get_report = None
        if get_report is not None:
            data = [vars(args).copy(), {r.name: r.accuracy for r in results}, {"ChatCORE": score, "ChatCORE tasks": ", ".join(covered)}]
            get_report().log(section=f"Chat evaluation {args.source}", data=data)
    compute_cleanup()
    return results, score


if __name__ == "__main__":
    run_main(main)
