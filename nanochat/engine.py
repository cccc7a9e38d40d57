"""
Inference: fast generation with a KV cache, sampling controls, streaming, and tool use.

Pipeline position: everything that talks to a trained model goes through Engine: the chat CLI,
the web server, chat evaluation, RL rollouts and the generation explorer.

The KV cache: a Transformer recomputes keys and values of every earlier token at each step unless
they are kept. KVCache preallocates room for them (layers x batch x heads x positions x dim), so
each new token costs one position of work instead of the whole context.

Generation: the prompt is run once (prefill), its cache is copied into a batch of `num_samples`
rows, and then all rows decode together, one token per step. Several prompts can share a batch:
shorter ones are left-padded and the padding is masked out of attention (evaluation uses this).

Tool use: when a row emits <|python_start|> ... <|python_end|>, the text in between goes to the
calculator (nanochat/calculator.py), and its result is *forced* into that row as
<|output_start|> result <|output_end|>; forced tokens are streamed with mask 0 (not sampled).
"""

from collections import deque

import torch
import torch.nn.functional as F

from nanochat.calculator import use_calculator

# the order in which the sampling filters are applied to the logits (the explorer prints it)
FILTER_ORDER = ("temperature", "top_k", "top_p", "min_p")


class KVCache:
    """Keys and values of every layer for a batch of rows; grows if a row runs past its size.

    Stored as (layers, batch, heads, positions, dim): the keys of one head lie next to each other,
    as attention reads them (decoding 16 rows ran 1.1x faster than with positions before heads)."""

    def __init__(self, batch_size, num_kv_heads, seq_len, head_dim, num_layers, device, dtype=torch.float32,
                 pad=None):
        shape = (num_layers, batch_size, num_kv_heads, seq_len, head_dim)
        self.k = torch.zeros(shape, device=device, dtype=dtype)
        self.v = torch.zeros(shape, device=device, dtype=dtype)
        self.pos = 0
        self.pad = pad  # (batch,) left padding of each row, or None when no row is padded
        self.prev_embedding = None  # (batch, 1, C): the last token's embedding, for models with smear

    @classmethod
    def for_model(cls, model, batch_size, seq_len, pad=None):
        c = model.config
        head_dim = c.n_embd // c.n_head
        dtype = torch.bfloat16 if model.get_device().type == "cuda" else torch.float32
        return cls(batch_size, c.n_kv_head, seq_len, head_dim, c.n_layer, model.get_device(), dtype, pad)

    def get_pos(self):
        return self.pos

    def _ensure(self, needed):
        cap = self.k.size(3)
        if needed <= cap:
            return
        new_cap = max(needed, 2 * cap)
        grow = list(self.k.shape)
        grow[3] = new_cap - cap
        self.k = torch.cat([self.k, self.k.new_zeros(grow)], dim=3)
        self.v = torch.cat([self.v, self.v.new_zeros(grow)], dim=3)

    def insert_kv(self, layer_idx, k, v):
        """Store k, v (B, T, Hkv, D) at the current position; return all keys/values so far
        (B, pos + T, Hkv, D), as views of the cache."""
        end = self.pos + k.size(1)
        self._ensure(end)
        k_layer, v_layer = self.k[layer_idx], self.v[layer_idx]  # (B, Hkv, capacity, D)
        k_layer[:, :, self.pos:end] = k.transpose(1, 2)  # the copy casts to the cache's dtype
        v_layer[:, :, self.pos:end] = v.transpose(1, 2)
        k_all, v_all = k_layer[:, :, :end].transpose(1, 2), v_layer[:, :, :end].transpose(1, 2)
        # (decoding one token runs a few hundred small operations: each one left out counts)
        if k.dtype == k_all.dtype:
            return k_all, v_all
        return k_all.to(k.dtype), v_all.to(v.dtype)

    def advance(self, T):
        """Called by the model once all layers have stored the T new positions."""
        self.pos += T

    def copy_prefill(self, other):
        """Fill this cache (batch P x N) from a prefilled one (batch P): each of the P prompts
        becomes N rows that start from it."""
        assert self.pos == 0 and self.k.size(1) % other.k.size(1) == 0
        n = self.k.size(1) // other.k.size(1)
        self._ensure(other.pos)
        self.k[:, :, :, :other.pos] = other.k[:, :, :, :other.pos].repeat_interleave(n, dim=1)
        self.v[:, :, :, :other.pos] = other.v[:, :, :, :other.pos].repeat_interleave(n, dim=1)
        self.pad = None if other.pad is None else other.pad.repeat_interleave(n)
        if other.prev_embedding is not None:
            self.prev_embedding = other.prev_embedding.repeat_interleave(n, dim=0)
        self.pos = other.pos


