"""
Tests for nanochat/dataset.py: the embedded corpus, local data folders, and the shard downloader
against a flaky loopback HTTP server (no internet needed).
"""

import json
import os
import socket
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from nanochat import dataset
from nanochat.common import UserError, run_main
from nanochat.dataset import (EMBEDDED_DIR, download_shard, download_shards, iter_file_batches, list_data_files,
                              parquets_iter_batched, resolve_data_dir, split_files)


@pytest.fixture(autouse=True)
def isolated_base_dir(tmp_path, monkeypatch):
    """Every test gets its own empty $NANOCHAT_BASE_DIR, no retry sleeps and no $NANOCHAT_DATA_URL."""
    base = tmp_path / "base"
    monkeypatch.setenv("NANOCHAT_BASE_DIR", str(base))
    monkeypatch.delenv("NANOCHAT_DATA_URL", raising=False)
    monkeypatch.setattr(dataset, "RETRY_BASE_DELAY", 0.0)
    return base


def write_parquet(path, docs, row_group_size):
    pq.write_table(pa.table({"text": docs}), path, row_group_size=row_group_size)


# -----------------------------------------------------------------------------
# the embedded corpus

def read_split(split, data_dir=None):
    return [doc for path in split_files(list_data_files(data_dir), split) for batch in iter_file_batches(path) for doc in batch]


def test_embedded_corpus_is_the_default_and_splits_are_disjoint():
    assert resolve_data_dir() == EMBEDDED_DIR
    files = list_data_files()
    assert [os.path.basename(f) for f in files] == [f"shard_{i:05d}.parquet" for i in range(len(files))]
    assert len(files) >= 3
    assert split_files(files, "val") == files[-1:]
    assert split_files(files, "train") == files[:-1]
    train, val = read_split("train"), read_split("val")
    assert len(train) > 1000 and len(val) > 50
    assert not set(train) & set(val)
    assert 0.05 <= len(val) / (len(train) + len(val)) <= 0.10
    # real prose, no Project Gutenberg licence text
    everything = train + val
    assert all(isinstance(d, str) and d.strip() for d in everything)
    assert not any("gutenberg" in d.lower() for d in everything)
    assert any("To be, or not to be" in d for d in everything)
    assert max(map(len, everything)) < 5000  # short documents, so packing into short rows works


def test_embedded_batches_are_row_groups_in_a_fixed_order():
    path = list_data_files()[-1]
    first = list(iter_file_batches(path))
    second = list(iter_file_batches(path))
    assert first == second
    pf = pq.ParquetFile(path)
    assert len(first) == pf.num_row_groups >= 2
    assert [len(b) for b in first] == [pf.metadata.row_group(i).num_rows for i in range(pf.num_row_groups)]


def test_parquets_iter_batched_takes_every_step_th_batch():
    everything = list(parquets_iter_batched("train"))
    assert len(everything) >= 4
    rank0 = list(parquets_iter_batched("train", start=0, step=2))
    rank1 = list(parquets_iter_batched("train", start=1, step=2))
    assert rank0 == everything[0::2]
    assert rank1 == everything[1::2]


def test_downloaded_shards_take_priority_over_the_embedded_corpus(isolated_base_dir):
    downloads = isolated_base_dir / "base_data"
    downloads.mkdir(parents=True)
    (downloads / "shard_00000.parquet.tmp").write_bytes(b"partial")  # a partial download is not data
    assert resolve_data_dir() == EMBEDDED_DIR
    write_parquet(downloads / "shard_00000.parquet", ["downloaded doc"], 10)
    assert resolve_data_dir() == str(downloads)
    assert list_data_files() == [str(downloads / "shard_00000.parquet")]
    # with one file, train and val both use it
    assert read_split("train") == read_split("val") == ["downloaded doc"]


# -----------------------------------------------------------------------------
# local data folders

def test_local_parquet_folder(tmp_path):
    folder = tmp_path / "pq"
    folder.mkdir()
    write_parquet(folder / "a.parquet", [f"doc a{i}" for i in range(5)], row_group_size=2)
    write_parquet(folder / "b.parquet", ["doc b0", "doc b1"], row_group_size=2)
    (folder / "notes.md").write_text("not data")
    files = list_data_files(str(folder))
    assert [os.path.basename(f) for f in files] == ["a.parquet", "b.parquet"]
    assert list(iter_file_batches(files[0])) == [["doc a0", "doc a1"], ["doc a2", "doc a3"], ["doc a4"]]
    assert read_split("val", str(folder)) == ["doc b0", "doc b1"]


