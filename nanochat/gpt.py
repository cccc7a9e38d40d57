"""
The GPT model: a decoder-only Transformer in the modern nanochat recipe.

Pipeline position: token ids -> this model -> logits (or the loss). Every stage that trains or
generates builds one of these from a GPTConfig; checkpoints store its state dict.

What is in it, and why:
- rotary position embeddings (no learned position table): position enters through rotations of q, k
- QK-norm: q and k are RMS-normalised after rotary, which keeps attention logits in a sane range
- RMSNorm with no learnable parameters, also applied to the token embedding
- no biases anywhere; ReLU^2 MLP of width 4x; untied token embedding and LM head
- logit soft-capping 15*tanh(x/15): logits can never explode
- grouped-query attention (n_kv_head divides n_head): fewer K/V heads, smaller KV cache
- an optional sliding-window pattern per layer ("SSSL": short, short, short, long), last layer full
- value embeddings on alternating layers: a second token embedding mixed into V through a learned gate
- per-layer learnable scalars: x = resid_lambda * x + x0_lambda * x0 (x0 = the embedded input)

Options from upstream nanochat's later architecture (karpathy/nanochat, checked at commit 92d63d4),
off unless a GPTConfig turns them on (UPSTREAM_ARCH turns on all of them, as upstream trains):
- smear: each position adds a gated share of the previous token's embedding (bigrams for free)
- backout: a learned share of the middle layer's output is subtracted before the final norm
- the value-embedding gate reads 12 channels with range 3, q and k are scaled by 1.2 after
  QK-norm, rotary base 100000, and upstream's window sizes (see layer_window_sizes)
"""

from dataclasses import dataclass, asdict

import torch
import torch.nn as nn
import torch.nn.functional as F

from nanochat.common import UserError


class ConfigError(UserError, ValueError):
    """A model shape that cannot be built (from a flag or a damaged meta): one line for the user."""


# the optimizer's base learning rates (the AdamW ones for model dim 768, see setup_optimizers) and
# Muon's weight decay: the defaults of setup_optimizers and of every training stage's flags
# (training.add_optimizer_args)
OPTIMIZER_DEFAULTS = {"embedding_lr": 0.2, "unembedding_lr": 0.004, "matrix_lr": 0.02, "scalar_lr": 0.5,
                      "weight_decay": 0.0}


# upstream nanochat's architecture at commit 92d63d4 (2026-07) as GPTConfig options: what
# base_train --upstream-arch trains, and how an upstream checkpoint with smear weights is read
UPSTREAM_ARCH = {"smear": True, "backout": True, "ve_gate_channels": 12, "ve_gate_range": 3.0, "qk_scale": 1.2,
                 "rotary_base": 100000, "window_rule": "upstream"}
SMEAR_GATE_CHANNELS = 24  # the smear gate reads the first 24 channels of the embedding (upstream's number)
# the largest sizes a config may have: far above any model trained today, and low enough that a
# damaged meta (sequence_len 10**15) or a mistyped flag is a one-line error, not a failed allocation
CONFIG_LIMITS = {"sequence_len": 2**20, "vocab_size": 2**24, "n_layer": 1000, "n_embd": 2**16}
WINDOW_RULES = ("half", "upstream")


