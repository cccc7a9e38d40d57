"""
Reinforcement learning: make an SFT model better at problems with checkable answers.

Pipeline position: after SFT (chatsft_checkpoints/); writes chatrl_checkpoints/<tag>/ with
metrics.jsonl (mean reward per step) and the "Chat RL" report section. The method (on-policy
REINFORCE with a per-question mean baseline) is explained in nanochat/rl.py, which holds the
pieces this file's loop calls (rollout, advantages, the policy-gradient loss); the problems come
from nanochat_tasks/mixtures.py.

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

import time
import argparse

import torch

from nanochat.common import (compute_init, compute_cleanup, print0, run_main, add_device_arg, UserError,
                             format_duration, ArgumentParser, int_range, float_range, nonneg_int, random_seed,
                             sampling_temperature)
from nanochat.engine import Engine
from nanochat import checkpoint_manager as cm
from nanochat import training as tr
from nanochat import rl
from nanochat.tracking import add_logger_arg, make_logger
from nanochat_tasks.mixtures import load_rl_tasks


def parse_args(argv=None):
    p = ArgumentParser(prog="python -m scripts.chat_rl", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--run", default="dummy", help="run name (recorded in the meta and report)")
    add_logger_arg(p)
    add_device_arg(p)
    p.add_argument("--seed", type=random_seed, default=42, help="random seed of the run (the rollouts' sampling seeds derive from it)")
    tr.add_compile_arg(p)
    # what to start from and where to write
    cm.add_checkpoint_args(p, "sft")
    p.add_argument("--output-tag", default=None, help="checkpoint folder name (default: the loaded tag)")
    # problems
    p.add_argument("--task", default="GSM8K", help="GSM8K, TwoStepArithmetic or Arithmetic (GSM8K falls back to "
                   "TwoStepArithmetic offline)")
    p.add_argument("--offline", action="store_true", help="never contact the hub: use the offline word problems")
    p.add_argument("--train-size", type=int_range(1, 10**7), default=5000, help="synthetic training problems (offline tasks)")
    # rollouts
    p.add_argument("--num-samples", type=int_range(1, 1000), default=16, help="replies sampled per question")
    p.add_argument("--questions-per-step", type=int_range(1, 10**5), default=16, help="questions per optimizer step (all processes)")
    p.add_argument("--max-new-tokens", type=int_range(1, 2**20), default=256, help="longest reply")
    p.add_argument("--temperature", type=sampling_temperature, default=1.0, help="sampling temperature of the rollouts")
    p.add_argument("--top-k", type=nonneg_int, default=50, help="top-k of the rollouts (0: off)")
    p.add_argument("--device-batch-size", type=int_range(0, 65536), default=0, help="rows per forward/backward (0: all samples)")
    p.add_argument("--num-steps", type=int_range(1, 10**9, special=(-1,)), default=-1, help="optimizer steps (-1: one pass over the training problems)")
    # optimizer
    tr.add_optimizer_args(p)
    p.add_argument("--init-lr-frac", type=float_range(0, 1, low_open=True), default=0.05, help="fraction of the learning rates above to use")
    # evaluation and saving
    p.add_argument("--eval-every", type=int_range(1, special=(-1,)), default=60, help="held-out evaluation every N steps (-1: only before/after)")
    p.add_argument("--eval-examples", type=int_range(0, 10**7), default=400, help="held-out problems (0: no evaluation)")
    p.add_argument("--eval-samples", type=int_range(1, 1000), default=4, help="sampled replies per held-out problem for the mean reward")
    p.add_argument("--eval-k", type=int_range(1, 1000), default=1, help="also report pass@k with k sampled replies (1: off)")
    p.add_argument("--save-every", type=int_range(1, special=(-1,)), default=60, help="checkpoint every N steps (the last step is always saved)")
    p.add_argument("--resume-from-step", type=int_range(1, special=(-1,)), default=-1, help="continue this RL run from its checkpoint at this step")
    return p.parse_args(argv)


def main(argv=None):
    """The RL run. Returns a dict of figures (held-out reward before and after, steps, ...)."""
    args = parse_args(argv)
    user_config = vars(args).copy()
    rt = compute_init(args.device_type, seed=args.seed)
    if args.questions_per_step % rt.world_size:
        raise UserError(f"--questions-per-step {args.questions_per_step} must be a multiple of the number of "
                        f"processes ({rt.world_size})")

    # -------------------------------------------------------------------------
    # the SFT model, the problems, the optimizer, start or resume
    model, tokenizer, _, (source, source_tag, source_step) = cm.load_model_from_args(args, rt.device, phase="train")
    train_task, heldout_task, task_name = load_rl_tasks(args.task, args.offline, args.train_size,
                                                        max(args.eval_examples, 1))
    num_steps = args.num_steps if args.num_steps > 0 else max(1, len(train_task) // args.questions_per_step)
    per_rank = args.questions_per_step // rt.world_size
    ckpt_dir = cm.checkpoint_dir("rl", args.output_tag or source_tag)
    print0(f"RL on {task_name}: {num_steps} steps x {args.questions_per_step} questions x {args.num_samples} "
           f"samples | {rt.world_size} process(es) on {rt.device_type} | from {source}/{source_tag} "
           f"step {source_step} | writing {ckpt_dir}")
    optimizer = tr.build_optimizer(model, user_config, distributed=rt.ddp)  # scaled by --init-lr-frac
    start_step, _, loop_state, _ = tr.start_or_resume(
        ckpt_dir, args.resume_from_step, model, optimizer, rt,
        loop_state={"total_training_time": 0.0, "questions_seen": 0, "heldout_before": None,
                    "smooth_reward": 0.0, "smooth_count": 0})
    # one step's mean reward is noisy (a few questions, sampled replies); the smoothed one is the trend
    smooth = tr.EMA(0.9, loop_state["smooth_reward"], loop_state["smooth_count"])

    top_k = args.top_k if args.top_k > 0 else None
    do_eval = args.eval_examples > 0
    logger = make_logger(args, "rl", user_config, ckpt_dir)  # --logger: wandb, trackio, tensorboard or none

    def heldout():
        model.eval()
        figures = rl.evaluate_heldout(model, tokenizer, heldout_task, args.max_new_tokens, args.eval_k,
                                      args.temperature, top_k, rt.autocast, samples=args.eval_samples)
        model.train()
        return figures

    def describe(figures):
        extra = "".join(f" | {k} {v:.4f}" for k, v in figures.items() if k.startswith("pass@"))
        return (f"held-out mean reward {figures['reward']:.4f} ({args.eval_samples} samples at T={args.temperature:g}), "
                f"greedy accuracy {figures['greedy']:.4f}, on {figures['problems']} problems{extra}")

    last_eval = None
    if do_eval and start_step == 0:
        last_eval = loop_state["heldout_before"] = heldout()
        print0(f"before RL: {describe(last_eval)}")
        logger.log({f"heldout_{k}": v for k, v in last_eval.items()}, 0)  # the tracker only, as step 0

    # -------------------------------------------------------------------------
    # the training loop
    engine = Engine(model, tokenizer)  # rollouts decode with the plain model and its KV cache
    train_model = tr.compile_for_training(model, args.compile, rt.device_type, dynamic=True)  # replies vary in length
    chunk = args.device_batch_size or args.num_samples  # rows per forward/backward
    session_start = time.time()  # the ETA's pace: this session's steps so far, evaluations included
    for step in range(start_step, num_steps):
        done = step + 1  # steps finished after this one: what the logs and checkpoints count
        last = done == num_steps
        t0 = time.time()
        lr_mult = 1.0 - step / num_steps  # linear decay to zero over the run
        lrs = tr.apply_lr(optimizer, lr_mult, step)
        # this process's questions, by their number in the whole run (a resumed run continues the sequence)
        indices = [step * args.questions_per_step + rt.rank + j * rt.world_size for j in range(per_rank)]
        conversations = [train_task[index % len(train_task)] for index in indices]

        # 1. rollout: num_samples replies to every question, all questions in one batch
        model.eval()
        with rt.autocast():
            rollouts = rl.rollout(engine, tokenizer, conversations, args.num_samples, args.max_new_tokens,
                                  args.temperature, top_k, seed=args.seed * 1_000_003 + indices[0])
        model.train()
        sums = torch.zeros(4, dtype=torch.float64, device=rt.device)  # reward, loss, reply tokens, questions
        for conversation, (prompt, replies, masks, texts) in zip(conversations, rollouts):
            # 2. reward, and 3. advantage: each reply's reward minus the mean of the question's replies
            rewards = [float(train_task.reward(conversation, text)) for text in texts]
            advantages = rl.question_advantages(rewards)  # (num_samples,)
            inputs, targets = rl.build_batch(prompt, replies, masks, tokenizer.get_bos_token_id(),
                                             model.get_device())  # (num_samples, T) each
            num_tokens = int((targets >= 0).sum().item())  # the sampled tokens: the loss's normaliser
            # 4. the policy-gradient loss, chunk by chunk of rows; the gradients add up in .grad
            question_loss = 0.0
            for start in range(0, args.num_samples, chunk):
                part = slice(start, start + chunk)
                if not advantages[part].any():
                    continue  # all-zero advantages: no gradient, skip the forward pass
                with rt.autocast():
                    loss = rl.group_loss(train_model, inputs[part], targets[part], advantages[part], num_tokens)
                question_loss += loss.item()
                loss = loss / len(conversations)  # the step's loss is the mean over this process's questions
                loss.backward()
            reply_tokens = sum(len(r) for r in replies) / len(replies)
            sums += torch.tensor([sum(rewards) / len(rewards), question_loss, reply_tokens, 1.0],
                                 dtype=torch.float64, device=rt.device)
        for p in model.parameters():  # a process whose questions all had equal rewards has no gradient
            if p.grad is None:
                p.grad = torch.zeros_like(p)
        optimizer.step()
        model.zero_grad(set_to_none=True)

        # what the step did, over all processes; evaluation, the progress line and the metrics record
        if rt.ddp:
            torch.distributed.all_reduce(sums)
        reward, loss, reply_tokens, questions = (sums / sums[3]).tolist()[:3] + [sums[3].item()]
        rt.synchronize()
        dt = time.time() - t0
        loop_state["total_training_time"] += dt
        loop_state["questions_seen"] += int(questions)
        measured = None
        if do_eval and ((args.eval_every > 0 and done % args.eval_every == 0) or last):
            last_eval = measured = heldout()
        eta = (num_steps - done) * (time.time() - session_start) / (done - start_step)
        trend = smooth.update(reward)
        loop_state["smooth_reward"], loop_state["smooth_count"] = smooth.value, smooth.count
        # the policy-gradient "loss" is -(advantage x log-probability): it goes up and down around 0 and
        # may be negative; the reward is what RL raises
        print0(f"step {done:05d}/{num_steps:05d} | reward {reward:.4f} (smoothed {trend:.4f}) | pg loss {loss:+.5f} | reply tokens "
               f"{reply_tokens:5.1f} | lr x{lr_mult:.3f} | dt {dt:.2f}s | eta {format_duration(eta)}"
               + (f" | {describe(measured)}" if measured else ""))
        if rt.master:
            record = {"step": done, "reward_mean": reward, "loss": loss, "reply_tokens": reply_tokens,
                      "questions": int(questions), "samples": int(questions) * args.num_samples, "lr": lr_mult,
                      "lrs": lrs, "dt": dt, "time": loop_state["total_training_time"], "wall": time.time()}
            if measured:
                record.update({f"heldout_{k}": v for k, v in measured.items()})
            cm.append_metrics(ckpt_dir, record)
            logger.log(record, done)

        # the checkpoint (RL has no data position to keep: the step number picks the questions)
        if last or (args.save_every > 0 and done % args.save_every == 0):
            meta = tr.stage_meta("rl", done, model, user_config, num_steps, loop_state, lr_mult, lrs, rt,
                                 val_bpb=None, max_seq_len=model.config.sequence_len,
                                 source={"stage": source, "model_tag": source_tag, "step": source_step},
                                 task=task_name, reward_mean=reward, heldout=last_eval)
            tr.save_training_checkpoint(ckpt_dir, done, model, optimizer, {"step": done}, meta, rt)
            print0(f"saved checkpoint {cm.model_path(ckpt_dir, done)}")

    # -------------------------------------------------------------------------
    # the summary lines and the report
    before = loop_state.get("heldout_before")
    if do_eval and last_eval is not None:
        line = f"after RL: {describe(last_eval)}"
        if before is not None:
            line += f" (before RL: mean reward {before['reward']:.4f}, greedy accuracy {before['greedy']:.4f})"
        print0(line)
    print0(f"done: {num_steps} RL steps in {format_duration(loop_state['total_training_time'])}")
    summary = {"Source": f"{source}/{source_tag} step {source_step}", "Task": task_name, "Steps": num_steps,
               "Samples per question": args.num_samples, "Questions per step": args.questions_per_step,
               "Training time": format_duration(loop_state["total_training_time"])}
    if before is not None:
        summary["Held-out mean reward before RL"] = before["reward"]
        summary["Held-out greedy accuracy before RL"] = before["greedy"]
    if last_eval is not None:
        summary["Held-out mean reward after RL"] = last_eval["reward"]
        summary["Held-out greedy accuracy after RL"] = last_eval["greedy"]
        summary.update({f"Held-out {k} after RL": v for k, v in last_eval.items() if k.startswith("pass@")})
    tr.log_report("Chat RL", user_config, summary, rt)
    logger.finish()
    compute_cleanup()
    return {"task": task_name, "steps": num_steps, "checkpoint_dir": ckpt_dir,
            "before": before, "after": last_eval, "training_time": loop_state["total_training_time"]}


if __name__ == "__main__":
    run_main(main)