def test_local_txt_folder_splits_documents_on_two_blank_lines(tmp_path, monkeypatch):
    folder = tmp_path / "txt"
    folder.mkdir()
    text = ("First doc, para one.\nSecond line.   \n\nFirst doc, para two.\n\n\n"
            "Second doc.\n\n  \n\n\n\nThird doc\n")
    (folder / "a.txt").write_text(text)
    (folder / "b.txt").write_text("val doc\n")
    [batch] = iter_file_batches(str(folder / "a.txt"))
    assert batch == ["First doc, para one.\nSecond line.\n\nFirst doc, para two.", "Second doc.", "Third doc"]
    # batches of TEXT_BATCH_SIZE documents, and an over-long document is cut at paragraph breaks
    monkeypatch.setattr(dataset, "TEXT_BATCH_SIZE", 2)
    monkeypatch.setattr(dataset, "TXT_MAX_DOC_CHARS", 25)
    (folder / "a.txt").write_text("aaaaaaaaaa\n\nbbbbbbbbbb\n\ncccccccccc\n\n\nd\n")
    assert list(iter_file_batches(str(folder / "a.txt"))) == [["aaaaaaaaaa\n\nbbbbbbbbbb", "cccccccccc"], ["d"]]
    assert read_split("val", str(folder)) == ["val doc"]


def test_local_jsonl_folder(tmp_path, monkeypatch):
    folder = tmp_path / "jl"
    folder.mkdir()
    lines = [json.dumps({"text": f"doc {i}", "id": i}) for i in range(5)]
    (folder / "a.jsonl").write_text("\n".join(lines[:3]) + "\n\n" + "\n".join(lines[3:]) + "\n")
    monkeypatch.setattr(dataset, "TEXT_BATCH_SIZE", 2)
    assert list(iter_file_batches(str(folder / "a.jsonl"))) == [["doc 0", "doc 1"], ["doc 2", "doc 3"], ["doc 4"]]


@pytest.mark.parametrize("bad_line, expected", [
    ('{"text": "ok"', "not valid JSON"),
    ('{"content": "no text field"}', "with keys ['content']"),
    ('["a list"]', "a JSON list"),
])
def test_bad_jsonl_line_names_file_and_line(tmp_path, bad_line, expected):
    path = tmp_path / "bad.jsonl"
    path.write_text('{"text": "fine"}\n\n' + bad_line + "\n")
    with pytest.raises(UserError) as e:
        list(iter_file_batches(str(path)))
    assert f"{path}, line 3" in str(e.value) and expected in str(e.value)


def test_bad_data_dirs_give_user_errors(tmp_path):
    with pytest.raises(UserError, match="does not exist"):
        resolve_data_dir(str(tmp_path / "nope"))
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "readme.md").write_text("hi")
    (empty / "shard_00000.parquet.tmp").write_bytes(b"half")
    with pytest.raises(UserError, match="no .parquet, .txt or .jsonl files"):
        list_data_files(str(empty))
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "x.parquet").write_bytes(b"this is not parquet")
    with pytest.raises(UserError, match="not a readable parquet file"):
        list(iter_file_batches(str(broken / "x.parquet")))
    pq.write_table(pa.table({"content": ["a"]}), broken / "y.parquet")
    with pytest.raises(UserError, match="no 'text' column"):
        list(iter_file_batches(str(broken / "y.parquet")))
    with pytest.raises(UserError, match="no data files"):
        split_files([], "train")


# -----------------------------------------------------------------------------
# the downloader, against a loopback server

