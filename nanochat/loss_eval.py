"""
Bits per byte: the validation loss that does not depend on the tokenizer.

Pipeline position: base_train (periodic val), base_loss and the report use it.

Cross-entropy per *token* cannot be compared between tokenizers: a vocabulary with longer tokens
has fewer, harder predictions. Dividing the total loss (converted from nats to bits) by the total
number of UTF-8 *bytes* those tokens stand for gives a figure any two models can be compared on.
Special tokens (byte length 0) are left out of both sums.
"""

import math

import torch
import torch.distributed as dist

from nanochat.common import UserError


@torch.no_grad()
def evaluate_bpb(model, batches, steps, token_bytes, autocast=None):
    """Mean bits per byte over up to `steps` batches of (inputs, targets) from the iterator `batches`.

    token_bytes: 1-D tensor, number of bytes of each token id (0 for special tokens).
    Under DDP the sums are added across ranks, so every rank returns the same figure."""
    import contextlib
    autocast = autocast or contextlib.nullcontext
    device = model.get_device()
    total_nats = torch.tensor(0.0, dtype=torch.float64, device=device)
    total_bytes = torch.tensor(0, dtype=torch.int64, device=device)
    token_bytes = token_bytes.to(device)
    for _ in range(steps):
        batch = next(batches, None)
        if batch is None:  # the validation data ran out before `steps`: use what there was
            break
        x, y = batch
        with autocast():
            loss = model(x, y, loss_reduction="none").view(-1)  # (B*T,) nats per target token
        y = y.reshape(-1)
        valid = y >= 0
        nbytes = torch.where(valid, token_bytes[y.clamp(min=0)], torch.zeros_like(y))
        counted = nbytes > 0
        total_nats += (loss.double() * counted).sum()
        total_bytes += nbytes.sum()
    if dist.is_available() and dist.is_initialized():
        dist.all_reduce(total_nats)
        dist.all_reduce(total_bytes)
    if total_bytes.item() == 0:  # no batch at all: there is nothing to measure, and inf would read as divergence
        raise UserError("the validation data could not fill a single batch, so bits per byte cannot be measured; "
                        "add validation text or use a smaller batch size / sequence length")
    return total_nats.item() / (math.log(2) * total_bytes.item())


def check_val_fills_batch(tokenizer, batch_size, seq_len, data_dir=None, rank=0, world_size=1):
    """Refuse, before training starts, a validation split too small for one (batch_size, seq_len)
    batch: evaluate_bpb would have nothing to measure. One pass packs rows the way the evaluation
    does; only up to batch_size of them are tokenized, so the check is quick on any split."""
    from nanochat.dataloader import DataLoader
    from nanochat.dataset import list_data_files, split_files
    loader = DataLoader(tokenizer, 1, seq_len, "val", "cpu", data_dir, rank, world_size, repeat=False)
    rows, batches = 0, iter(loader)
    while rows < batch_size and next(batches, None) is not None:  # one row per batch: rows pack the same
        rows += 1                                                  # whatever the batch size
    if rows >= batch_size:
        return
    files = list_data_files(data_dir)
    which = ("the last file of the data folder is the validation split" if len(files) > 1 else
             "the only data file is also the validation split")
    fix = f"lower --device-batch-size to {rows}" if rows else "lower --max-seq-len"
    raise UserError(f"the validation text ({split_files(files, 'val')[0]}) fills {rows} row(s) of {seq_len + 1} "
                    f"tokens{' on this process' if world_size > 1 else ''}, but one evaluation batch needs "
                    f"{batch_size} (--device-batch-size): add text to it ({which}), {fix}, or turn evaluation "
                    f"off with --eval-every -1")


def evaluate_split_bpb(model, tokenizer, split, batch_size, seq_len, tokens, token_bytes, rank=0, world_size=1,
                       data_dir=None, autocast=None):
    """Bits per byte on about `tokens` tokens of the 'train' or 'val' split (one pass, no repeats).

    Each of `world_size` ranks reads its own rows (rank-strided documents); sums are added across ranks."""
    from nanochat.dataloader import DataLoader
    loader = DataLoader(tokenizer, batch_size, seq_len, split, model.get_device(), data_dir, rank, world_size,
                        repeat=False)
    steps = max(1, tokens // (batch_size * seq_len * world_size))
    return evaluate_bpb(model, iter(loader), steps, token_bytes, autocast)
