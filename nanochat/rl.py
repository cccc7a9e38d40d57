"""
Reinforcement learning on problems with checkable answers: on-policy REINFORCE with a per-question
mean baseline (the "GRPO" recipe without its KL term and ratio clipping).

Pipeline position: scripts/chat_rl.py runs the loop on an SFT model (chatsft_checkpoints) and
writes chatrl_checkpoints/; the tasks (GSM8K, or the offline arithmetic word problems) give the rewards.

One step, followed with a finger:
1. rollout: for each question, the Engine samples `num_samples` replies from the current model
   (tool calls included; the calculator's output is forced in, with mask 0). All the questions
   of a step decode together in one batch, which is about twice as fast on a CPU.
2. reward: the task checks each reply (1 right, 0 wrong).
3. advantage: reward minus the mean reward of that question's samples. A reply better than its
   siblings is pushed up, a worse one down, and a question where all samples agree (all right or
   all wrong) teaches nothing, which is exactly right: there is no signal in it.
4. loss: -(sum over sampled tokens of advantage x log-probability) / number of sampled tokens.
   Only tokens the model chose count: the prompt, tool outputs (forced) and padding are masked
   out. Because the samples come from the very model being updated (fully on-policy, one update
   per batch), no importance ratio or clipping is needed.
"""

import torch

from nanochat.engine import Engine


def rollout(engine, tokenizer, conversations, num_samples, max_new_tokens, temperature=1.0, top_k=None, seed=0):
    """Sample num_samples replies to each conversation, all conversations in one batch.
    Returns one (prompt ids, [reply ids], [reply masks], [reply texts]) per conversation.

    Reply ids include the terminal <|assistant_end|> (or <|bos|>) when the row reached it, so the
    model also learns when to stop; the texts leave it out. Masks: 1 sampled, 0 forced."""
    prompts = [tokenizer.render_for_completion(c) for c in conversations]
    n_rows = len(prompts) * num_samples
    ids = [[] for _ in range(n_rows)]
    masks = [[] for _ in range(n_rows)]
    done = [False] * n_rows
    terminal = (engine.assistant_end, engine.bos)
    for column, mask_column in engine.generate(prompts, num_samples=num_samples, max_tokens=max_new_tokens,
                                               temperature=temperature, top_k=top_k, seed=seed):
        for i, (token, m) in enumerate(zip(column, mask_column)):
            if done[i]:
                continue
            ids[i].append(token)
            masks[i].append(m)
            done[i] = token in terminal
        if all(done):
            break
    texts = [tokenizer.decode([t for t in row if t not in terminal]) for row in ids]
    rows = [slice(q * num_samples, (q + 1) * num_samples) for q in range(len(prompts))]
    return [(prompt, ids[r], masks[r], texts[r]) for prompt, r in zip(prompts, rows)]


def question_advantages(rewards):
    """rewards (N,) of one question's samples -> advantages (N,): reward minus their mean."""
    rewards = torch.as_tensor(rewards, dtype=torch.float32)
    return rewards - rewards.mean()


def build_batch(prompt, replies, masks, pad_id, device="cpu"):
    """Rows of prompt + reply, shifted for next-token prediction: (inputs, targets), both (N, T).

    targets hold the reply's sampled tokens and -1 everywhere the model did not choose the token
    (prompt, forced tool output, padding), so those positions get no gradient."""
    rows = [prompt + r for r in replies]
    T = max(len(r) for r in rows) - 1
    inputs = torch.full((len(rows), T), pad_id, dtype=torch.long)
    targets = torch.full((len(rows), T), -1, dtype=torch.long)
    for i, (row, reply, mask) in enumerate(zip(rows, replies, masks)):
        inputs[i, :len(row) - 1] = torch.tensor(row[:-1])
        # position t predicts row[t + 1]; the reply starts at row index len(prompt)
        reply_targets = torch.tensor(reply, dtype=torch.long)
        keep = torch.tensor(mask, dtype=torch.bool)
        start = len(prompt) - 1
        targets[i, start:start + len(reply)] = torch.where(keep, reply_targets, torch.full_like(reply_targets, -1))
    return inputs.to(device), targets.to(device)