class ShardServer:
    """A local HTTP server for shard files whose answers follow a script, so that failures are
    deterministic: `script(name, n)` says what to do with the n-th request (0, 1, ...) for a file:
    "ok", "drop" (send the headers and half the body, then hang up), "500", or "garbage".
    Every answer is logged before it is sent, so the log is complete when the client is done."""

    def __init__(self, files, script=lambda name, n: "ok", ranges=True):
        self.files, self.script, self.ranges = files, script, ranges
        self.log = []  # (name, Range header, status, body bytes sent)
        self.counts = {}
        self.lock = threading.Lock()
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def do_GET(self):
                name = self.path.rsplit("/", 1)[-1]
                with server.lock:
                    n = server.counts.get(name, 0)
                    server.counts[name] = n + 1
                range_header = self.headers.get("Range")
                if name not in server.files:
                    server.log.append((name, range_header, 404, 0))
                    self.send_error(404)
                    return
                action = server.script(name, n)
                if action == "500":
                    server.log.append((name, range_header, 500, 0))
                    self.send_error(500)
                    return
                data = server.files[name]
                if action == "garbage":
                    data = bytes(reversed(data))
                first = 0
                if range_header and server.ranges:
                    first = int(range_header.removeprefix("bytes=").split("-")[0])
                    if first >= len(data):
                        server.log.append((name, range_header, 416, 0))
                        self.send_response(416)
                        self.send_header("Content-Range", f"bytes */{len(data)}")
                        self.end_headers()
                        return
                    self.send_response(206)
                    self.send_header("Content-Range", f"bytes {first}-{len(data) - 1}/{len(data)}")
                else:
                    self.send_response(200)
                body = data[first:]
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                if action == "drop":
                    body = body[:len(body) // 2]
                # Logged before the body goes out: once the client has read it, it may stop the
                # server and read the log while this thread would still be appending.
                server.log.append((name, range_header, 206 if first else 200, len(body)))
                self.wfile.write(body)
                self.wfile.flush()

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)  # port 0: any free port
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/data"
        self.thread = threading.Thread(target=self.httpd.serve_forever, kwargs={"poll_interval": 0.01}, daemon=True)

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.httpd.shutdown()
        self.httpd.server_close()
        self.thread.join()


@pytest.fixture(scope="module")
def shard_bytes(tmp_path_factory):
    """Three real parquet shards (a few dozen documents each, several row groups) as bytes."""
    docs = [doc for batch in iter_file_batches(list_data_files(EMBEDDED_DIR)[-1]) for doc in batch][:60]
    folder = tmp_path_factory.mktemp("shards")
    files = {}
    for i in range(3):
        path = folder / f"shard_{i:05d}.parquet"
        write_parquet(path, docs[i * 20:(i + 1) * 20], row_group_size=8)
        files[path.name] = path.read_bytes()
    assert all(len(b) > 10_000 for b in files.values())
    return files


def files_in(folder):
    return sorted(os.listdir(folder)) if os.path.isdir(folder) else []


def test_download_survives_drops_and_500s_and_resumes_with_range(tmp_path, shard_bytes):
    # each shard: 1st request drops mid-body, 2nd answers 500, 3rd succeeds
    script = lambda name, n: ["drop", "500", "ok"][min(n, 2)]
    out = tmp_path / "out"
    with ShardServer(shard_bytes, script) as server:
        paths = download_shards(3, base_url=server.url, data_dir=str(out), workers=2, progress=False)
    assert paths == [str(out / f"shard_{i:05d}.parquet") for i in range(3)]
    assert files_in(out) == sorted(shard_bytes)  # no .tmp left behind
    for name, data in shard_bytes.items():
        assert (out / name).read_bytes() == data
        requests = [entry for entry in server.log if entry[0] == name]
        half = len(data) // 2
        assert requests == [
            (name, None, 200, half),                                # dropped after half the body
            (name, f"bytes={half}-", 500, 0),                       # asked for the rest, got 500
            (name, f"bytes={half}-", 206, len(data) - half),        # resumed: only the rest was sent
        ]


def test_download_gives_up_without_a_final_file_then_resumes(tmp_path, shard_bytes):
    name = "shard_00001.parquet"
    data = shard_bytes[name]
    out = tmp_path / "out"
    with ShardServer(shard_bytes, lambda name, n: ["drop", "500"][n % 2]) as server:
        assert download_shard(1, base_url=server.url, data_dir=str(out), max_attempts=3, progress=False) is None
    assert files_in(out) == [name + ".tmp"]
    partial = (out / (name + ".tmp")).read_bytes()
    # two drops: half the file, then half of the rest; always a true prefix, never corrupt bytes
    assert len(partial) == len(data) // 2 + (len(data) - len(data) // 2) // 2
    assert data.startswith(partial)
    with ShardServer(shard_bytes) as server:
        path = download_shard(1, base_url=server.url, data_dir=str(out), progress=False)
    assert path == str(out / name)
    assert (out / name).read_bytes() == data
    assert files_in(out) == [name]
    assert server.log == [(name, f"bytes={len(partial)}-", 206, len(data) - len(partial))]
    # a shard that is already there is not fetched again
    with ShardServer(shard_bytes) as server:
        assert download_shard(1, base_url=server.url, data_dir=str(out), progress=False) == path
    assert server.log == []


