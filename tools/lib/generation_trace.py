"""
Generation, one step at a time: what the model considered at each token and why it picked it.

Pipeline position: a magnifying glass over nanochat/engine.py, used by tools/generation_explorer.py.

At every step the trace records the model's raw distribution (softmax of the logits), the
distribution actually sampled from after the engine's own filters (engine.filter_logits, applied
in engine.FILTER_ORDER: temperature, then top-k, then top-p, then min-p), the chosen token with its
probability, the top alternatives and the entropy of both distributions. The random numbers are
drawn exactly as Engine.generate draws them (a torch.Generator seeded with `seed`, one
engine.draw per step), so a trace and the engine produce the same tokens for the same seed.

Branching (`force`): at a chosen step a given token replaces the sampled one; the sample is still
drawn, so the random stream stays aligned with the unbranched run and the two generations differ
only because of the forced token.

Tool use: given the Engine, the trace follows calculator calls the way Engine.generate does (the
result is fed in as <|output_start|> ... <|output_end|>); those steps are marked as tool output.
"""

import math
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

from nanochat.engine import KVCache, RowState, draw, filter_logits, FILTER_ORDER

DEFAULT_TEMPERATURES = (0.1, 0.3, 0.5, 0.7, 1.0, 1.5)
DEFAULT_TOP_KS = (1, 5, 20, 50, 0)  # 0: no top-k filter


@dataclass
class Step:
    index: int                 # 0 = first generated token
    token_id: int
    prob: float                # probability of the chosen token in the sampled (filtered) distribution
    raw_prob: float            # its probability under the model's raw distribution (temperature 1, no filter)
    entropy: float             # bits, of the sampled distribution
    raw_entropy: float         # bits, of the model's raw distribution
    kept: int                  # how many tokens survived the filters
    alternatives: list = field(default_factory=list)  # [(token_id, prob)] of the sampled distribution
    forced: bool = False       # replaced by --force
    tool: bool = False         # fed in by the calculator tool, not chosen by the model


def entropy_bits(probs):
    """Shannon entropy in bits of a probability vector (zeros contribute nothing)."""
    p = probs[probs > 0]
    return float(-(p * p.log2()).sum())


def sampling_distribution(logits, temperature=1.0, top_k=None, top_p=None, min_p=None):
    """The probabilities a token is sampled from: softmax of the engine's filtered logits (V,).

    Temperature 0 means greedy decoding; the distribution shown is then the filtered one at
    temperature 1, whose most likely token is the one greedy picks."""
    return F.softmax(filter_logits(logits.unsqueeze(0), temperature, top_k, top_p, min_p)[0], dim=-1)


def describe_filters(temperature=1.0, top_k=None, top_p=None, min_p=None):
    """Lines naming each filter in the order the engine applies it, with its setting."""
    settings = {
        "temperature": (f"divide logits by {temperature}" if temperature and temperature > 0
                        else "0 = greedy: always the most likely token"),
        "top_k": f"keep the {top_k} most likely tokens" if top_k else "off",
        "top_p": f"keep the smallest set with total probability >= {top_p}" if top_p and 0 < top_p < 1 else "off",
        "min_p": f"drop tokens below {min_p} x the top probability" if min_p else "off",
    }
    return [f"{i + 1}. {name}: {settings[name]}" for i, name in enumerate(FILTER_ORDER)]


@torch.no_grad()
def trace_generation(model, prompt_ids, max_tokens=20, temperature=1.0, top_k=None, top_p=None, min_p=None,
                     seed=42, top_n=5, force=None, stop_ids=(), engine=None):
    """Generate from `prompt_ids` and record every step. Returns a list of Step.

    force: {step index: token id} replaces the sampled token at those steps (a branch).
    stop_ids: token ids that end the generation (included as the last step).
    engine: an Engine whose calculator tool state the trace follows (None: no tool use)."""
    force = force or {}
    row = RowState(prompt_ids)
    device = model.get_device()
    rng = torch.Generator(device=device)
    rng.manual_seed(seed)
    kv = KVCache.for_model(model, 1, len(prompt_ids) + max_tokens)
    ids = torch.tensor([list(prompt_ids)], dtype=torch.long, device=device)
    logits = model.forward(ids, kv_cache=kv)[0, -1, :]  # (V,)
    steps = []
    for i in range(max_tokens):
        raw = F.softmax(logits.float(), dim=-1)
        probs = sampling_distribution(logits, temperature, top_k, top_p, min_p)
        if temperature and temperature > 0:
            sampled = int(draw(probs.unsqueeze(0), rng)[0])
        else:
            sampled = int(torch.argmax(logits))
        tool = engine is not None and len(row.forced) > 0
        token = row.forced.popleft() if tool else force.get(i, sampled)
        if engine is not None:
            engine.advance_tool_state(row, token)
        top_p_vals, top_ids = torch.topk(probs, min(top_n, probs.numel()))
        steps.append(Step(
            index=i, token_id=token, prob=float(probs[token]), raw_prob=float(raw[token]),
            entropy=entropy_bits(probs), raw_entropy=entropy_bits(raw), kept=int((probs > 0).sum()),
            alternatives=[(int(t), float(p)) for t, p in zip(top_ids, top_p_vals) if p > 0],
            forced=i in force and not tool, tool=tool,
        ))
        if token in stop_ids:
            break
        logits = model.forward(torch.tensor([[token]], dtype=torch.long, device=device), kv_cache=kv)[0, -1, :]
    return steps


def generate_with_settings(engine, prompt_ids, settings, max_tokens=30, seed=42):
    """One generation per setting (dicts of temperature/top_k/top_p/min_p), all with the same seed,
    so the differences come from the setting alone. Returns [(setting, generated ids)]."""
    out = []
    for setting in settings:
        rows, _ = engine.generate_batch(list(prompt_ids), num_samples=1, max_tokens=max_tokens, seed=seed, **setting)
        out.append((setting, rows[0][len(prompt_ids):]))
    return out


def prompt_ids_for(tokenizer, prompt, chat):
    """Token ids of the prompt: a chat model gets the chat template (a user turn, then
    <|assistant_start|>), exactly as the chat front ends build it; a base model gets BOS + text."""
    if chat:
        return tokenizer.render_for_completion({"messages": [{"role": "user", "content": prompt}]})
    return tokenizer.encode(prompt, prepend=tokenizer.get_bos_token_id())


def stop_ids_for(tokenizer, chat):
    """Tokens that end a generation: the end of the assistant's turn for chat models, BOS for both."""
    stops = {tokenizer.get_bos_token_id()}
    if chat:
        stops.add(tokenizer.encode_special("<|assistant_end|>"))
    return stops


def parse_force(tokenizer, text, at_step):
    """{step: token} for --force: the text's tokens are forced from `at_step` on.

    `text` may also be '#<id>' to force one token by its id."""
    if text.startswith("#") and text[1:].isdigit():
        token_ids = [int(text[1:])]
        if token_ids[0] >= tokenizer.get_vocab_size():
            raise ValueError(f"token id {token_ids[0]} is outside the vocabulary (size {tokenizer.get_vocab_size()})")
    else:
        token_ids = tokenizer.encode(text)
    if not token_ids:
        raise ValueError("the forced text is empty")
    return {at_step + j: t for j, t in enumerate(token_ids)}


def perplexity(steps):
    """exp of the mean negative log-probability of the chosen tokens under the raw distribution."""
    if not steps:
        return float("nan")
    return math.exp(-sum(math.log(max(s.raw_prob, 1e-30)) for s in steps) / len(steps))
