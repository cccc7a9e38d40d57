"""
An exported nanochat model for Hugging Face `transformers`: the forward pass of nanochat/gpt.py, standalone.

scripts/export_hf.py copies this file into the exported folder; config.json's auto_map points
AutoModelForCausalLM here, so that

    model = AutoModelForCausalLM.from_pretrained(folder, trust_remote_code=True)

builds it and model.generate() works with the usual KV cache. The parameter names are nanochat's own
(transformer.wte.weight, transformer.h.0.attn.c_q.weight, ...), so model.safetensors is the checkpoint's
state dict as it is. Every piece of the architecture is here, in the order gpt.GPT.forward runs it:

- the token embedding, RMS-normalised (RMSNorm without learnable parameters, everywhere)
- smear (an option): each position adds a gated share of the previous token's embedding
- per layer: x = resid_lambda * x + x0_lambda * x0, then attention and a ReLU^2 MLP, pre-norm, no biases
- attention: rotary positions, QK-norm (then q and k scaled by qk_scale), grouped-query heads
  (n_kv_head K/V heads shared by n_head query heads), a window per layer (config.window_sizes)
- value embeddings on alternating layers: a second embedding table mixed into V through a gate
  ve_gate_range * sigmoid(W x[:, :ve_gate_channels]), one number per K/V head
- backout (an option): a learned share of the middle layer's output is taken off before the final norm
- the LM head over the padded vocabulary, its padding columns dropped, then 15 * tanh(logits / 15)

Left-padded batches work as in nanochat's engine: padding keys are masked out, and rotary only sees
distances, so a padded row computes what it would alone. The cache must be a dynamic one (the default).
"""

import torch
import torch.nn as nn
import torch.nn.functional as F
from transformers import GenerationMixin, PreTrainedModel
from transformers.modeling_outputs import CausalLMOutputWithPast

from .configuration_nanochat import NanochatConfig

# the output field that carries the KV cache: "cache" in newer transformers, "past_key_values" before
_CACHE_FIELD = "cache" if "cache" in CausalLMOutputWithPast.__dataclass_fields__ else "past_key_values"


def norm(x):
    # RMSNorm without learnable parameters
    return F.rms_norm(x, (x.size(-1),))


def rotary_tables(positions, head_dim, base, dtype):
    """cos, sin of the rotary angles at `positions` (T,): each (1, T, 1, head_dim / 2), computed in
    float32 as nanochat does, then cast to the model's dtype."""
    channel_range = torch.arange(0, head_dim, 2, dtype=torch.float32, device=positions.device)
    inv_freq = 1.0 / (base ** (channel_range / head_dim))
    freqs = torch.outer(positions.float(), inv_freq)
    return freqs.cos()[None, :, None, :].to(dtype), freqs.sin()[None, :, None, :].to(dtype)


def apply_rotary_emb(x, cos, sin):
    # x: (B, T, H, D); rotate the two halves of each head as pairs
    d = x.shape[3] // 2
    x1, x2 = x[..., :d], x[..., d:]
    return torch.cat([x1 * cos + x2 * sin, x2 * cos - x1 * sin], dim=3)


def has_value_embedding(layer_idx, n_layer):
    """Value embeddings on alternating layers, always including the last one."""
    return layer_idx % 2 == (n_layer - 1) % 2


class CausalSelfAttention(nn.Module):
    def __init__(self, config, layer_idx):
        super().__init__()
        self.layer_idx = layer_idx
        self.n_head, self.n_kv_head = config.n_head, config.n_kv_head
        self.head_dim = config.n_embd // config.n_head
        self.c_q = nn.Linear(config.n_embd, self.n_head * self.head_dim, bias=False)
        self.c_k = nn.Linear(config.n_embd, self.n_kv_head * self.head_dim, bias=False)
        self.c_v = nn.Linear(config.n_embd, self.n_kv_head * self.head_dim, bias=False)
        self.c_proj = nn.Linear(config.n_embd, config.n_embd, bias=False)
        self.ve_gate_channels, self.ve_gate_range, self.qk_scale = (config.ve_gate_channels, config.ve_gate_range,
                                                                    config.qk_scale)
        self.ve_gate = None
        if has_value_embedding(layer_idx, config.n_layer):
            self.ve_gate = nn.Linear(self.ve_gate_channels, self.n_kv_head, bias=False)

    def forward(self, x, ve, cos, sin, mask, cache):
        B, T, C = x.size()
        q = self.c_q(x).view(B, T, self.n_head, self.head_dim)
        k = self.c_k(x).view(B, T, self.n_kv_head, self.head_dim)
        v = self.c_v(x).view(B, T, self.n_kv_head, self.head_dim)
        if ve is not None:
            gate = self.ve_gate_range * torch.sigmoid(self.ve_gate(x[..., :self.ve_gate_channels]))  # (B, T, Hkv)
            v = v + gate.unsqueeze(-1) * ve.view(B, T, self.n_kv_head, self.head_dim)
        q, k = norm(apply_rotary_emb(q, cos, sin)), norm(apply_rotary_emb(k, cos, sin))  # rotary, then QK-norm
        if self.qk_scale != 1.0:
            q, k = q * self.qk_scale, k * self.qk_scale
        q, k, v = q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2)  # (B, H|Hkv, T, D)
        if cache is not None:
            k, v = cache.update(k, v, self.layer_idx)  # every key so far: (B, Hkv, Tk, D)
        y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, enable_gqa=self.n_head != self.n_kv_head)
        return self.c_proj(y.transpose(1, 2).reshape(B, T, C))


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

    def forward(self, x, ve, cos, sin, mask, cache):
        x = x + self.attn(norm(x), ve, cos, sin, mask, cache)
        return x + self.mlp(norm(x))


