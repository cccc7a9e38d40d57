"""
Pretraining text: where it lives, how it is read, and how to download more.

This is the first step of the data path: shard files -> lists of document strings. The tokenizer
trainer (scripts/tok_train) and the dataloader (nanochat/dataloader.py) read text only through here.

Where the text comes from, in priority order (resolve_data_dir):
  1. a folder the user points at with --data-dir, holding .parquet, .txt or .jsonl files;
  2. FineWeb-Edu shards downloaded into $NANOCHAT_BASE_DIR/base_data by `python -m nanochat.dataset`;
  3. the embedded corpus in data/embedded (Shakespeare, see data/README.md), which ships with the
     repo, so the default path never needs the internet.

A data folder is a sorted list of files; the last file is the validation split, the rest are the
training split. Each file is read as a sequence of *batches* (lists of document strings): one batch
per parquet row group, or ~1024 documents from a .txt/.jsonl file. Batch order is fixed, so the
dataloader can record "file i, batch j" and resume exactly there.

Download from the command line (standard library HTTP only, with retries, resume and atomic rename):
    python -m nanochat.dataset -n 8
"""

import argparse
import http.client
import json
import os
import threading
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor

import pyarrow.parquet as pq

from nanochat.common import UserError, get_base_dir, repo_root, run_main, ArgumentParser, int_range, float_range

EMBEDDED_DIR = os.path.join(repo_root(), "data", "embedded")
# the FineWeb-Edu-100B shards, pre-shuffled, as upstream nanochat uses them: shard_00000.parquet ...
DEFAULT_BASE_URL = "https://huggingface.co/datasets/karpathy/fineweb-edu-100b-shuffle/resolve/main"
DOWNLOAD_DIR_NAME = "base_data"  # downloads go to $NANOCHAT_BASE_DIR/base_data
DATA_EXTENSIONS = (".parquet", ".txt", ".jsonl")
TEXT_BATCH_SIZE = 1024      # documents per batch from .txt/.jsonl (FineWeb row groups hold ~1024 too)
TXT_MAX_DOC_CHARS = 20_000  # a .txt "document" longer than this is cut at paragraph boundaries
RETRY_BASE_DELAY = 1.0      # seconds before the 2nd download attempt; doubles each time (1, 2, 4, 8)
CHUNK_BYTES = 1 << 16       # download read size
PERMANENT_HTTP_ERRORS = (400, 401, 403, 404, 410)  # retrying these cannot help


def shard_name(index):
    return f"shard_{index:05d}.parquet"


def default_download_dir():
    return os.path.join(get_base_dir(), DOWNLOAD_DIR_NAME)


def resolve_base_url(base_url=None):
    """The shard server: the argument, else $NANOCHAT_DATA_URL, else DEFAULT_BASE_URL."""
    return (base_url or os.environ.get("NANOCHAT_DATA_URL") or DEFAULT_BASE_URL).rstrip("/")


# -----------------------------------------------------------------------------
# finding the data files

def _data_file_names(folder):
    """Sorted names of the data files in a folder. Partial downloads (NAME.parquet.tmp), hidden
    files and editor backups do not end in a data extension or start with '.'/'~', so they are skipped."""
    if not os.path.isdir(folder):
        return []
    return sorted(name for name in os.listdir(folder)
                  if name.endswith(DATA_EXTENSIONS) and not name.startswith((".", "~"))
                  and os.path.isfile(os.path.join(folder, name)))


def resolve_data_dir(data_dir=None):
    """The folder to read text from: data_dir if given (it must exist and hold data files), else the
    downloaded shards in $NANOCHAT_BASE_DIR/base_data if there are any, else the embedded corpus."""
    if data_dir:
        data_dir = os.path.abspath(os.path.expanduser(data_dir))
        if not os.path.isdir(data_dir):
            raise UserError(f"data folder {data_dir} does not exist: point --data-dir at a folder of "
                            f".parquet, .txt or .jsonl files, or leave it out to use the embedded corpus")
        if not _data_file_names(data_dir):
            raise UserError(f"data folder {data_dir} has no .parquet, .txt or .jsonl files: put your text "
                            f"there, or leave --data-dir out to use the embedded corpus")
        return data_dir
    downloaded = default_download_dir()
    if _data_file_names(downloaded):
        return downloaded
    if not _data_file_names(EMBEDDED_DIR):
        raise UserError(f"the embedded corpus is missing from {EMBEDDED_DIR}: restore it with "
                        f"`git checkout -- data/embedded` or rebuild it with `python data/build_embedded_corpus.py`")
    return EMBEDDED_DIR


