"""
The pretraining data loader: documents -> token ids -> packed (B, T) rows of inputs and targets.

Pipeline position: nanochat.dataset gives batches of document texts; this module tokenizes them
and packs them into rows for scripts/base_train.py (and the tools that replay training steps).

How a row is packed ("BOS-aligned best fit"): every document is tokenized with <|bos|> in front.
A row of T+1 tokens is filled from a buffer of whole documents by repeatedly taking the longest
document that still fits in the space left. When nothing fits, the oldest buffered document is
cropped to fill the row exactly (its tail is dropped). So every row starts at a document boundary
(a BOS token), no padding is ever needed, and little text is cropped.

Exact resume: the loader's state is where it has read up to, plus *which* documents sit in the
buffer (as file / batch / document indices, not their tokens). Restoring it re-reads those
documents, so a resumed run sees exactly the rows an uninterrupted run would have seen.

Data parallel: batches of documents are dealt round-robin over ranks, each rank packs its own rows.
"""

import torch

from nanochat.dataset import list_data_files, split_files, iter_file_batches
from nanochat.common import UserError


class BatchLoader:
    """Iteration over next_batch() until it raises StopIteration; the pretraining and chat
    loaders share it (each defines next_batch and state_dict)."""

    def __iter__(self):
        while True:
            try:
                batch = self.next_batch()
            except StopIteration:
                return
            yield batch


class DataLoader(BatchLoader):

    def __init__(self, tokenizer, B, T, split, device="cpu", data_dir=None, rank=0, world_size=1,
                 buffer_size=64, state=None, repeat=True):
        assert split in ("train", "val")
        self.tokenizer = tokenizer
        self.B, self.T = B, T
        self.split = split
        self.device = torch.device(device)
        self.rank, self.world_size = rank, world_size
        self.buffer_size = buffer_size
        self.repeat = repeat  # False: one pass over the data, then StopIteration (for evaluation)
        self.bos = tokenizer.get_bos_token_id()
        self.files = split_files(list_data_files(data_dir), split)
        if not self.files:
            raise UserError(f"no {split} data files found")
        self.epoch = 0
        self.last_pos = None   # (file_idx, batch_idx) of the document batch being read
        self.next_doc = 0      # index in that batch of the next document to take
        self.buffer = []       # [((file_idx, batch_idx, doc_idx), tokens), ...] whole documents
        if state is not None:
            self._restore(state)
        self._docs = self._document_stream()

    # ---------------------------------------------------------------- reading documents

    def _positions(self):
        """(epoch, file_idx, batch_idx, docs) of this rank, forever, resuming at last_pos."""
        epoch, resume_epoch, resume_pos = self.epoch, self.epoch, self.last_pos
        while True:
            counter = 0
            for fi, path in enumerate(self.files):
                for bi, docs in enumerate(iter_file_batches(path)):
                    mine = counter % self.world_size == self.rank
                    counter += 1
                    if not mine:
                        continue
                    if epoch == resume_epoch and resume_pos is not None and (fi, bi) < resume_pos:
                        continue  # consumed before a resume
                    yield epoch, fi, bi, docs
            if counter == 0:
                raise UserError(f"the {self.split} data files contain no documents")
            if not self.repeat:
                return
            epoch += 1

    def _document_stream(self):
        """Whole tokenized documents with their (file, batch, doc) reference, in a fixed order."""
        first_doc = self.next_doc
        for epoch, fi, bi, docs in self._positions():
            token_lists = self.tokenizer.encode(docs[first_doc:], prepend=self.bos)
            self.epoch, self.last_pos = epoch, (fi, bi)
            for di, tokens in enumerate(token_lists, start=first_doc):
                self.next_doc = di + 1
                yield (fi, bi, di), tokens
            first_doc = 0
        # (never reached: _positions loops forever)

    def _restore(self, state):
        self.epoch = state.get("epoch", 0)
        pos = state.get("last_pos")
        self.last_pos = tuple(pos) if pos is not None else None
        self.next_doc = state.get("next_doc", 0)
        refs = [tuple(r) for r in state.get("buffer", [])]
        needed = {}
        for fi, bi, di in refs:
            needed.setdefault(fi, set()).add(bi)
        docs_at = {}
        for fi, batch_ids in needed.items():
            for bi, docs in enumerate(iter_file_batches(self.files[fi])):
                if bi in batch_ids:
                    docs_at[(fi, bi)] = docs
                if bi >= max(batch_ids):
                    break
        self.buffer = []
        for fi, bi, di in refs:
            tokens = self.tokenizer.encode(docs_at[(fi, bi)][di], prepend=self.bos)
            self.buffer.append(((fi, bi, di), tokens))

    def state_dict(self):
        """Everything needed to continue exactly here; JSON-serialisable (it goes into meta files)."""
        pos = list(self.last_pos) if self.last_pos is not None else None
        return {
            "epoch": self.epoch,
            "last_pos": pos,
            "next_doc": self.next_doc,
            "buffer": [list(ref) for ref, _ in self.buffer],
            "pq_idx": pos[0] if pos else 0,  # upstream's names, for readers that expect them
            "rg_idx": pos[1] if pos else 0,
            "rank": self.rank,
            "world_size": self.world_size,
        }

    # ---------------------------------------------------------------- packing

    def _fill_buffer(self):
        while len(self.buffer) < self.buffer_size:
            doc = next(self._docs, None)
            if doc is None:  # only when repeat=False: the pass is over
                if not self.buffer:
                    raise StopIteration
                return
            self.buffer.append(doc)

    def _pack_row(self):
        row_len = self.T + 1
        row = []
        while len(row) < row_len:
            self._fill_buffer()
            space = row_len - len(row)
            best, best_len = -1, 0
            for i, (_, tokens) in enumerate(self.buffer):
                if best_len < len(tokens) <= space:
                    best, best_len = i, len(tokens)
            if best >= 0:
                row.extend(self.buffer.pop(best)[1])
            else:
                row.extend(self.buffer.pop(0)[1][:space])  # nothing fits: crop the oldest
        return row

    def next_batch(self):
        """(inputs, targets), each (B, T) int64 on the loader's device."""
        rows = torch.tensor([self._pack_row() for _ in range(self.B)], dtype=torch.long)
        inputs, targets = rows[:, :-1], rows[:, 1:]
        if self.device.type == "cuda":
            return (inputs.pin_memory().to(self.device, non_blocking=True),
                    targets.pin_memory().to(self.device, non_blocking=True))
        return inputs.to(self.device), targets.to(self.device)