def policy_gradient_loss(token_logprobs, targets, advantages, num_tokens=None):
    """-(sum of advantage x log p over sampled tokens) / number of sampled tokens.

    token_logprobs, targets: (N, T); advantages: (N,). Positions with target -1 do not count.
    num_tokens: the normaliser when these rows are one micro-batch of a larger group (default:
    the sampled tokens of these rows)."""
    valid = (targets >= 0).float()
    if num_tokens is None:
        num_tokens = valid.sum()
    objective = (token_logprobs * valid * advantages.unsqueeze(1)).sum() / max(float(num_tokens), 1.0)
    return -objective


def group_loss(model, inputs, targets, advantages, num_tokens=None):
    """The policy-gradient loss of (some of) one question's samples under `model` (differentiable)."""
    N, T = inputs.shape
    nll = model(inputs, targets, loss_reduction="none").view(N, T)  # -log p of each target; 0 where ignored
    return policy_gradient_loss(-nll, targets, advantages.to(nll.device), num_tokens)


def rl_step(model, tokenizer, task, conversations, num_samples, max_new_tokens, temperature, top_k, seed,
            loss_scale=1.0, device_batch_size=None, autocast=None):
    """Rollout, reward, advantages and backward for this rank's questions of one step. Returns one
    dict of figures per question.

    All questions roll out together (one batch of len(conversations) x num_samples rows); then
    each question's samples go through the model in chunks of device_batch_size rows (all at once
    by default) and the gradient of loss * loss_scale / len(conversations) is accumulated into
    .grad, so after the call the optimizer can step."""
    import contextlib
    autocast = autocast or contextlib.nullcontext
    engine = Engine(model, tokenizer)
    model.eval()
    with autocast():
        rollouts = rollout(engine, tokenizer, conversations, num_samples, max_new_tokens, temperature, top_k, seed)
    model.train()
    figures = []
    for conversation, (prompt, replies, masks, texts) in zip(conversations, rollouts):
        rewards = [float(task.reward(conversation, text)) for text in texts]
        advantages = question_advantages(rewards)
        inputs, targets = build_batch(prompt, replies, masks, tokenizer.get_bos_token_id(), model.get_device())
        num_tokens = int((targets >= 0).sum().item())
        chunk = device_batch_size or num_samples
        total_loss = 0.0
        for start in range(0, num_samples, chunk):
            part = slice(start, start + chunk)
            if not advantages[part].any():
                continue  # all-zero advantages: no gradient, skip the forward pass
            with autocast():
                loss = group_loss(model, inputs[part], targets[part], advantages[part], num_tokens)
            (loss * loss_scale / len(conversations)).backward()
            total_loss += loss.item()
        figures.append({"reward_mean": sum(rewards) / len(rewards), "loss": total_loss, "rewards": rewards,
                        "reply_tokens": sum(len(r) for r in replies) / len(replies), "sampled_tokens": num_tokens})
    return figures


# -----------------------------------------------------------------------------
# the training run (scripts/chat_rl.py parses the flags and calls run_rl)

RL_TASKS = ("GSM8K", "Arithmetic", "TwoStepArithmetic")  # problems with checkable answers


def load_rl_tasks(task_name, offline, train_size, eval_examples):
    """(train task, held-out task, name). GSM8K when asked for and reachable, else offline synthetic
    word problems with the same '#### answer' format and calculator tool: TwoStepArithmetic (two
    chained calculator calls, which SFT leaves only partly solved, so RL has something to learn)
    unless Arithmetic (one call) is asked for."""
    from nanochat.common import print0, UserError
    from tasks import get_task
    from tasks.hub import TaskUnavailable
    if task_name not in RL_TASKS:
        raise UserError(f"--task {task_name!r}: RL needs problems with checkable answers: {', '.join(RL_TASKS)}")
    if task_name == "GSM8K":
        if not offline:
            try:
                return get_task("GSM8K", "train"), get_task("GSM8K", "test", stop=eval_examples), "GSM8K"
            except TaskUnavailable as e:
                print0(f"note: GSM8K is not available ({e}); using the offline TwoStepArithmetic problems instead")
        task_name = "TwoStepArithmetic"
    return (get_task(task_name, "train", size=train_size),
            get_task(task_name, "test", size=eval_examples), task_name)