@dataclass
class GPTConfig:
    sequence_len: int = 2048
    vocab_size: int = 32768
    n_layer: int = 12
    n_head: int = 6
    n_kv_head: int = 6
    n_embd: int = 768
    window_pattern: str = "L"
    # upstream nanochat's later pieces (module docstring); the defaults are this project's model
    smear: bool = False         # mix a gated share of the previous token's embedding into each position
    backout: bool = False       # subtract a learned share of the middle layer's output before the head
    ve_gate_channels: int = 32  # channels of x the value-embedding gate reads (upstream: 12)
    ve_gate_range: float = 2.0  # the gate is ve_gate_range * sigmoid(...) (upstream: 3)
    qk_scale: float = 1.0       # q and k multiplied by this after QK-norm: sharper attention (upstream: 1.2)
    rotary_base: int = 10000    # base of the rotary frequencies (upstream: 100000)
    window_rule: str = "half"   # "half" or "upstream": how S and L become sizes (layer_window_sizes)

    def __post_init__(self):
        # a bad shape is the user's to fix (a flag or a damaged meta): say which, in one line
        for name in ("sequence_len", "vocab_size", "n_layer", "n_head", "n_kv_head", "n_embd", "ve_gate_channels",
                     "rotary_base"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ConfigError(f"model config: {name} must be a positive whole number, not {value!r}")
            if value > CONFIG_LIMITS.get(name, value):
                raise ConfigError(f"model config: {name} {value:,} is more than {CONFIG_LIMITS[name]:,}, the largest "
                                  f"this code builds")
        if self.n_head % self.n_kv_head:
            raise ConfigError(f"model config: n_kv_head {self.n_kv_head} must divide n_head {self.n_head} "
                            f"(grouped-query attention shares each K/V head among n_head / n_kv_head heads)")
        if self.n_embd % self.n_head or (self.n_embd // self.n_head) % 2:
            raise ConfigError(f"model config: n_embd {self.n_embd} must split into {self.n_head} heads of an even "
                            f"size (rotary turns pairs of channels); check --head-dim")
        if not isinstance(self.window_pattern, str) or not self.window_pattern \
                or any(c not in "SL" for c in self.window_pattern.upper()):
            raise ConfigError(f"model config: window pattern {self.window_pattern!r} may only contain S (half "
                            f"context) and L (full context), e.g. SSSL")
        for name in ("smear", "backout"):
            if not isinstance(getattr(self, name), bool):
                raise ConfigError(f"model config: {name} must be true or false, not {getattr(self, name)!r}")
        for name in ("ve_gate_range", "qk_scale"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 < value < float("inf"):
                raise ConfigError(f"model config: {name} must be a positive number, not {value!r}")
        if self.smear and self.n_embd < SMEAR_GATE_CHANNELS:
            raise ConfigError(f"model config: smear's gate reads {SMEAR_GATE_CHANNELS} channels, more than n_embd "
                              f"{self.n_embd}; use a wider model")
        if self.window_rule not in WINDOW_RULES:
            raise ConfigError(f"model config: window_rule {self.window_rule!r} must be one of {', '.join(WINDOW_RULES)}")

    def to_dict(self):
        return asdict(self)

    @classmethod
    def from_dict(cls, cfg):
        """A config from a checkpoint meta's model_config (keys this version does not know are ignored)."""
        if not isinstance(cfg, dict):
            raise ConfigError(f"model config must be a JSON object, not {type(cfg).__name__}")
        cfg = dict(cfg)
        cfg.setdefault("window_pattern", "L")  # metas written before sliding windows existed
        return cls(**{k: v for k, v in cfg.items() if k in cls.__dataclass_fields__})


def config_from_depth(depth, vocab_size, sequence_len, aspect_ratio=64, head_dim=128,
                      n_kv_head=None, window_pattern="L", **options):
    """The single knob: model dim = depth * aspect_ratio, rounded up to a multiple of head_dim.
    options: the upstream pieces (GPTConfig fields such as smear=True, or **UPSTREAM_ARCH)."""
    model_dim = depth * aspect_ratio
    model_dim = ((model_dim + head_dim - 1) // head_dim) * head_dim
    n_head = model_dim // head_dim
    n_kv_head = n_head if n_kv_head is None else n_kv_head
    return GPTConfig(sequence_len=sequence_len, vocab_size=vocab_size, n_layer=depth, n_head=n_head,
                     n_kv_head=n_kv_head, n_embd=model_dim, window_pattern=window_pattern, **options)


def padded_vocab_size(vocab_size, multiple=64):
    """Round the vocab up to a multiple of 64: the embedding / LM-head matmuls run faster."""
    return ((vocab_size + multiple - 1) // multiple) * multiple


def has_value_embedding(layer_idx, n_layer):
    """Value embeddings on alternating layers, always including the last one."""
    return layer_idx % 2 == (n_layer - 1) % 2


def layer_window_sizes(config):
    """Attention window (in tokens, the query's own included) of each layer from the pattern.

    window_rule "half": L = full context, S = half. "upstream" (upstream nanochat's FlashAttention
    rule): S = a quarter of the context rounded up to a 128-token tile, and a window of N counts the
    N keys *before* the query, so each layer sees one token more than its number.
    The pattern repeats over the layers, and the last layer always sees the full context."""
    pattern = config.window_pattern.upper()  # checked by GPTConfig
    long_w = config.sequence_len
    short_w = max(1, config.sequence_len // 2)
    if config.window_rule == "upstream":
        long_w, short_w = long_w + 1, -(-config.sequence_len // 4 // 128) * 128 + 1
    sizes = [long_w if pattern[i % len(pattern)] == "L" else short_w for i in range(config.n_layer)]
    sizes[-1] = long_w
    return sizes


def norm(x):
    # RMSNorm without learnable parameters
    return F.rms_norm(x, (x.size(-1),))


def apply_rotary_emb(x, cos, sin):
    # x: (B, T, H, D); rotate the two halves of each head as pairs
    d = x.shape[3] // 2
    x1, x2 = x[..., :d], x[..., d:]
    y1 = x1 * cos + x2 * sin
    y2 = x2 * cos - x1 * sin
    return torch.cat([y1, y2], dim=3)


# Flash Attention 3 is used on Hopper GPUs when its package is installed; SDPA everywhere else.
try:
    from flash_attn_interface import flash_attn_func as _fa3_func  # type: ignore
except Exception:  # not installed (the usual case): SDPA it is
    _fa3_func = None


def _use_fa3(q):
    return (_fa3_func is not None and q.is_cuda and torch.cuda.get_device_capability(q.device)[0] == 9
            and q.dtype in (torch.bfloat16, torch.float16))


def attention_mask(q_pos, k_len, window, device):
    """Boolean mask (Tq, Tk), True where a query may attend: causal and within the window."""
    k_pos = torch.arange(k_len, device=device)
    diff = q_pos[:, None] - k_pos[None, :]
    return (diff >= 0) & (diff < window)


def attention(q, k, v, q_pos0, window, pad=None):
    """Scaled dot-product attention. q: (B, Tq, H, D); k, v: (B, Tk, Hkv, D); returns (B, Tq, H, D).

    q_pos0 is the position of the first query (non-zero when decoding with a KV cache);
    the keys cover positions 0 .. Tk-1. pad (B,), when given, is how many positions at the start
    of each row are left padding (prompts of different lengths decoded as one batch): no query
    attends to them. Rotary makes attention depend only on distances, so a padded row computes
    what it would alone."""
    Tq, Tk = q.size(1), k.size(1)
    full_causal = pad is None and q_pos0 == 0 and Tq == Tk and window >= Tk
    if full_causal and _use_fa3(q):
        return _fa3_func(q, k, v, causal=True)
    one_query = pad is None and Tq == 1  # decoding: the new token is the last position
    if one_query and window < Tk:
        k, v = k[:, Tk - window:], v[:, Tk - window:]  # the keys its window sees
    qt, kt, vt = q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2)  # (B, H, T, D)
    gqa = qt.size(1) != kt.size(1)
    if full_causal:
        y = F.scaled_dot_product_attention(qt, kt, vt, is_causal=True, enable_gqa=gqa)
    elif one_query:
        # it may attend to every key left, so no mask at all: building one per layer per token
        # cost more than the attention itself at batch 1
        y = F.scaled_dot_product_attention(qt, kt, vt, enable_gqa=gqa)
    else:
        q_pos = torch.arange(q_pos0, q_pos0 + Tq, device=q.device)
        mask = attention_mask(q_pos, Tk, window, q.device)  # (Tq, Tk)
        if pad is not None:
            k_pos = torch.arange(Tk, device=q.device)
            real = (k_pos[None, :] >= pad[:, None])[:, None, :]               # (B, 1, Tk)
            itself = (k_pos[None, :] == q_pos[:, None])[None]                  # (1, Tq, Tk)
            # a padding query keeps itself so that its row is not empty (its output is never used)
            mask = (mask[None] & (real | itself))[:, None]                     # (B, 1, Tq, Tk)
        y = F.scaled_dot_product_attention(qt, kt, vt, attn_mask=mask, enable_gqa=gqa)
    return y.transpose(1, 2)


SOFTCAP = 15.0  # logits are squashed into (-15, 15) by SOFTCAP * tanh(logits / SOFTCAP)


class SoftcapCrossEntropy(torch.autograd.Function):
    """The training loss of the head, cross_entropy(SOFTCAP * tanh(x @ W.T / SOFTCAP), targets),
    and its gradient, computed a chunk of rows at a time (used on CPU).

    Why: the logits are (tokens, vocab), 4096 x 4096 in the CPU demo. Done the plain way, the
    divide, tanh, multiply, log-softmax and their backward passes each sweep that 64 MB matrix
    through memory, and together took longer than the head's matmuls. Here each chunk of rows is
    small enough to stay in the CPU cache while its loss and gradient are worked out, and the
    gradient of x and W is finished in the forward pass, so nothing of vocab size is kept for
    backward. The result equals the plain way up to float rounding (tests/test_gpt.py); on a GPU
    torch.compile fuses the plain way instead."""

    @staticmethod
    def forward(ctx, x, W, targets, chunk_rows=256):
        # x: (N, C) final hidden states, W: (V, C) the head, targets: (N,) with -1 = no loss
        grad_x, grad_W = torch.empty_like(x), torch.zeros_like(W)
        total = x.new_zeros((), dtype=torch.float32)
        for i in range(0, x.size(0), chunk_rows):
            xc, yc = x[i:i + chunk_rows], targets[i:i + chunk_rows]
            keep = (yc >= 0).unsqueeze(1)                             # rows that count
            yc = yc.clamp(min=0).unsqueeze(1)
            t = torch.tanh((xc @ W.t()).float() / SOFTCAP)            # (rows, V)
            z = t * SOFTCAP                                           # the capped logits
            lse = torch.logsumexp(z, dim=-1, keepdim=True)
            total += ((lse - z.gather(1, yc)) * keep).sum()          # -log p(target)
            p = torch.exp(z - lse)                                    # d loss / d z = softmax - one-hot,
            p.scatter_add_(1, yc, torch.full_like(lse, -1.0))
            p.mul_(keep).mul_(1 - t * t)                              # times d z / d logits = 1 - tanh^2
            p = p.to(x.dtype)
            grad_x[i:i + chunk_rows] = p @ W
            grad_W.addmm_(p.t(), xc)
        count = (targets >= 0).sum()
        ctx.save_for_backward(grad_x, grad_W, count)
        return total / count                                          # the mean over counted tokens

    @staticmethod
    def backward(ctx, grad_loss):
        grad_x, grad_W, count = ctx.saved_tensors
        scale = grad_loss / count
        return grad_x * scale.to(grad_x.dtype), grad_W * scale.to(grad_W.dtype), None, None


class CausalSelfAttention(nn.Module):
    def __init__(self, config, layer_idx):
        super().__init__()
        self.layer_idx = layer_idx
        self.n_head = config.n_head
        self.n_kv_head = config.n_kv_head
        self.head_dim = config.n_embd // config.n_head
        assert config.n_embd % config.n_head == 0
        assert config.n_head % config.n_kv_head == 0, "n_kv_head must divide n_head"
        self.c_q = nn.Linear(config.n_embd, self.n_head * self.head_dim, bias=False)
        self.c_k = nn.Linear(config.n_embd, self.n_kv_head * self.head_dim, bias=False)
        self.c_v = nn.Linear(config.n_embd, self.n_kv_head * self.head_dim, bias=False)
        self.c_proj = nn.Linear(config.n_embd, config.n_embd, bias=False)
        self.ve_gate_channels = config.ve_gate_channels
        self.ve_gate_range = config.ve_gate_range
        self.qk_scale = config.qk_scale
        self.ve_gate = None
        if has_value_embedding(layer_idx, config.n_layer):
            # gate = 2*sigmoid(W x[:, :32]), one number per KV head; zero init -> gate 1 at start
            # (range and channels are config options: upstream's gate is 3*sigmoid(W x[:, :12]))
            self.ve_gate = nn.Linear(self.ve_gate_channels, self.n_kv_head, bias=False)

    def qkv(self, x, ve, cos, sin):
        """Project to q, k, v with rotary and QK-norm applied (the tools reuse this)."""
        B, T, C = x.size()
        q = self.c_q(x).view(B, T, self.n_head, self.head_dim)
        k = self.c_k(x).view(B, T, self.n_kv_head, self.head_dim)
        v = self.c_v(x).view(B, T, self.n_kv_head, self.head_dim)
        if ve is not None:
            gate = self.ve_gate_range * torch.sigmoid(self.ve_gate(x[..., :self.ve_gate_channels]))  # (B, T, Hkv)
            v = v + gate.unsqueeze(-1) * ve.view(B, T, self.n_kv_head, self.head_dim)
        # rotary and QK-norm treat each head on its own, so q's and k's heads go through them
        # together: half the small operations, which is most of the time of decoding one token
        qk = norm(apply_rotary_emb(torch.cat([q, k], dim=2), cos, sin))  # (B, T, H+Hkv, D)
        if self.qk_scale != 1.0:  # sharper attention: the scores become qk_scale^2 * q.k / sqrt(D)
            qk = qk * self.qk_scale
        q, k = qk.split([self.n_head, self.n_kv_head], dim=2)
        return q, k, v

    def forward(self, x, ve, cos, sin, window, kv_cache=None):
        B, T, C = x.size()
        q, k, v = self.qkv(x, ve, cos, sin)  # (B, T, H|Hkv, D)
        q_pos0, pad = 0, None
        if kv_cache is not None:
            q_pos0, pad = kv_cache.get_pos(), kv_cache.pad
            k, v = kv_cache.insert_kv(self.layer_idx, k, v)  # all keys so far: (B, q_pos0+T, Hkv, D)
        y = attention(q, k, v, q_pos0, window, pad)
        return self.c_proj(y.reshape(B, T, C))


class MLP(nn.Module):
    def __init__(self, config):
        super().__init__()
        self.c_fc = nn.Linear(config.n_embd, 4 * config.n_embd, bias=False)
        self.c_proj = nn.Linear(4 * config.n_embd, config.n_embd, bias=False)

    def forward(self, x):
        return self.c_proj(F.relu(self.c_fc(x)).square())  # ReLU^2


class Block(nn.Module):
    def __init__(self, config, layer_idx):
        super().__init__()
        self.attn = CausalSelfAttention(config, layer_idx)
        self.mlp = MLP(config)

    def forward(self, x, ve, cos, sin, window, kv_cache=None):
        x = x + self.attn(norm(x), ve, cos, sin, window, kv_cache)
        x = x + self.mlp(norm(x))
        return x


class GPT(nn.Module):
    def __init__(self, config):
        super().__init__()
        self.config = config
        self.vocab_size = padded_vocab_size(config.vocab_size)
        self.window_sizes = layer_window_sizes(config)
        head_dim = config.n_embd // config.n_head
        kv_dim = config.n_kv_head * head_dim
        self.transformer = nn.ModuleDict({
            "wte": nn.Embedding(self.vocab_size, config.n_embd),
            "h": nn.ModuleList([Block(config, i) for i in range(config.n_layer)]),
        })
        self.lm_head = nn.Linear(config.n_embd, self.vocab_size, bias=False)
        self.value_embeds = nn.ModuleDict({
            str(i): nn.Embedding(self.vocab_size, kv_dim)
            for i in range(config.n_layer) if has_value_embedding(i, config.n_layer)
        })
        self.resid_lambdas = nn.Parameter(torch.ones(config.n_layer))
        self.x0_lambdas = nn.Parameter(torch.zeros(config.n_layer))
        if config.smear:  # the gate reads the first 24 channels of the embedding: one number per position
            self.smear_gate = nn.Linear(SMEAR_GATE_CHANNELS, 1, bias=False)
            self.smear_lambda = nn.Parameter(torch.zeros(1))
        if config.backout:
            self.backout_lambda = nn.Parameter(torch.zeros(1))
        # rotary tables for 10x the training length, so generation can run past it
        self.rotary_seq_len = config.sequence_len * 10
        cos, sin = self._precompute_rotary(self.rotary_seq_len, head_dim)
        self.register_buffer("cos", cos, persistent=False)
        self.register_buffer("sin", sin, persistent=False)

    def _precompute_rotary(self, seq_len, head_dim, device=None):
        if device is None:
            device = self.transformer.wte.weight.device
        base = self.config.rotary_base
        channel_range = torch.arange(0, head_dim, 2, dtype=torch.float32, device=device)
        inv_freq = 1.0 / (base ** (channel_range / head_dim))
        t = torch.arange(seq_len, dtype=torch.float32, device=device)
        freqs = torch.outer(t, inv_freq)
        cos, sin = freqs.cos(), freqs.sin()
        return cos[None, :, None, :], sin[None, :, None, :]  # (1, T, 1, D/2)

    @torch.no_grad()
    def init_weights(self):
        """Initialise every parameter explicitly (the model is usually built on the meta device)."""
        n_embd = self.config.n_embd
        s = 3 ** 0.5 * n_embd ** -0.5  # uniform bound with the std of N(0, 1/n_embd)
        torch.nn.init.normal_(self.transformer.wte.weight, mean=0.0, std=1.0)
        torch.nn.init.normal_(self.lm_head.weight, mean=0.0, std=0.001)
        for block in self.transformer.h:
            for lin in (block.attn.c_q, block.attn.c_k, block.attn.c_v, block.mlp.c_fc):
                torch.nn.init.uniform_(lin.weight, -s, s)
            # output projections start at zero: every block begins as the identity
            torch.nn.init.zeros_(block.attn.c_proj.weight)
            torch.nn.init.zeros_(block.mlp.c_proj.weight)
            if block.attn.ve_gate is not None:
                torch.nn.init.zeros_(block.attn.ve_gate.weight)
        for emb in self.value_embeds.values():
            torch.nn.init.uniform_(emb.weight, -s, s)
        self.resid_lambdas.fill_(1.0)
        self.x0_lambdas.fill_(0.1)
        # upstream's init of its pieces, drawn last so that everything else starts as without them
        if self.config.smear:
            torch.nn.init.uniform_(self.smear_gate.weight, 0.0, 0.02)  # a small positive gate...
            self.smear_lambda.fill_(0.0)                                # ...of a smear that starts off
        if self.config.backout:
            self.backout_lambda.fill_(0.2)
        self.init_rotary()

    @torch.no_grad()
    def init_rotary(self):
        """Fill the rotary cos/sin tables: buffers that are not saved in checkpoints."""
        head_dim = self.config.n_embd // self.config.n_head
        cos, sin = self._precompute_rotary(self.rotary_seq_len, head_dim, device=self.cos.device)
        self.cos.copy_(cos)
        self.sin.copy_(sin)

    def get_device(self):
        return self.transformer.wte.weight.device

    # ------------------------------------------------------------------ counting

    def num_params(self):
        return sum(p.numel() for p in self.parameters())

    def num_scaling_params(self):
        """Parameters that count for scaling laws (Chinchilla-style): everything but the
        embedding tables (token and value embeddings), which are lookups, not matmuls."""
        emb = self.transformer.wte.weight.numel() + sum(e.weight.numel() for e in self.value_embeds.values())
        return self.num_params() - emb

    def param_counts(self):
        """Parameter count by group, for printing and for the model calculator."""
        h = self.transformer.h
        return {
            "token_embedding": self.transformer.wte.weight.numel(),
            "value_embeddings": sum(e.weight.numel() for e in self.value_embeds.values()),
            "attention": sum(p.numel() for b in h for n, p in b.attn.named_parameters() if not n.startswith("ve_gate")),
            "value_gates": sum(b.attn.ve_gate.weight.numel() for b in h if b.attn.ve_gate is not None),
            "mlp": sum(p.numel() for b in h for p in b.mlp.parameters()),
            "scalars": self.resid_lambdas.numel() + self.x0_lambdas.numel()
                       + sum(p.numel() for p in self.upstream_scalars()),
            "lm_head": self.lm_head.weight.numel(),
        }

    def upstream_scalars(self):
        """The parameters of smear and backout (empty when they are off)."""
        return [p for name, p in self.named_parameters() if name.split(".")[0] in
                ("smear_gate", "smear_lambda", "backout_lambda")]

    def estimate_flops(self):
        """Training FLOPs per token: 6 per matmul weight (2 forward, 4 backward) plus attention.

        Embedding lookups do no matmul and are left out. Attention scores and the weighted sum of
        values cost 2 * 2 * head_dim multiply-adds per head per attended key, forward; x3 with the
        backward pass. Each layer attends over its window (capped at the sequence length)."""
        nparams = self.num_params()
        nparams_emb = self.transformer.wte.weight.numel() + sum(e.weight.numel() for e in self.value_embeds.values())
        nparams_scalar = self.resid_lambdas.numel() + self.x0_lambdas.numel()
        nparams_scalar += sum(p.numel() for p in self.upstream_scalars())  # as param_counts: all "scalars"
        h = self.config.n_head
        q = self.config.n_embd // self.config.n_head
        t = self.config.sequence_len
        attn_flops = sum(12 * h * q * min(w, t) for w in self.window_sizes)
        return 6 * (nparams - nparams_emb - nparams_scalar) + attn_flops

    # ------------------------------------------------------------------ optimizer

    def setup_optimizers(self, adam_betas=(0.8, 0.95), distributed=False, **settings):
        """One optimizer: Muon for the 2-D matrices inside the blocks, AdamW for the rest.

        settings: any of OPTIMIZER_DEFAULTS (embedding_lr, unembedding_lr, matrix_lr, scalar_lr,
        weight_decay); those not given keep their defaults."""
        from nanochat.optim import MuonAdamW, DistMuonAdamW
        if set(settings) - set(OPTIMIZER_DEFAULTS):
            raise TypeError(f"setup_optimizers() takes {', '.join(OPTIMIZER_DEFAULTS)}, "
                            f"not {', '.join(sorted(set(settings) - set(OPTIMIZER_DEFAULTS)))}")
        lr = {**OPTIMIZER_DEFAULTS, **settings}
        model_dim = self.config.n_embd
        # AdamW learning rates were tuned at dim 768; scale them as 1/sqrt(dim) for other sizes
        dmodel_lr_scale = (model_dim / 768) ** -0.5
        matrix_params = [p for p in self.transformer.h.parameters()]
        embedding_params = [self.transformer.wte.weight] + [e.weight for e in self.value_embeds.values()]
        lm_head_params = [self.lm_head.weight]
        scalar_params = [self.resid_lambdas, self.x0_lambdas]
        upstream_params = self.upstream_scalars()
        n_grouped = (len(matrix_params) + len(embedding_params) + len(lm_head_params) + len(scalar_params)
                     + len(upstream_params))
        assert n_grouped == len(list(self.parameters())), "every parameter belongs to exactly one group"
        groups = [
            dict(kind="adamw", name="lm_head", params=lm_head_params, lr=lr["unembedding_lr"] * dmodel_lr_scale,
                 betas=adam_betas, eps=1e-10, weight_decay=0.0),
            dict(kind="adamw", name="embedding", params=embedding_params, lr=lr["embedding_lr"] * dmodel_lr_scale,
                 betas=adam_betas, eps=1e-10, weight_decay=0.0),
            dict(kind="adamw", name="scalar", params=scalar_params, lr=lr["scalar_lr"],
                 betas=adam_betas, eps=1e-10, weight_decay=0.0),
            dict(kind="muon", name="matrix", params=matrix_params, lr=lr["matrix_lr"], momentum=0.95,
                 nesterov=True, ns_steps=5, weight_decay=lr["weight_decay"]),
        ]
        if upstream_params:  # smear and backout: AdamW at upstream's fixed learning rate 0.2
            groups.append(dict(kind="adamw", name="smear_backout", params=upstream_params, lr=0.2,
                               betas=adam_betas, eps=1e-10, weight_decay=0.0))
        cls = DistMuonAdamW if distributed else MuonAdamW
        optimizer = cls(groups)
        for group in optimizer.param_groups:
            group["initial_lr"] = group["lr"]
        return optimizer

    # ------------------------------------------------------------------ forward

    def forward(self, idx, targets=None, kv_cache=None, loss_reduction="mean"):
        """idx: (B, T) token ids. With targets (B, T) returns the loss (targets -1 are ignored);
        without, returns logits (B, T, vocab). With a kv_cache, positions continue from the cache."""
        B, T = idx.size()
        pos0 = 0 if kv_cache is None else kv_cache.get_pos()
        assert pos0 + T <= self.cos.size(1), f"sequence too long for the rotary table: {pos0 + T}"
        cos, sin = self.cos[:, pos0:pos0 + T], self.sin[:, pos0:pos0 + T]
        x = norm(self.transformer.wte(idx))  # (B, T, C)
        if self.config.smear:
            x = self.smear(x, kv_cache)
        x0 = x
        for i, block in enumerate(self.transformer.h):
            x = self.resid_lambdas[i] * x + self.x0_lambdas[i] * x0
            ve = self.value_embeds[str(i)](idx) if str(i) in self.value_embeds else None
            x = block(x, ve, cos, sin, self.window_sizes[i], kv_cache)
            if self.config.backout and i == self.config.n_layer // 2:
                x_mid = x  # the middle layer's output: low-level features the head does better without
        if self.config.backout:
            x = x - self.backout_lambda * x_mid
        x = norm(x)
        if targets is not None and loss_reduction == "mean" and x.device.type == "cpu" and torch.is_grad_enabled():
            # training on a CPU: the same loss as below, without sweeping the full logits through memory
            W = self.lm_head.weight[:self.config.vocab_size]
            return SoftcapCrossEntropy.apply(x.view(B * T, -1), W, targets.reshape(-1))
        logits = self.lm_head(x)[..., :self.config.vocab_size]  # drop the padding columns
        logits = SOFTCAP * torch.tanh(logits.float() / SOFTCAP)  # (B, T, vocab)
        if kv_cache is not None:
            kv_cache.advance(T)
        if targets is None:
            return logits
        return F.cross_entropy(logits.view(-1, logits.size(-1)), targets.reshape(-1),
                               ignore_index=-1, reduction=loss_reduction)

    def smear(self, x, kv_cache=None):
        """x (B, T, C) normed embeddings -> x_t + smear_lambda * sigmoid(W x_t[:24]) * x_(t-1).

        The first token has no previous one. With a KV cache the previous token of the first new
        position is the cache's last one (its embedding is kept as kv_cache.prev_embedding), and in a
        left-padded row the first real token's previous one is padding, so it gets none either."""
        T = x.size(1)
        cached = None if kv_cache is None else kv_cache.prev_embedding  # (B, 1, C) or None
        if kv_cache is not None:
            kv_cache.prev_embedding = x[:, -1:]
        cur, prev = (x, torch.cat([cached, x[:, :-1]], dim=1)) if cached is not None else (x[:, 1:], x[:, :-1])
        gate = self.smear_lambda * torch.sigmoid(self.smear_gate(cur[..., :SMEAR_GATE_CHANNELS]))  # (B, T', 1)
        if kv_cache is not None and kv_cache.pad is not None:
            pos = torch.arange(kv_cache.get_pos() + T - cur.size(1), kv_cache.get_pos() + T, device=x.device)
            gate = gate * (pos[None, :] - 1 >= kv_cache.pad[:, None]).unsqueeze(-1)  # previous token is real
        smeared = cur + gate * prev
        return smeared if cached is not None else torch.cat([x[:, :1], smeared], dim=1)

    @torch.inference_mode()  # like no_grad, and tensors skip autograd's version counters too
    def generate(self, tokens, max_tokens, temperature=1.0, top_k=None, seed=42):
        """Plain autoregressive sampling without a KV cache (the reference the engine is tested against)."""
        device = self.get_device()
        rng = torch.Generator(device=device)
        rng.manual_seed(seed)
        ids = torch.tensor([tokens], dtype=torch.long, device=device)
        for _ in range(max_tokens):
            logits = self.forward(ids)[:, -1, :]
            if top_k is not None and top_k > 0:
                v, _ = torch.topk(logits, min(top_k, logits.size(-1)))
                logits[logits < v[:, [-1]]] = -float("inf")
            if temperature > 0:
                probs = F.softmax(logits / temperature, dim=-1)
                next_id = torch.multinomial(probs, num_samples=1, generator=rng)
            else:
                next_id = torch.argmax(logits, dim=-1, keepdim=True)
            ids = torch.cat((ids, next_id), dim=1)
            yield next_id.item()


def build_model(config, device):
    """Build a GPT on the meta device (no memory touched), move it to `device` and initialise it."""
    with torch.device("meta"):
        model = GPT(config)
    model.to_empty(device=device)
    model.init_weights()
    return model
