"""
The model config of an exported nanochat model, as Hugging Face `transformers` reads it.

scripts/export_hf.py copies this file, with modeling_nanochat.py, into the exported folder; config.json's
auto_map points AutoConfig here, so `AutoConfig.from_pretrained(folder, trust_remote_code=True)` builds one.

The fields are nanochat.gpt.GPTConfig's, under the same names, plus what the exporter works out once so
that the model code needs no rules of its own: the padded vocabulary of the embedding tables and the
attention window of each layer. Hugging Face's usual names (hidden_size, num_hidden_layers, ...) are
aliases of ours (attribute_map), so generic code (the KV cache, pipelines) finds what it looks for.

The model type is "nanochat_export", not "nanochat": transformers has a built-in "nanochat" for upstream
nanochat's architecture of late 2025, which lacks value embeddings and the per-layer lambdas.
"""

from transformers import PretrainedConfig


class NanochatConfig(PretrainedConfig):
    model_type = "nanochat_export"
    attribute_map = {"hidden_size": "n_embd", "num_hidden_layers": "n_layer", "num_attention_heads": "n_head",
                     "num_key_value_heads": "n_kv_head"}

    def __init__(self, sequence_len=2048, vocab_size=32768, n_layer=12, n_head=6, n_kv_head=6, n_embd=768,
                 window_pattern="L", smear=False, backout=False, ve_gate_channels=32, ve_gate_range=2.0,
                 qk_scale=1.0, rotary_base=10000, window_rule="half", padded_vocab_size=None, window_sizes=None,
                 logit_softcap=15.0, smear_gate_channels=24, use_cache=True, tie_word_embeddings=False, **kwargs):
        # GPTConfig's fields (nanochat/gpt.py says what each one does)
        self.sequence_len = sequence_len
        self.vocab_size = vocab_size  # the tokenizer's vocabulary: the logits have this many columns
        self.n_layer = n_layer
        self.n_head = n_head
        self.n_kv_head = n_kv_head
        self.n_embd = n_embd
        self.window_pattern = window_pattern
        self.smear = smear
        self.backout = backout
        self.ve_gate_channels = ve_gate_channels
        self.ve_gate_range = ve_gate_range
        self.qk_scale = qk_scale
        self.rotary_base = rotary_base
        self.window_rule = window_rule
        # worked out by the exporter (nanochat.gpt.padded_vocab_size and layer_window_sizes)
        self.padded_vocab_size = padded_vocab_size or vocab_size  # rows of the embedding tables and the LM head
        self.window_sizes = list(window_sizes) if window_sizes else [sequence_len] * n_layer  # keys each query sees, itself included
        # constants of the architecture, written out so that the folder describes the whole model
        self.logit_softcap = logit_softcap
        self.smear_gate_channels = smear_gate_channels
        self.use_cache = use_cache  # generate() keeps a KV cache
        super().__init__(tie_word_embeddings=tie_word_embeddings, **kwargs)