def list_data_files(data_dir=None):
    """Full paths of the data files (.parquet, .txt, .jsonl) in the resolved data folder, sorted by name."""
    folder = resolve_data_dir(data_dir)
    return [os.path.join(folder, name) for name in _data_file_names(folder)]


def split_files(files, split):
    """The files of one split: "train" is every file but the last, "val" is the last file.

    With a single file there is nothing to hold out, so both splits use that one file (the
    validation loss is then measured on training text; add a second file to avoid that)."""
    if split not in ("train", "val"):
        raise ValueError(f"split must be 'train' or 'val', not {split!r}")
    if not files:
        raise UserError("there are no data files to read: add .parquet, .txt or .jsonl files to the data folder")
    files = list(files)
    if len(files) == 1:
        return files
    return files[:-1] if split == "train" else files[-1:]


# -----------------------------------------------------------------------------
# reading one file as batches of documents

def _batched(items, size):
    batch = []
    for item in items:
        batch.append(item)
        if len(batch) == size:
            yield batch
            batch = []
    if batch:
        yield batch


def _parquet_batches(path):
    try:
        pf = pq.ParquetFile(path)
    except Exception as e:  # pyarrow raises ArrowInvalid, OSError, ... for a damaged file
        raise UserError(f"{path} is not a readable parquet file ({e}): delete it and download or rebuild it") from e
    with pf:
        if "text" not in pf.schema_arrow.names:
            raise UserError(f"{path} has no 'text' column (it has {pf.schema_arrow.names}): "
                            f"pretraining parquet files need one string column named 'text'")
        for rg in range(pf.num_row_groups):
            texts = pf.read_row_group(rg, columns=["text"]).column("text").to_pylist()
            yield [t for t in texts if t is not None]


def _jsonl_documents(path):
    with open(path, encoding="utf-8") as f:
        for lineno, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                obj = json.loads(line)
            except json.JSONDecodeError as e:
                raise UserError(f"{path}, line {lineno}: not valid JSON ({e.msg}); each line must be an "
                                f'object like {{"text": "..."}}') from e
            if not isinstance(obj, dict) or not isinstance(obj.get("text"), str):
                got = f"an object with keys {list(obj)}" if isinstance(obj, dict) else f"a JSON {type(obj).__name__}"
                raise UserError(f'{path}, line {lineno}: expected an object with a string field "text", got {got}')
            yield obj["text"]


def _txt_paragraphs(lines):
    """(paragraph, number of blank lines before it) for each paragraph of a text file."""
    para, gap, blank = [], 0, 0
    for line in lines:
        line = line.rstrip()
        if not line:
            blank += 1
            continue
        if blank and para:
            yield "\n".join(para), gap
            para = []
        if not para:
            gap = blank
        blank = 0
        para.append(line)
    if para:
        yield "\n".join(para), gap


def _txt_documents(path):
    """Documents are separated by two or more blank lines. A document that would pass
    TXT_MAX_DOC_CHARS is cut at a paragraph break, so that a long file with no separators is not
    one giant document (the dataloader would have to crop it and most of it would be lost)."""
    with open(path, encoding="utf-8") as f:
        doc, size = [], 0
        for paragraph, gap in _txt_paragraphs(f):
            if doc and (gap >= 2 or size + 2 + len(paragraph) > TXT_MAX_DOC_CHARS):
                yield "\n\n".join(doc)
                doc, size = [], 0
            doc.append(paragraph)
            size += len(paragraph) + (2 if size else 0)
        if doc:
            yield "\n\n".join(doc)