def attention_masks(window_sizes, past, T, key_is_real, device):
    """One boolean mask (B or 1, 1, T, past + T) per distinct window: True where a query may attend
    (causal, within the window, a real key). A padding query keeps itself so that its row is not empty."""
    q_pos = torch.arange(past, past + T, device=device)
    k_pos = torch.arange(past + T, device=device)
    diff = q_pos[:, None] - k_pos[None, :]  # (T, Tk)
    masks = {}
    for window in set(window_sizes):
        mask = ((diff >= 0) & (diff < window))[None]  # (1, T, Tk)
        if key_is_real is not None:
            mask = mask & (key_is_real[:, None, :] | (diff == 0)[None])  # (B, T, Tk)
        masks[window] = mask[:, None]
    return masks


class NanochatForCausalLM(PreTrainedModel, GenerationMixin):
    config_class = NanochatConfig
    base_model_prefix = ""
    _no_split_modules = ["Block"]

    def __init__(self, config):
        super().__init__(config)
        C, V = config.n_embd, config.padded_vocab_size
        kv_dim = config.n_kv_head * (C // config.n_head)
        self.transformer = nn.ModuleDict({
            "wte": nn.Embedding(V, C),
            "h": nn.ModuleList([Block(config, i) for i in range(config.n_layer)]),
        })
        self.lm_head = nn.Linear(C, V, bias=False)
        self.value_embeds = nn.ModuleDict({str(i): nn.Embedding(V, kv_dim) for i in range(config.n_layer)
                                           if has_value_embedding(i, config.n_layer)})
        self.resid_lambdas = nn.Parameter(torch.ones(config.n_layer))
        self.x0_lambdas = nn.Parameter(torch.zeros(config.n_layer))
        if config.smear:
            self.smear_gate = nn.Linear(config.smear_gate_channels, 1, bias=False)
            self.smear_lambda = nn.Parameter(torch.zeros(1))
        if config.backout:
            self.backout_lambda = nn.Parameter(torch.zeros(1))
        self.post_init()

    @torch.no_grad()
    def _init_weights(self, module):
        """nanochat's initialisation (gpt.GPT.init_weights), for a model built from a config alone;
        from_pretrained only calls this for modules whose weights the folder lacks."""
        name = next(n for n, m in self.named_modules() if m is module)
        s = 3 ** 0.5 * self.config.n_embd ** -0.5  # uniform bound with the std of N(0, 1/n_embd)
        if module is self:
            self.resid_lambdas.fill_(1.0)
            self.x0_lambdas.fill_(0.1)
            if self.config.smear:
                self.smear_lambda.fill_(0.0)
            if self.config.backout:
                self.backout_lambda.fill_(0.2)
        elif name == "transformer.wte":
            nn.init.normal_(module.weight, std=1.0)
        elif name == "lm_head":
            nn.init.normal_(module.weight, std=0.001)
        elif name == "smear_gate":
            nn.init.uniform_(module.weight, 0.0, 0.02)
        elif name.endswith(("c_proj", "ve_gate")):
            nn.init.zeros_(module.weight)  # every block starts as the identity, every value gate at 1
        elif isinstance(module, (nn.Linear, nn.Embedding)):
            nn.init.uniform_(module.weight, -s, s)

    def get_input_embeddings(self):
        return self.transformer["wte"]

    def get_output_embeddings(self):
        return self.lm_head

    def prepare_inputs_for_generation(self, input_ids, *args, **kwargs):
        """transformers' own, plus the token before the new ones: smear mixes its embedding into the first one."""
        inputs = super().prepare_inputs_for_generation(input_ids, *args, **kwargs)
        new = inputs.get("input_ids")
        if self.config.smear and new is not None and new.size(1) < input_ids.size(1):
            inputs["previous_ids"] = input_ids[:, -new.size(1) - 1:-new.size(1)]
        return inputs

    def forward(self, input_ids=None, attention_mask=None, past_key_values=None, labels=None, use_cache=None,
                previous_ids=None, return_dict=None, **kwargs):
        """input_ids (B, T) -> logits (B, T, vocab_size), float32, soft-capped at +-15.

        attention_mask (B, past + T), 1 for real tokens, 0 for (left) padding; with labels, the mean
        cross-entropy of predicting labels shifted by one (-100 ignored), as every transformers causal LM."""
        cache = kwargs.pop("cache", None)  # the name newer transformers pass it under
        cache = past_key_values if cache is None else cache
        use_cache = self.config.use_cache if use_cache is None else use_cache
        if cache is None and use_cache:
            from transformers import DynamicCache
            cache = DynamicCache()
        if attention_mask is not None and attention_mask.dim() != 2:
            raise ValueError("this model takes a 2-D attention_mask (batch, keys) and a dynamic cache; "
                             "static caches and 4-D masks are not supported")
        if input_ids is None:
            raise ValueError("this model takes input_ids, not inputs_embeds: its value embeddings look tokens up by id")
        config = self.config
        T, device = input_ids.size(1), input_ids.device
        past = cache.get_seq_length() if cache is not None else 0
        key_is_real = None
        if attention_mask is not None and not bool(attention_mask.all()):
            key_is_real = attention_mask[:, -(past + T):].bool()  # (B, Tk)
        masks = attention_masks(config.window_sizes, past, T, key_is_real, device)
        cos, sin = rotary_tables(torch.arange(past, past + T, device=device), config.n_embd // config.n_head,
                                 config.rotary_base, self.lm_head.weight.dtype)

        x = norm(self.transformer["wte"](input_ids))  # (B, T, C)
        if config.smear:
            x = self.smear(x, previous_ids, past, key_is_real)
        x0 = x
        for i, block in enumerate(self.transformer["h"]):
            x = self.resid_lambdas[i] * x + self.x0_lambdas[i] * x0
            ve = self.value_embeds[str(i)](input_ids) if str(i) in self.value_embeds else None
            x = block(x, ve, cos, sin, masks[config.window_sizes[i]], cache)
            if config.backout and i == config.n_layer // 2:
                x_mid = x
        if config.backout:
            x = x - self.backout_lambda * x_mid
        logits = self.lm_head(norm(x))[..., :config.vocab_size]  # drop the padding columns
        logits = config.logit_softcap * torch.tanh(logits.float() / config.logit_softcap)  # (B, T, vocab)

        loss = None
        if labels is not None:
            loss = F.cross_entropy(logits[:, :-1].reshape(-1, logits.size(-1)), labels[:, 1:].reshape(-1),
                                   ignore_index=-100)
        return CausalLMOutputWithPast(loss=loss, logits=logits, **{_CACHE_FIELD: cache if use_cache else None})

    def smear(self, x, previous_ids, past, key_is_real):
        """x (B, T, C) normed embeddings -> x_t + smear_lambda * sigmoid(W x_t[:24]) * x_(t-1).

        The very first token has none before it; when decoding with a cache, the token before the new
        ones is previous_ids (prepare_inputs_for_generation passes it); a token whose previous one is
        padding gets none either."""
        if past > 0:
            if previous_ids is None:
                raise ValueError("smear needs the token before the new ones: pass previous_ids (B, 1) "
                                 "when calling the model with a cache (generate() does this itself)")
            prev = torch.cat([norm(self.transformer["wte"](previous_ids)), x[:, :-1]], dim=1)  # (B, T, C)
            cur = x
        else:
            prev, cur = x[:, :-1], x[:, 1:]
        gate = self.smear_lambda * torch.sigmoid(self.smear_gate(cur[..., :self.config.smear_gate_channels]))
        if key_is_real is not None:
            first = past + x.size(1) - cur.size(1)  # position of cur's first token
            gate = gate * key_is_real[:, first - 1:past + x.size(1) - 1, None]  # the previous token is real
        smeared = cur + gate * prev
        return smeared if past > 0 else torch.cat([x[:, :1], smeared], dim=1)