def test_download_starts_over_when_the_server_ignores_range(tmp_path, shard_bytes):
    name = "shard_00000.parquet"
    out = tmp_path / "out"
    out.mkdir()
    (out / (name + ".tmp")).write_bytes(b"stale bytes from some other file")
    with ShardServer(shard_bytes, ranges=False) as server:
        path = download_shard(0, base_url=server.url, data_dir=str(out), progress=False)
    assert (out / name).read_bytes() == shard_bytes[name]
    assert path == str(out / name) and files_in(out) == [name]
    assert server.log == [(name, "bytes=32-", 200, len(shard_bytes[name]))]


def test_download_finishes_a_complete_tmp_file(tmp_path, shard_bytes):
    name = "shard_00002.parquet"
    out = tmp_path / "out"
    out.mkdir()
    (out / (name + ".tmp")).write_bytes(shard_bytes[name])  # every byte arrived, but no rename happened
    with ShardServer(shard_bytes) as server:
        assert download_shard(2, base_url=server.url, data_dir=str(out), progress=False) == str(out / name)
    assert (out / name).read_bytes() == shard_bytes[name]
    assert [status for _, _, status, _ in server.log] == [416]


def test_download_rejects_a_file_that_is_not_parquet(tmp_path, shard_bytes):
    out = tmp_path / "out"
    with ShardServer(shard_bytes, lambda name, n: "garbage") as server:
        assert download_shard(0, base_url=server.url, data_dir=str(out), max_attempts=2, progress=False) is None
    assert files_in(out) == []  # neither a final file nor a corrupt .tmp
    assert len(server.log) == 2


def test_download_does_not_retry_a_missing_shard(tmp_path, shard_bytes):
    with ShardServer(shard_bytes) as server:
        assert download_shard(7, base_url=server.url, data_dir=str(tmp_path), progress=False) is None
    assert server.log == [("shard_00007.parquet", None, 404, 0)]


def test_base_url_comes_from_the_environment(tmp_path, shard_bytes, monkeypatch):
    with ShardServer(shard_bytes) as server:
        monkeypatch.setenv("NANOCHAT_DATA_URL", server.url)
        assert download_shard(0, data_dir=str(tmp_path), progress=True) == str(tmp_path / "shard_00000.parquet")


def test_cli_offline_prints_one_line_and_exits_nonzero(tmp_path, capsys):
    with socket.socket() as s:  # a port on which nothing listens: connection refused, as offline
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    argv = ["-n", "2", "--base-url", f"http://127.0.0.1:{port}", "--data-dir", str(tmp_path / "d"), "--max-attempts", "2"]
    with pytest.raises(SystemExit) as e:
        run_main(lambda _argv: dataset.main(argv))
    assert e.value.code != 0
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "Traceback" not in err
    assert err.startswith("error: could not download 2 of 2 shards") and "cannot reach the server" in err
    assert files_in(tmp_path / "d") == []


def test_cli_downloads_shards_and_help_has_examples(tmp_path, shard_bytes, capsys):
    with ShardServer(shard_bytes, lambda name, n: "drop" if n == 0 else "ok") as server:
        dataset.main(["-n", "3", "--base-url", server.url, "--data-dir", str(tmp_path)])
    assert "3 shards ready" in capsys.readouterr().out
    assert files_in(tmp_path) == sorted(shard_bytes)
    assert read_split("val", str(tmp_path)) == pq.read_table(pa.BufferReader(shard_bytes["shard_00002.parquet"])).column("text").to_pylist()
    with pytest.raises(SystemExit) as e:
        dataset.main(["--help"])
    assert e.value.code == 0
    assert "python -m nanochat.dataset -n 8" in capsys.readouterr().out