def iter_file_batches(path):
    """Yield the documents of one data file as batches (lists of strings), always in the same order.

    - .parquet: one batch per row group, from the string column `text`;
    - .jsonl: one JSON object per line with a string field `text` (blank lines are skipped),
      TEXT_BATCH_SIZE documents per batch;
    - .txt: documents separated by two or more blank lines (trailing spaces are dropped and the
      paragraphs inside a document are joined by one blank line), TEXT_BATCH_SIZE per batch.
    The position of a batch in this sequence is what the dataloader saves to resume exactly."""
    ext = os.path.splitext(path)[1].lower()
    try:
        if ext == ".parquet":
            yield from _parquet_batches(path)
        elif ext == ".jsonl":
            yield from _batched(_jsonl_documents(path), TEXT_BATCH_SIZE)
        elif ext == ".txt":
            yield from _batched(_txt_documents(path), TEXT_BATCH_SIZE)
        else:
            raise UserError(f"{path}: cannot read {ext or 'extension-less'} files; use .parquet, .txt or .jsonl")
    except UnicodeDecodeError as e:
        raise UserError(f"{path} is not UTF-8 text ({e.reason} at byte {e.start}): convert it to UTF-8") from e


def parquets_iter_batched(split, start=0, step=1, data_dir=None):
    """Every batch of a split, in order, keeping batches start, start+step, start+2*step, ...
    (under DDP, rank r of world size W passes start=r, step=W to read its own share)."""
    assert 0 <= start < step, f"need 0 <= start < step, got start={start} step={step}"
    index = 0
    for path in split_files(list_data_files(data_dir), split):
        for batch in iter_file_batches(path):
            if index % step == start:
                yield batch
            index += 1


# -----------------------------------------------------------------------------
# downloading shards

class _IncompleteDownload(Exception):
    """The connection ended before the whole file arrived (the partial .tmp is kept to resume)."""


def _parse_content_range(value):
    """'bytes 100-999/1000' -> (100, 1000); total is None when the server writes '*'."""
    try:
        unit, _, rest = value.partition(" ")
        span, _, total = rest.partition("/")
        first = int(span.split("-")[0])
        assert unit == "bytes"
        return first, (None if total == "*" else int(total))
    except (AttributeError, ValueError, AssertionError) as e:
        raise _IncompleteDownload(f"bad Content-Range header {value!r}") from e


def _fetch_into(url, tmp_path, timeout, report, stop):
    """One attempt: fetch url, or the part of it tmp_path lacks, into tmp_path.

    If tmp_path holds a partial download we ask only for the rest (HTTP Range). A server that
    supports it answers 206 and we append; one that ignores it answers 200 with the whole file and
    we start over. Raises _IncompleteDownload when fewer bytes arrive than the server announced."""
    have = os.path.getsize(tmp_path) if os.path.exists(tmp_path) else 0
    request = urllib.request.Request(url, headers={"User-Agent": "nanochat"})
    if have:
        request.add_header("Range", f"bytes={have}-")
    try:
        response = urllib.request.urlopen(request, timeout=timeout)
    except urllib.error.HTTPError as e:
        if e.code == 416 and have:  # nothing left to send from byte `have` on
            if e.headers.get("Content-Range") == f"bytes */{have}":
                return  # an earlier run got every byte but stopped before the rename
            os.remove(tmp_path)
            raise _IncompleteDownload("the partial download did not match the server's file; starting over") from e
        raise
    with response:
        if response.status == 206:
            first, total = _parse_content_range(response.headers.get("Content-Range"))
            if first != have:
                os.remove(tmp_path)
                raise _IncompleteDownload(f"server resumed at byte {first} instead of {have}; starting over")
            mode = "ab"
        else:
            length = response.headers.get("Content-Length")
            total = int(length) if length else None
            have, mode = 0, "wb"
        report(have, total)
        with open(tmp_path, mode) as f:
            while True:
                if stop is not None and stop.is_set():
                    raise _IncompleteDownload("stopped")
                chunk = response.read(CHUNK_BYTES)
                if not chunk:
                    break
                f.write(chunk)
                have += len(chunk)
                report(have, total)
    if total is not None and have != total:
        raise _IncompleteDownload(f"connection ended after {have:,} of {total:,} bytes")


def _check_parquet(tmp_path):
    """A complete download must open as parquet; a file that does not is deleted (resuming it is pointless)."""
    try:
        pq.read_metadata(tmp_path)  # parses the footer, which is written last: a truncated file fails here
    except Exception as e:
        os.remove(tmp_path)
        raise _IncompleteDownload(f"the downloaded file is not valid parquet ({e})") from e


