"""
Evaluate the tokenizer: how well it compresses different kinds of text, next to GPT-2's and GPT-4's.

Pipeline position: right after scripts/tok_train.py; reads <base dir>/tokenizer, prints a table and
adds it to the report (when nanochat.report exists).

Compression is measured in bytes per token (UTF-8 bytes of the text / number of tokens): higher is
better, since the model then sees more text in the same context length and compute. A tokenizer
trained on English plays compresses English well and Korean badly; GPT-4's, trained on much of the
internet, does well on everything but is 100k tokens big.

The reference encodings must be available offline (nanochat.tokenizer.get_reference_encoding):
cl100k comes with the bpe-openai package; GPT-2 only from a tiktoken cache filled earlier.

Examples:
    python -m scripts.tok_eval
    python -m scripts.tok_eval --references gpt2,cl100k,o200k --corpus-chars 2e6
"""

import argparse

from nanochat.common import UserError, print0, run_main, ArgumentParser, nonneg_float
from nanochat.tokenizer import get_reference_encoding, get_tokenizer

# Samples of different kinds of text, written for this file.
NEWS_TEXT = """\
RIVERTON, March 14 - The city council voted 7 to 2 on Tuesday night to rebuild the old footbridge
over the Mill River, ending a dispute that had dragged on for almost three years. The new bridge,
which engineers expect to cost about $4.8 million, will be wider than the one it replaces and will
carry a separate lane for bicycles. "People have been walking the long way round since 2021," said
councillor Dana Whitfield, who first proposed the plan. "Tonight we finally gave them their shortcut
back." Work is due to start in early autumn, once the river is at its lowest, and should be finished
by the following summer. Two members voted against, arguing that the money would be better spent on
repairing the roads in the northern districts, where residents have complained about potholes.
"""

CODE_TEXT = """\
import json
from pathlib import Path


class Inventory:
    \"\"\"Counts items by name and saves them to a JSON file.\"\"\"

    def __init__(self, path):
        self.path = Path(path)
        self.counts = {}
        if self.path.exists():
            self.counts = json.loads(self.path.read_text())

    def add(self, name, amount=1):
        if amount <= 0:
            raise ValueError(f"amount must be positive, got {amount}")
        self.counts[name] = self.counts.get(name, 0) + amount

    def save(self):
        tmp = self.path.with_suffix(".tmp")
        tmp.write_text(json.dumps(self.counts, indent=2, sort_keys=True))
        tmp.replace(self.path)


for i in range(10):
    print(i, i ** 2, [j for j in range(i) if j % 3 == 0])
"""

MATH_TEXT = """\
Let f(x) = 3x^2 - 12x + 7. Its derivative is f'(x) = 6x - 12, which is zero at x = 2, so the
minimum value is f(2) = 12 - 24 + 7 = -5. For the sum of the first n odd numbers we have
1 + 3 + 5 + ... + (2n - 1) = n^2; for example 1 + 3 + 5 + 7 = 16 = 4^2. If a = 0.375 and
b = 1.625, then a + b = 2, a * b = 0.609375 and b / a = 4.3333... The matrix [[2, 1], [1, 3]] has
determinant 2*3 - 1*1 = 5 and eigenvalues (5 +/- sqrt(5)) / 2, roughly 3.618 and 1.382.
\\int_0^1 x^3 dx = 1/4, and \\sum_{k=1}^{100} k = 5050.
"""

KOREAN_TEXT = """\
지난 주말에 친구들과 함께 바닷가 마을로 짧은 여행을 다녀왔다. 아침 일찍 기차를 타고 세 시간쯤 달리니
창밖으로 푸른 바다가 보이기 시작했다. 숙소에 짐을 풀고 시장에 가서 갓 잡은 생선으로 만든 국을 먹었는데,
국물이 시원하고 맛있어서 모두 한 그릇씩 더 먹었다. 오후에는 해변을 따라 걸으며 조개껍데기를 주웠고,
해가 질 무렵에는 방파제에 앉아 노을을 오래 바라보았다. 다음에는 가족들과 함께 다시 오고 싶다.
"""

