"""
Reinforcement learning on problems with checkable answers: on-policy REINFORCE with a per-question
mean baseline (the "GRPO" recipe without its KL term and ratio clipping).

Pipeline position: scripts/chat_rl.py holds the loop and runs it on an SFT model
(chatsft_checkpoints), writing chatrl_checkpoints/; the tasks (nanochat_tasks/mixtures.py: GSM8K, or the
offline arithmetic word problems) give the rewards; these are the pieces the loop calls.

One step, followed with a finger (the loop in scripts/chat_rl.py):
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