def _describe(error):
    if isinstance(error, urllib.error.HTTPError):
        return f"HTTP {error.code} {error.reason}"
    if isinstance(error, urllib.error.URLError):
        return f"cannot reach the server ({error.reason})"
    return str(error) or type(error).__name__


def _download_with_retries(index, base_url, data_dir, max_attempts, timeout, bar=None, stop=None):
    """Download one shard; returns (path, None) on success or (None, reason) after giving up."""
    name = shard_name(index)
    url = f"{resolve_base_url(base_url)}/{name}"
    return _download_url(url, os.path.join(data_dir, name), _check_parquet, max_attempts, timeout, bar, stop)


def _download_url(url, final_path, verify, max_attempts, timeout, bar=None, stop=None):
    """Download url to final_path with retries, resume and an atomic rename.

    verify(tmp_path) may raise _IncompleteDownload (after deleting the file) for a download that
    is complete but not valid. Returns (path, None) on success or (None, reason) after giving up."""
    name = os.path.basename(final_path)
    if os.path.exists(final_path):  # only whole, verified files ever get this name
        return final_path, None
    os.makedirs(os.path.dirname(final_path) or ".", exist_ok=True)
    tmp_path = final_path + ".tmp"
    task = bar.add_task(name, total=None) if bar is not None else None

    def report(done, total):
        if bar is not None:
            bar.update(task, completed=done, total=total)

    reason = "no attempt was made"
    try:
        for attempt in range(1, max_attempts + 1):
            if bar is not None and attempt > 1:
                bar.update(task, description=f"{name} (try {attempt}/{max_attempts})")
            try:
                _fetch_into(url, tmp_path, timeout, report, stop)
                if verify is not None:
                    verify(tmp_path)
                os.replace(tmp_path, final_path)  # atomic: readers see no file or the whole file
                return final_path, None
            except urllib.error.HTTPError as e:
                reason = _describe(e)
                if e.code in PERMANENT_HTTP_ERRORS:
                    break
            except (_IncompleteDownload, urllib.error.URLError, http.client.HTTPException, OSError) as e:
                reason = _describe(e)
            if stop is not None and stop.is_set():
                break
            if attempt < max_attempts:
                time.sleep(RETRY_BASE_DELAY * 2 ** (attempt - 1))
        return None, f"{name}: {reason}"
    finally:
        if bar is not None:
            bar.remove_task(task)


def download_file(url, dest, max_attempts=5, timeout=30, progress=True, verify=None):
    """Download any file (the CORE eval bundle, ...) with the shard downloader's retries, Range
    resume, progress bar and atomic rename. Returns (dest, None) or (None, reason).

    verify(path), if given, raises ValueError when a complete download is not a valid file; the
    file is then deleted and the download tried again."""
    def check(tmp_path):
        try:
            verify(tmp_path)
        except ValueError as e:
            os.remove(tmp_path)
            raise _IncompleteDownload(f"the downloaded file is not valid ({e})") from e

    check_fn = check if verify is not None else None
    if not progress:
        return _download_url(url, dest, check_fn, max_attempts, timeout)
    with _progress_bar() as bar:
        return _download_url(url, dest, check_fn, max_attempts, timeout, bar)


def _progress_bar():
    from rich.console import Console
    from rich.progress import BarColumn, DownloadColumn, Progress, TextColumn, TimeRemainingColumn, TransferSpeedColumn
    return Progress(TextColumn("{task.description}"), BarColumn(), DownloadColumn(), TransferSpeedColumn(),
                    TimeRemainingColumn(), console=Console(stderr=True), transient=True)


def download_shard(index, base_url=None, data_dir=None, max_attempts=5, timeout=30, progress=True):
    """Download shard `index` (shard_00042.parquet) into data_dir (default $NANOCHAT_BASE_DIR/base_data).

    Streams into NAME.tmp, resumes a partial NAME.tmp with a Range request, checks the size and that
    the file opens as parquet, then renames it into place. Retries with exponential backoff.
    Returns the final path, or None if every attempt failed (then no NAME file exists; a partial
    NAME.tmp may remain and the next call resumes it). A shard that is already there is not fetched."""
    data_dir = data_dir or default_download_dir()
    if not progress:
        return _download_with_retries(index, base_url, data_dir, max_attempts, timeout)[0]
    with _progress_bar() as bar:
        return _download_with_retries(index, base_url, data_dir, max_attempts, timeout, bar)[0]


