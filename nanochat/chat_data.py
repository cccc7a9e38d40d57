"""
Chat training data: task conversations -> token rows with loss only on what the assistant says.

Pipeline position: the finetuning loop (scripts/chat_finetune.py, for mid_train and chat_sft)
hands in a task mixture (nanochat_tasks/mixtures.py) and draws (inputs, targets) batches from it here; the
tokenizer's render_conversation supplies the ids and the mask (1 = a token the assistant writes).

From a conversation to a training row: render -> ids, mask. The model reads ids[:-1] and is asked
for ids[1:]; where mask[1:] is 0 (the user's words, special tokens around them, tool output,
padding) the target is -1, which the loss ignores. So the model learns to answer, not to imitate
the user.

Two ways to fill a batch:
- PackedChatLoader (midtraining): like pretraining, whole conversations are packed into rows of
  T+1 tokens by best fit (the longest conversation that still fits, again and again), every row
  starting at a conversation's <|bos|>. A conversation is never split between rows: when none
  fits the space left, the rest of the row is padding (target -1). Only a conversation longer
  than a whole row is cropped.
- PaddedChatLoader (SFT): one conversation per row, each batch padded to its longest row, so
  every example is seen whole and on its own, as it will be when the model chats.

Both read the examples of their DDP rank (rank, rank + world_size, ...) in the task's order, and
have a state_dict (epoch, position, and the indices of buffered conversations) so that a resumed
run sees exactly the batches an uninterrupted run would have seen.
"""

import torch

from nanochat.common import UserError
from nanochat.dataloader import BatchLoader


def row_inputs_targets(ids, mask):
    """(inputs, targets) of one rendered row: targets are the next tokens where mask is 1, else -1."""
    inputs = ids[:-1]
    targets = [t if m else -1 for t, m in zip(ids[1:], mask[1:])]
    return inputs, targets


def _to_device(rows, device):
    t = torch.tensor(rows, dtype=torch.long)
    if device.type == "cuda":
        return t.pin_memory().to(device, non_blocking=True)
    return t.to(device)


class _ConversationStream:
    """This rank's conversations of a task, rendered, in order, epoch after epoch, resumable.

    Conversations with nothing to learn inside the row length (no supervised target after
    cropping) are skipped: a row of only -1 targets would make the mean loss NaN."""

    def __init__(self, tokenizer, task, max_tokens, rank=0, world_size=1, repeat=True):
        self.tokenizer, self.task, self.max_tokens = tokenizer, task, max_tokens
        self.indices = range(rank, len(task), world_size)
        if len(self.indices) == 0:
            raise UserError(f"the training mixture has {len(task)} conversations, fewer than the "
                            f"{world_size} processes: use a bigger mixture or fewer processes")
        self.rank, self.world_size, self.repeat = rank, world_size, repeat
        self.epoch, self.cursor = 0, 0  # next conversation: self.indices[self.cursor]

    def render(self, index):
        return self.tokenizer.render_conversation(self.task[index], max_tokens=self.max_tokens)

    def next(self):
        """(task index, ids, mask) of the next usable conversation; None at the end of a pass."""
        while True:
            if self.cursor >= len(self.indices):
                if not self.repeat:
                    return None
                self.epoch, self.cursor = self.epoch + 1, 0
            index = self.indices[self.cursor]
            self.cursor += 1
            ids, mask = self.render(index)
            if any(mask[1:]):
                return index, ids, mask