CJK_TEXT = """\
今天早上下了一场小雨，空气变得很清新。我在公园里散步，看见几位老人在打太极拳，孩子们在草地上放风筝。
中午我和朋友在一家小饭馆吃了面条，价格便宜，味道也不错。
昨日は一日中図書館で本を読んでいました。窓の外では桜の花が風に揺れていて、とても静かな午後でした。
帰りに駅前の店でコーヒーを買い、友達に電話をかけました。
"""

SAMPLE_TEXTS = [("news", NEWS_TEXT), ("code", CODE_TEXT), ("math", MATH_TEXT),
                ("korean", KOREAN_TEXT), ("chinese/japanese", CJK_TEXT)]


def parse_args(argv=None):
    p = ArgumentParser(prog="python -m scripts.tok_eval", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--references", type=str, default="gpt2,cl100k", help="comma-separated reference encodings (gpt2, cl100k, o200k)")
    p.add_argument("--corpus-chars", type=nonneg_float, default=1e6, help="characters of the corpus train and val splits to measure on")
    p.add_argument("--data-dir", type=str, default=None, help="folder of .parquet/.txt/.jsonl (default: downloaded shards, else the embedded corpus)")
    return p.parse_args(argv)


def corpus_sample(split, max_chars, data_dir):
    """The first max_chars characters of a split's documents, joined with newlines."""
    from nanochat.dataset import parquets_iter_batched
    docs, total = [], 0
    for batch in parquets_iter_batched(split, data_dir=data_dir):
        for doc in batch:
            docs.append(doc)
            total += len(doc) + 1
            if total >= max_chars:
                return "\n".join(docs)[:max_chars]
    return "\n".join(docs)


def bytes_per_token(encode, text):
    n_tokens = len(encode(text))
    return len(text.encode("utf-8")) / max(n_tokens, 1), n_tokens


def main(argv=None):
    args = parse_args(argv)
    tokenizer = get_tokenizer()

    references = []
    for name in [n.strip() for n in args.references.split(",") if n.strip()]:
        try:
            references.append(get_reference_encoding(name))
        except UserError as e:
            print0(f"{name}: left out ({e})")

    texts = list(SAMPLE_TEXTS)
    if args.corpus_chars > 0:
        for split in ("train", "val"):
            texts.append((f"corpus {split}", corpus_sample(split, int(args.corpus_chars), args.data_dir)))

    # one row per text: bytes, then (bytes/token, tokens) for ours and each reference
    header = f"{'text':<17} {'bytes':>9} {'ours B/tok':>10}"
    for ref in references:
        header += f" {ref.name + ' B/tok':>17} {ref.name + ' tokens vs ours':>26}"
    print0(f"ours: {tokenizer.get_vocab_size():,} tokens. Bytes per token, higher is better; "
           "'X tokens vs ours': how many more (+) or fewer (-) tokens X needs for the same text")
    print0(header)
    print0("-" * len(header))
    rows = []
    for label, text in texts:
        n_bytes = len(text.encode("utf-8"))
        ours, ours_tokens = bytes_per_token(tokenizer.encode, text)
        line = f"{label:<17} {n_bytes:>9,} {ours:>10.2f}"
        row = {"text": label, "bytes": n_bytes, "ours_tokens": ours_tokens, "ours_bytes_per_token": round(ours, 3)}
        for ref in references:
            theirs, their_tokens = bytes_per_token(ref.encode, text)
            # relative token count: +20% means the reference needs 20% more tokens than ours
            diff = 100.0 * (their_tokens - ours_tokens) / max(ours_tokens, 1)
            line += f" {theirs:>17.2f} {diff:>+25.1f}%"
            row[f"{ref.name}_tokens"] = their_tokens
            row[f"{ref.name}_bytes_per_token"] = round(theirs, 3)
        rows.append(row)
        print0(line)
    if references:
        print0("references: " + ", ".join(f"{ref.name} from {ref.source}" for ref in references))
    else:
        print0("no reference encoding is available offline: showing ours only")

    try:
        from nanochat.report import get_report
    except ImportError:
        return rows  # the report module is optional
    get_report().log(section="Tokenizer evaluation", data=rows)
    return rows


if __name__ == "__main__":
    run_main(main)