def filter_logits(logits, temperature=1.0, top_k=None, top_p=None, min_p=None):
    """Apply the sampling filters in FILTER_ORDER to logits (B, V); removed entries become -inf.

    temperature divides the logits; top_k keeps the k largest; top_p keeps the smallest set of
    tokens whose probability adds up to at least p; min_p drops tokens less likely than
    min_p x the most likely one. temperature <= 0 means greedy and is handled by the caller."""
    logits = logits.float()
    if temperature and temperature > 0:
        logits = logits / temperature
    if top_k is not None and top_k > 0 and top_k < logits.size(-1):
        kth = torch.topk(logits, top_k, dim=-1).values[..., -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if top_p is not None and 0 < top_p < 1:
        sorted_logits, order = torch.sort(logits, descending=True, dim=-1)
        probs = sorted_logits.softmax(-1)
        before = probs.cumsum(-1) - probs  # probability mass strictly above each token
        drop_sorted = before >= top_p       # the top token is never dropped
        drop = drop_sorted.scatter(-1, order, drop_sorted)
        logits = logits.masked_fill(drop, float("-inf"))
    if min_p is not None and min_p > 0:
        probs = logits.softmax(-1)
        logits = logits.masked_fill(probs < min_p * probs.max(-1, keepdim=True).values, float("-inf"))
    return logits


def draw(probs, rng):
    """One token id per row of probs (B, V) -> (B,), each drawn with its probability.

    Inverse transform sampling: lay the probabilities end to end on [0, 1) (their running sum),
    throw one uniform random number per row, and take the token whose stretch it lands in. It
    costs one random number per row; torch.multinomial draws one per vocabulary entry, which at 16
    rows took longer than the model's attention. The sum runs in float64 so that tokens far less
    likely than float32's rounding keep their chance, and a token of probability 0 is never drawn."""
    cdf = probs.double().cumsum(dim=-1)
    u = torch.rand(probs.size(0), 1, generator=rng, dtype=cdf.dtype, device=cdf.device) * cdf[:, -1:]
    return torch.searchsorted(cdf, u, right=True).squeeze(-1).clamp_(max=probs.size(-1) - 1)


def sample_next_token(logits, rng, temperature=1.0, top_k=None, top_p=None, min_p=None):
    """One token id per row of logits (B, V) -> (B,). temperature 0 is greedy (argmax)."""
    if not temperature or temperature <= 0:
        return torch.argmax(logits, dim=-1)
    return draw(F.softmax(filter_logits(logits, temperature, top_k, top_p, min_p), dim=-1), rng)


def as_prompt_list(tokens):
    """One prompt (list of ids) or several (list of lists) -> a list of prompts."""
    if isinstance(tokens, list) and tokens and isinstance(tokens[0], int):
        return [tokens]
    assert isinstance(tokens, list) and tokens and all(isinstance(p, list) and p and isinstance(p[0], int)
                                                       for p in tokens), "expected token ids or a list of them"
    return tokens


class RowState:
    """One generated row: its tokens and where it stands in a tool call (shared with the explorer)."""

    def __init__(self, tokens):
        self.tokens = list(tokens)
        self.forced = deque()
        self.in_python = False
        self.python_tokens = []
        self.completed = False


class Engine:

    def __init__(self, model, tokenizer):
        self.model = model
        self.tokenizer = tokenizer
        sp = tokenizer.encode_special
        self.python_start, self.python_end = sp("<|python_start|>"), sp("<|python_end|>")
        self.output_start, self.output_end = sp("<|output_start|>"), sp("<|output_end|>")
        self.assistant_end, self.bos = sp("<|assistant_end|>"), tokenizer.get_bos_token_id()

    @torch.inference_mode()  # like no_grad, and tensors skip autograd's version counters too
    def generate(self, tokens, num_samples=1, max_tokens=None, temperature=1.0, top_k=None, top_p=None,
                 min_p=None, seed=42):
        """Yield (token_column, mask_column) per step: one token per row, mask 1 sampled / 0 forced.

        tokens is one prompt (a list of ids) or several (a list of lists); each prompt gets
        num_samples rows, prompt by prompt. Rows that finished keep producing filler until every
        row is done or max_tokens is reached; generate_batch() and the front ends simply ignore a
        row after its end."""
        prompts = as_prompt_list(tokens)
        device = self.model.get_device()
        rng = torch.Generator(device=device)
        rng.manual_seed(seed)
        max_tokens = max_tokens if max_tokens is not None else self.model.config.sequence_len
        # prefill each prompt once (shorter ones left-padded, the padding masked out of attention),
        # then share each prompt's cache with its num_samples rows
        width = max(len(p) for p in prompts)
        pads = [width - len(p) for p in prompts]
        pad = torch.tensor(pads, device=device) if any(pads) else None
        kv_prefill = KVCache.for_model(self.model, len(prompts), width, pad=pad)
        ids = torch.tensor([[0] * n + p for n, p in zip(pads, prompts)], dtype=torch.long, device=device)  # any id pads
        logits = self.model.forward(ids, kv_cache=kv_prefill)[:, -1, :]  # (P, V)
        kv = KVCache.for_model(self.model, len(prompts) * num_samples, width + max_tokens)
        kv.copy_prefill(kv_prefill)
        del kv_prefill
        logits = logits.repeat_interleave(num_samples, dim=0)
        rows = [RowState(p) for p in prompts for _ in range(num_samples)]
        for _ in range(max_tokens):
            if all(r.completed for r in rows):
                break
            sampled = sample_next_token(logits, rng, temperature, top_k, top_p, min_p).tolist()
            column, masks = [], []
            for row, s in zip(rows, sampled):
                forced = len(row.forced) > 0
                token = row.forced.popleft() if forced else s
                column.append(token)
                masks.append(0 if forced else 1)
                row.tokens.append(token)
                self.advance_tool_state(row, token)
            yield column, masks
            ids = torch.tensor(column, dtype=torch.long, device=device).unsqueeze(1)
            logits = self.model.forward(ids, kv_cache=kv)[:, -1, :]

    def advance_tool_state(self, row, token):
        """Update a RowState with the token it just got: end of turn, or a calculator call whose
        result is queued in row.forced to be fed in next (as output_start result output_end)."""
        if token in (self.assistant_end, self.bos):
            row.completed = True
        if token == self.python_start:
            row.in_python, row.python_tokens = True, []
        elif token == self.python_end and row.in_python:
            row.in_python = False
            result = use_calculator(self.tokenizer.decode(row.python_tokens))
            if result is not None:
                row.forced.extend([self.output_start, *self.tokenizer.encode(str(result)), self.output_end])
        elif row.in_python:
            row.python_tokens.append(token)

    def generate_batch(self, tokens, num_samples=1, **kwargs):
        """Non-streaming: returns (token lists, mask lists) per row, prompt included, each cut at
        its terminal token (<|assistant_end|> or <|bos|>, not included). tokens: as generate()."""
        prompts = as_prompt_list(tokens)
        results = [list(p) for p in prompts for _ in range(num_samples)]
        masks = [[0] * len(p) for p in prompts for _ in range(num_samples)]
        done = [False] * len(results)
        for column, mask_col in self.generate(tokens, num_samples, **kwargs):
            for i, (tok, m) in enumerate(zip(column, mask_col)):
                if done[i]:
                    continue
                if tok in (self.assistant_end, self.bos):
                    done[i] = True
                    continue
                results[i].append(tok)
                masks[i].append(m)
            if all(done):
                break
        return results, masks


# prompts that show what a base model has learned (the base stages print their completions)
SAMPLE_PROMPTS = ["The capital of France is", "Once upon a time", "To be, or not to be", "My lord, I",
                  "The opposite of hot is"]


def complete_prompts(model, tokenizer, prompts=SAMPLE_PROMPTS, max_tokens=24):
    """Greedy continuations of plain-text prompts (BOS + prompt), one string per prompt."""
    engine = Engine(model, tokenizer)
    lines = []
    for prompt in prompts:
        ids = tokenizer.encode(prompt, prepend=tokenizer.get_bos_token_id())
        rows, _ = engine.generate_batch(ids, 1, max_tokens=max_tokens, temperature=0.0)
        lines.append(tokenizer.decode(rows[0][1:]))
    return lines