class PackedChatLoader(BatchLoader):
    """(B, T) rows of whole conversations packed by best fit; for midtraining."""

    def __init__(self, tokenizer, task, B, T, device="cpu", rank=0, world_size=1, buffer_size=16,
                 state=None, repeat=True):
        self.B, self.T = B, T
        self.device = torch.device(device)
        self.buffer_size = buffer_size
        self.pad = tokenizer.get_bos_token_id()  # any id works: padded positions have target -1
        self.stream = _ConversationStream(tokenizer, task, T + 1, rank, world_size, repeat)
        self.buffer = []  # [(task index, ids, mask)]
        if state is not None:
            self.stream.epoch, self.stream.cursor = state["epoch"], state["cursor"]
            self.buffer = [(i, *self.stream.render(i)) for i in state["buffer"]]

    @property
    def epoch(self):
        return self.stream.epoch

    def state_dict(self):
        """JSON-serialisable; restoring it re-renders the buffered conversations from their indices."""
        return {"epoch": self.stream.epoch, "cursor": self.stream.cursor,
                "buffer": [index for index, _, _ in self.buffer],
                "rank": self.stream.rank, "world_size": self.stream.world_size}

    def _fill_buffer(self):
        while len(self.buffer) < self.buffer_size:
            item = self.stream.next()
            if item is None:
                return
            self.buffer.append(item)

    def _pack_row(self):
        """(ids, mask) of T+1 tokens, or None when the data is used up (repeat=False only)."""
        row_len = self.T + 1
        ids, mask = [], []
        while len(ids) < row_len:
            self._fill_buffer()
            if not self.buffer:
                break
            space = row_len - len(ids)
            best, best_len = -1, 0
            for i, (_, conv_ids, _) in enumerate(self.buffer):
                if best_len < len(conv_ids) <= space:
                    best, best_len = i, len(conv_ids)
            if best >= 0:
                _, conv_ids, conv_mask = self.buffer.pop(best)
            elif not ids:  # longer than a whole row (already cropped to T+1 when rendered)
                _, conv_ids, conv_mask = self.buffer.pop(0)
            else:
                break      # nothing fits the space left: pad it
            ids.extend(conv_ids)
            mask.extend(conv_mask)
        if not ids:
            return None
        pad = row_len - len(ids)
        return ids + [self.pad] * pad, mask + [0] * pad

    def next_batch(self):
        """(inputs, targets), each (B, T); the last batch of a single pass may have fewer rows."""
        inputs, targets = [], []
        for _ in range(self.B):
            row = self._pack_row()
            if row is None:
                break
            x, y = row_inputs_targets(*row)
            inputs.append(x)
            targets.append(y)
        if not inputs:
            raise StopIteration
        return _to_device(inputs, self.device), _to_device(targets, self.device)


class PaddedChatLoader(BatchLoader):
    """One conversation per row, each batch padded to its longest row (at most max_seq_len); for SFT."""

    def __init__(self, tokenizer, task, B, max_seq_len, device="cpu", rank=0, world_size=1, state=None,
                 repeat=True):
        self.B = B
        self.device = torch.device(device)
        self.pad = tokenizer.get_bos_token_id()
        self.stream = _ConversationStream(tokenizer, task, max_seq_len + 1, rank, world_size, repeat)
        if state is not None:
            self.stream.epoch, self.stream.cursor = state["epoch"], state["cursor"]

    @property
    def epoch(self):
        return self.stream.epoch

    def state_dict(self):
        return {"epoch": self.stream.epoch, "cursor": self.stream.cursor,
                "rank": self.stream.rank, "world_size": self.stream.world_size}

    def next_batch(self):
        rows = []
        while len(rows) < self.B:
            item = self.stream.next()
            if item is None:
                break
            rows.append(row_inputs_targets(item[1], item[2]))
        if not rows:
            raise StopIteration
        width = max(len(x) for x, _ in rows)
        inputs = [x + [self.pad] * (width - len(x)) for x, _ in rows]
        targets = [y + [-1] * (width - len(y)) for _, y in rows]
        return _to_device(inputs, self.device), _to_device(targets, self.device)


def make_chat_loader(stage, tokenizer, task, B, T, rt, state=None, repeat=True):
    """The batches of a finetuning stage: conversations packed into rows (mid) or one per row (sft).
    rt: the Runtime (device and this process's rank among world_size)."""
    loader_cls = PackedChatLoader if stage == "mid" else PaddedChatLoader
    return loader_cls(tokenizer, task, B, T, rt.device, rt.rank, rt.world_size, state=state, repeat=repeat)


def count_batches(loader_factory):
    """How many batches one pass of a loader gives (renders the whole split once)."""
    return sum(1 for _ in loader_factory())