def _download_many(indices, base_url, data_dir, workers, max_attempts, timeout, progress):
    """Download shards in parallel; returns ([path or None per index], [reasons for the failures])."""
    data_dir = data_dir or default_download_dir()
    stop = threading.Event()  # set on Ctrl-C so the worker threads stop instead of finishing their files
    bar = _progress_bar() if progress else None
    pool = ThreadPoolExecutor(max_workers=max(1, workers))
    try:
        if bar is not None:
            bar.start()
        futures = [pool.submit(_download_with_retries, i, base_url, data_dir, max_attempts, timeout, bar, stop)
                   for i in indices]
        results = [f.result() for f in futures]
    except KeyboardInterrupt:
        stop.set()
        pool.shutdown(wait=True, cancel_futures=True)
        raise
    finally:
        pool.shutdown(wait=True)
        if bar is not None:
            bar.stop()
    return [path for path, _ in results], [reason for _, reason in results if reason]


def download_shards(num_shards, base_url=None, data_dir=None, workers=4, max_attempts=5, timeout=30, progress=True):
    """Download shards 0 .. num_shards-1 with `workers` threads. Returns a list with the path of
    each shard, or None where that shard could not be downloaded."""
    paths, _ = _download_many(range(num_shards), base_url, data_dir, workers, max_attempts, timeout, progress)
    return paths


# -----------------------------------------------------------------------------
# command line

EXAMPLES = """examples:
  python -m nanochat.dataset -n 8                 # the first 8 FineWeb-Edu shards (~100 MB each)
  python -m nanochat.dataset -n 240 -w 8          # more shards, 8 downloads at a time
  python -m nanochat.dataset -n 2 --data-dir ./my_shards
  NANOCHAT_DATA_URL=http://mirror.local/fineweb python -m nanochat.dataset -n 8

Rerun the same command to resume: finished shards are skipped and partial ones continue.
Without downloads, training uses the embedded corpus in data/embedded."""


def main(argv=None):
    parser = ArgumentParser(prog="python -m nanochat.dataset", epilog=EXAMPLES,
                            formatter_class=argparse.RawDescriptionHelpFormatter,
                            description="Download pretraining shards (shard_00000.parquet, ...) into "
                                        "$NANOCHAT_BASE_DIR/base_data, where training finds them.")
    parser.add_argument("-n", "--num-shards", type=int_range(1, 100_000), default=8, help="how many shards to download, from shard 0 (default 8)")
    parser.add_argument("-w", "--workers", type=int_range(1, 256), default=4, help="parallel downloads (default 4)")
    parser.add_argument("--base-url", default=None, help=f"shard server (default $NANOCHAT_DATA_URL or {DEFAULT_BASE_URL})")
    parser.add_argument("--data-dir", default=None, help="where to save the shards (default $NANOCHAT_BASE_DIR/base_data)")
    parser.add_argument("--max-attempts", type=int_range(1, 1000), default=5, help="tries per shard before giving up (default 5)")
    parser.add_argument("--timeout", type=float_range(0, 86400, low_open=True), default=30, help="seconds to wait on a silent connection (default 30)")
    args = parser.parse_args(argv)
    data_dir = os.path.abspath(os.path.expanduser(args.data_dir)) if args.data_dir else default_download_dir()
    if os.path.exists(data_dir) and not os.path.isdir(data_dir):
        raise UserError(f"--data-dir {data_dir} is a file: give a folder to save the shards in")
    base_url = resolve_base_url(args.base_url)
    paths, failures = _download_many(range(args.num_shards), base_url, data_dir, args.workers,
                                     args.max_attempts, args.timeout, progress=True)
    if failures:
        raise UserError(f"could not download {len(failures)} of {len(paths)} shards from {base_url} "
                        f"(first failure: {failures[0]}): check the internet connection or --base-url, "
                        f"then run the same command again to resume")
    print(f"{len(paths)} shards ready in {data_dir}")


if __name__ == "__main__":
    run_main(main)