def evaluate_heldout(model, tokenizer, task, max_new_tokens, k=1, temperature=1.0, top_k=None, autocast=None,
                     samples=4):
    """Held-out figures of the policy on problems it never trains on:
    'reward' = mean reward of `samples` sampled replies per problem at the rollout temperature (the
    quantity RL maximises), 'greedy' = accuracy of the greedy reply, and 'pass@k' when k > 1."""
    from nanochat.task_eval import run_generative_eval
    sampled = run_generative_eval(task, tokenizer, model, num_samples=samples, max_new_tokens=max_new_tokens,
                                  temperature=temperature, top_k=top_k, name="held-out", autocast=autocast)
    greedy = run_generative_eval(task, tokenizer, model, num_samples=1, max_new_tokens=max_new_tokens,
                                 temperature=0.0, name="held-out", autocast=autocast)
    figures = {"reward": sampled.sample_accuracy, "greedy": greedy.accuracy, "problems": greedy.total}
    if k > 1:
        if k == samples:
            figures[f"pass@{k}"] = sampled.accuracy
        else:
            passk = run_generative_eval(task, tokenizer, model, num_samples=k, max_new_tokens=max_new_tokens,
                                        temperature=temperature, top_k=top_k, name="held-out", autocast=autocast)
            figures[f"pass@{k}"] = passk.accuracy
    return figures


def run_rl(args):
    """The RL loop; see the module docstring and scripts/chat_rl.py for the flags. Returns a dict of
    figures (held-out reward before and after, steps, ...)."""
    import os
    import time
    from nanochat.common import compute_init, compute_cleanup, print0, UserError, format_duration
    from nanochat import checkpoint_manager as cm
    from nanochat import training as tr

    user_config = vars(args).copy()
    for name in ("num_samples", "questions_per_step", "max_new_tokens", "train_size"):
        if getattr(args, name) < 1:
            raise UserError(f"--{name.replace('_', '-')} must be at least 1")
    rt = compute_init(args.device_type, seed=args.seed)
    if args.questions_per_step % rt.world_size:
        raise UserError(f"--questions-per-step {args.questions_per_step} must be a multiple of the number of "
                        f"processes ({rt.world_size})")
    source_dir, source_tag, source_step = cm.resolve_checkpoint(args.source, args.model_tag, args.model_step)
    model, tokenizer, _ = cm.load_model(args.source, rt.device, phase="train", model_tag=source_tag,
                                        step=source_step)
    train_task, heldout_task, task_name = load_rl_tasks(args.task, args.offline, args.train_size,
                                                        max(args.eval_examples, 1))
    num_steps = args.num_steps if args.num_steps > 0 else max(1, len(train_task) // args.questions_per_step)
    per_rank = args.questions_per_step // rt.world_size
    output_tag = args.output_tag or source_tag
    ckpt_dir = cm.checkpoint_dir("rl", output_tag)
    print0(f"RL on {task_name}: {num_steps} steps x {args.questions_per_step} questions x {args.num_samples} "
           f"samples | {rt.world_size} process(es) on {rt.device_type} | from {args.source}/{source_tag} "
           f"step {source_step} | writing {ckpt_dir}")

    optimizer = model.setup_optimizers(unembedding_lr=args.unembedding_lr, embedding_lr=args.embedding_lr,
                                       matrix_lr=args.matrix_lr, scalar_lr=args.scalar_lr,
                                       weight_decay=args.weight_decay, distributed=rt.ddp)
    for group in optimizer.param_groups:
        group["lr"] = group["initial_lr"] = group["initial_lr"] * args.init_lr_frac

    loop_state = {"total_training_time": 0.0, "questions_seen": 0, "heldout_before": None}
    start_step = 0
    if args.resume_from_step >= 0:
        start_step = args.resume_from_step
        meta, _ = tr.load_training_checkpoint(ckpt_dir, start_step, model, optimizer, rt)
        loop_state.update(meta.get("loop_state", {}))
        if rt.master:
            cm.truncate_metrics(ckpt_dir, start_step)
        print0(f"resumed from {ckpt_dir} step {start_step}")
    elif rt.master and os.path.exists(os.path.join(ckpt_dir, cm.METRICS_FILE)):
        os.remove(os.path.join(ckpt_dir, cm.METRICS_FILE))  # a fresh run starts a fresh log

    top_k = args.top_k if args.top_k > 0 else None
    do_eval = args.eval_examples > 0

    def heldout():
        model.eval()
        figures = evaluate_heldout(model, tokenizer, heldout_task, args.max_new_tokens, args.eval_k,
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

    def make_meta(done, figures):
        return {"step": done, "val_bpb": None, "model_config": model.config.to_dict(), "user_config": user_config,
                "max_seq_len": model.config.sequence_len, "num_iterations": num_steps, "loop_state": loop_state,
                "lr": {"multiplier": lr_mult, **lrs}, "world_size": rt.world_size, "stage": "rl",
                "source": {"stage": args.source, "model_tag": source_tag, "step": source_step},
                "task": task_name, "reward_mean": figures.get("reward_mean"),
                "heldout": last_eval}

    lr_mult, lrs = 1.0, {}
    for step in range(start_step, num_steps):
        done = step + 1
        t0 = time.time()
        lr_mult = 1.0 - step / num_steps  # linear decay to zero over the run
        lrs = tr.apply_lr(optimizer, lr_mult, step)
        sums = torch.zeros(4, dtype=torch.float64, device=rt.device)  # reward, loss, reply tokens, questions
        indices = [step * args.questions_per_step + rt.rank + j * rt.world_size for j in range(per_rank)]
        conversations = [train_task[index % len(train_task)] for index in indices]  # global question numbers
        for out in rl_step(model, tokenizer, train_task, conversations, args.num_samples, args.max_new_tokens,
                           args.temperature, top_k, seed=args.seed * 1_000_003 + indices[0],
                           device_batch_size=args.device_batch_size or None, autocast=rt.autocast):
            sums += torch.tensor([out["reward_mean"], out["loss"], out["reply_tokens"], 1.0], dtype=torch.float64,
                                 device=rt.device)
        for p in model.parameters():  # a rank whose questions all had equal rewards has no gradient
            if p.grad is None:
                p.grad = torch.zeros_like(p)
        optimizer.step()
        model.zero_grad(set_to_none=True)
        if rt.ddp:
            torch.distributed.all_reduce(sums)
        reward, loss, reply_tokens, questions = (sums / sums[3]).tolist()[:3] + [sums[3].item()]
        rt.synchronize()
        dt = time.time() - t0
        loop_state["total_training_time"] += dt
        loop_state["questions_seen"] += int(questions)
        last = done == num_steps
        measured = None
        if do_eval and ((args.eval_every > 0 and done % args.eval_every == 0) or last):
            last_eval = measured = heldout()
        print0(f"step {done:05d}/{num_steps:05d} | reward {reward:.4f} | loss {loss:+.5f} | reply tokens "
               f"{reply_tokens:5.1f} | lr x{lr_mult:.3f} | dt {dt:.2f}s" + (f" | {describe(measured)}" if measured else ""))
        figures = {"reward_mean": reward}
        if rt.master:
            record = {"step": done, "reward_mean": reward, "loss": loss, "reply_tokens": reply_tokens,
                      "questions": int(questions), "samples": int(questions) * args.num_samples, "lr": lr_mult,
                      "lrs": lrs, "dt": dt, "time": loop_state["total_training_time"], "wall": time.time()}
            if measured:
                record.update({f"heldout_{k}": v for k, v in measured.items()})
            cm.append_metrics(ckpt_dir, record)
        if last or (args.save_every > 0 and done % args.save_every == 0):
            tr.save_training_checkpoint(ckpt_dir, done, model, optimizer, {"step": done}, make_meta(done, figures), rt)
            print0(f"saved checkpoint {cm.model_path(ckpt_dir, done)}")

    before = loop_state.get("heldout_before")
    result = {"task": task_name, "steps": num_steps, "checkpoint_dir": ckpt_dir,
              "before": before, "after": last_eval, "training_time": loop_state["total_training_time"]}
    if do_eval and last_eval is not None:
        line = f"after RL: {describe(last_eval)}"
        if before is not None:
            line += f" (before RL: mean reward {before['reward']:.4f}, greedy accuracy {before['greedy']:.4f})"
        print0(line)
    print0(f"done: {num_steps} RL steps in {format_duration(loop_state['total_training_time'])}")
    if rt.master:
        from nanochat.report import get_report
        summary = {"Source": f"{args.source}/{source_tag} step {source_step}", "Task": task_name, "Steps": num_steps,
                   "Samples per question": args.num_samples, "Questions per step": args.questions_per_step,
                   "Training time": format_duration(loop_state["total_training_time"])}
        if before is not None:
            summary["Held-out mean reward before RL"] = before["reward"]
            summary["Held-out greedy accuracy before RL"] = before["greedy"]
        if last_eval is not None:
            summary["Held-out mean reward after RL"] = last_eval["reward"]
            summary["Held-out greedy accuracy after RL"] = last_eval["greedy"]
            summary.update({f"Held-out {k} after RL": v for k, v in last_eval.items() if k.startswith("pass@")})
        get_report().log(section="Chat RL", data=[user_config, summary])
    compute_cleanup()
    return result
