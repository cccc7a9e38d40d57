"""Files from someone else cannot run code, and saves that fail lose nothing.

Every file kind the pipeline loads (model, optimizer, token_bytes.pt, tokenizer.pkl) is tried with a
crafted pickle whose loading would create a canary file: none is created, and the error is one line
naming the file. A save that hits a full disk removes its temporary files and leaves the earlier
checkpoint loadable, bit for bit. Upstream nanochat's pickled tokenizer still reads, as data."""

import os
import sys
import json
import errno
import pickle
import builtins
import subprocess

import pytest
import torch

from nanochat import checkpoint_manager as cm
from nanochat.common import UserError, run_entry

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# a checkpoint folder written by unmodified upstream nanochat (see its README); outside the repo
from tests.conftest import UPSTREAM_FIXTURE as UPSTREAM, SKIP_WITHOUT_UPSTREAM


class RunsCode:
    """Unpickling this calls os.system: what a malicious checkpoint would do."""

    def __init__(self, canary):
        self.canary = str(canary)

    def __reduce__(self):
        return (os.system, (f"touch {self.canary}",))


def one_line_error(call):
    """Run `call` through the scripts' error boundary: (exit code, stderr text)."""
    import io
    import contextlib
    err = io.StringIO()
    with contextlib.redirect_stderr(err):
        code = run_entry(lambda argv: call())
    return code, err.getvalue()


def assert_refused(call, canary, path):
    code, err = one_line_error(call)
    assert not os.path.exists(canary), "the crafted file ran code"
    assert code == 2, err
    assert err.startswith("error: ") and err.count("\n") == 1, err
    assert os.path.basename(str(path)) in err, err


# -----------------------------------------------------------------------------
# a crafted pickle in each loadable file kind

def small_checkpoint(ckpt_dir, step=4, seed=0):
    """A tiny but real checkpoint written by save_checkpoint: (model state, optimizer state)."""
    g = torch.Generator().manual_seed(seed)
    model_state = {"w": torch.randn(4, 3, generator=g), "b": torch.arange(3)}
    optim_state = {"optimizer": {"state": {0: {"m": torch.randn(4, 3, generator=g)}}, "param_groups": [{"lr": 0.1}]},
                   "dataloader": {"pq_idx": 0}, "rng": {"python": (3, tuple(range(625)), None)}}
    cm.save_checkpoint(str(ckpt_dir), step, model_state, optim_state, {"step": step, "model_config": {"n_layer": 1}})
    return model_state, optim_state


def plant(ckpt_dir, step, name, obj, record_checksum):
    """Replace one file of a checkpoint with torch.save(obj); with record_checksum the meta vouches
    for the new file (an attacker who ships the whole folder can do that), so only weights_only
    stands between the file and the code."""
    path = os.path.join(ckpt_dir, name)
    torch.save(obj, path)
    meta = cm.read_meta(ckpt_dir, step)
    if record_checksum:
        meta["sha256"][name] = cm.sha256_of(path)
    else:
        meta.pop("sha256")  # like an upstream meta
    with open(cm.meta_path(ckpt_dir, step), "w") as f:
        json.dump(meta, f)
    return path


@pytest.mark.parametrize("record_checksum", [True, False])
def test_crafted_model_file_does_not_run_code(tmp_path, record_checksum):
    small_checkpoint(tmp_path)
    canary = tmp_path / "canary"
    path = plant(tmp_path, 4, "model_000004.pt", {"w": RunsCode(canary)}, record_checksum)
    assert_refused(lambda: cm.load_checkpoint(str(tmp_path), 4), canary, path)


@pytest.mark.parametrize("record_checksum", [True, False])
def test_crafted_optimizer_file_does_not_run_code(tmp_path, record_checksum):
    small_checkpoint(tmp_path)
    canary = tmp_path / "canary"
    path = plant(tmp_path, 4, "optim_000004_rank0.pt", {"optimizer": RunsCode(canary)}, record_checksum)
    assert_refused(lambda: cm.load_checkpoint(str(tmp_path), 4, load_optimizer=True), canary, path)


def test_crafted_raw_pickle_as_model_file_does_not_run_code(tmp_path):
    small_checkpoint(tmp_path)
    canary = tmp_path / "canary"
    path = tmp_path / "model_000004.pt"
    path.write_bytes(pickle.dumps({"w": RunsCode(canary)}))  # not torch's zip format at all
    meta = cm.read_meta(str(tmp_path), 4)
    meta["sha256"]["model_000004.pt"] = cm.sha256_of(path)
    (tmp_path / "meta_000004.json").write_text(json.dumps(meta))
    assert_refused(lambda: cm.load_checkpoint(str(tmp_path), 4), canary, path)


def test_crafted_token_bytes_does_not_run_code(tmp_path, monkeypatch):
    from nanochat.tokenizer import get_token_bytes
    monkeypatch.setenv("NANOCHAT_BASE_DIR", str(tmp_path))
    (tmp_path / "tokenizer").mkdir()
    canary = tmp_path / "canary"
    path = tmp_path / "tokenizer" / "token_bytes.pt"
    torch.save(RunsCode(canary), path)
    assert_refused(get_token_bytes, canary, path)


class CallsEncoding:
    """A pickle that calls tiktoken.core.Encoding with arguments of its choosing (the REDUCE opcode)."""

    def __reduce__(self):
        import tiktoken.core
        return (tiktoken.core.Encoding, ("x", r"\w+", {b"a": 0}, {}))


# how tiktoken pickles a registered encoding: its state is only a name, whose files tiktoken would
# download; made by hand (PROTO 4, GLOBAL tiktoken.core Encoding, NEWOBJ, state 'cl100k_base', BUILD)
ENCODING_BY_NAME = (b"\x80\x04\x8c\x0dtiktoken.core\x8c\x08Encoding\x93)\x81"
                    b"\x8c\x0bcl100k_base" b"b.")


@pytest.mark.parametrize("payload", ["os.system", "builtins.eval", "calls Encoding", "Encoding by name"])
def test_crafted_tokenizer_pickle_does_not_run_code(tmp_path, payload):
    from nanochat.tokenizer import RustBPETokenizer
    canary = tmp_path / "canary"
    obj = {"os.system": RunsCode(canary),
           "builtins.eval": type("Eval", (), {"__reduce__": lambda self: (eval, (f"open({str(canary)!r}, 'w')",))})(),
           "calls Encoding": CallsEncoding(),
           "Encoding by name": None}[payload]
    path = tmp_path / "tokenizer.pkl"
    path.write_bytes(pickle.dumps(obj) if obj is not None else ENCODING_BY_NAME)
    assert_refused(lambda: RustBPETokenizer.from_directory(str(tmp_path)), canary, path)


def test_crafted_tokenizer_pickle_ends_a_script_with_one_line_and_exit_2(tmp_path):
    (tmp_path / "tokenizer").mkdir()
    canary = tmp_path / "canary"
    (tmp_path / "tokenizer" / "tokenizer.pkl").write_bytes(pickle.dumps(RunsCode(canary)))
    env = dict(os.environ, NANOCHAT_BASE_DIR=str(tmp_path), OMP_NUM_THREADS="1")
    r = subprocess.run([sys.executable, "-m", "scripts.tok_eval", "--references", ""], cwd=REPO, env=env,
                       capture_output=True, text=True, timeout=120)
    assert not canary.exists()
    assert r.returncode == 2, r.stderr
    error_lines = [line for line in r.stderr.splitlines() if line.startswith("error:")]
    assert len(error_lines) == 1 and "tokenizer.pkl" in error_lines[0] and "posix.system" in error_lines[0]
    assert r.stderr.count("\n") == 1 and "a pickle can run code" in r.stderr


# -----------------------------------------------------------------------------
# upstream nanochat's tokenizer: a pickled tiktoken Encoding, read as data

@pytest.mark.skipif(SKIP_WITHOUT_UPSTREAM, reason=f"upstream fixture not found at {UPSTREAM}")
def test_upstream_tokenizer_reproduces_upstream_token_ids(monkeypatch, tmp_path):
    from nanochat.common import use_base_dir
    from nanochat.tokenizer import get_tokenizer, get_token_bytes
    reference = json.load(open(os.path.join(UPSTREAM, "reference_outputs.json")))["tokenizer"]
    monkeypatch.setenv("NANOCHAT_BASE_DIR", str(tmp_path))  # --base-dir overrides it
    use_base_dir(UPSTREAM)
    tok = get_tokenizer()
    assert tok.encode(reference["text"], prepend="<|bos|>") == reference["ids_with_bos"]
    assert tok.get_vocab_size() == reference["vocab_size"]
    assert tok.get_bos_token_id() == reference["bos_token_id"]
    assert tok.special_tokens == reference["special_tokens"]
    token_bytes = get_token_bytes()
    assert token_bytes.shape == (1024,) and token_bytes[1015:].tolist() == [0] * 9
    assert token_bytes[:256].tolist() == [1] * 256
    # saved again, it is plain data that gives the same ids
    tok.save(str(tmp_path / "converted"))
    from nanochat.tokenizer import RustBPETokenizer
    again = RustBPETokenizer.from_directory(str(tmp_path / "converted"))
    assert again.encode(reference["text"], prepend="<|bos|>") == reference["ids_with_bos"]


@pytest.mark.skipif(SKIP_WITHOUT_UPSTREAM, reason=f"upstream fixture not found at {UPSTREAM}")
def test_upstream_checkpoint_without_checksums_loads_with_its_optimizer():
    ckpt = os.path.join(UPSTREAM, "base_checkpoints", "d3")
    model_state, optim_state, meta = cm.load_checkpoint(ckpt, 80, load_optimizer=True)
    assert "sha256" not in meta and "run_id" not in meta
    assert "transformer.wte.weight" in model_state and set(optim_state) == {"state", "param_groups"}


# -----------------------------------------------------------------------------
# saves that fail

class FullDisk:
    """An open() whose files accept `room` bytes in all, then fail with ENOSPC, like a disk that fills
    up during a save. Reads and other modes pass through."""

    def __init__(self, room):
        self.room = room

    def __call__(self, path, mode="r", *args, **kwargs):
        f = builtins.open(path, mode, *args, **kwargs)
        if "w" not in mode:
            return f
        disk, real_write = self, f.write

        def write(data):
            n = len(data) if isinstance(data, str) else memoryview(data).nbytes
            if n > disk.room:
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
            disk.room -= n
            return real_write(data)

        class Writer:  # a file object whose write the disk controls
            def __getattr__(self, name):
                return getattr(f, name)

            def write(self, data):
                return write(data)

            def __enter__(self):
                return self

            def __exit__(self, *exc):
                f.close()

        return Writer()


def snapshot(folder):
    return {name: (folder / name).read_bytes() for name in sorted(os.listdir(folder))}


@pytest.mark.parametrize("fills_in", ["optimizer", "model", "meta"])
def test_full_disk_during_save_keeps_earlier_checkpoint_and_leaves_no_temp_file(tmp_path, monkeypatch, fills_in):
    model_state, optim_state = small_checkpoint(tmp_path, step=4, seed=0)
    before = snapshot(tmp_path)
    optim, model = len(before["optim_000004_rank0.pt"]), len(before["model_000004.pt"])
    room = {"optimizer": optim // 2, "model": optim + model // 2, "meta": optim + model + 10}[fills_in]
    for step in (8, 4):  # a new step, and a new save of the existing step (after a resume from an earlier one)
        monkeypatch.setattr(cm, "open", FullDisk(room), raising=False)
        code, err = one_line_error(lambda: small_checkpoint(tmp_path, step=step, seed=1))
        assert code == 2 and err.count("\n") == 1 and "No space left on device" in err, err
        assert f"step {step}" in err and str(tmp_path) in err
        assert snapshot(tmp_path) == before  # no temp file, nothing of the failed save, step 4 untouched
    monkeypatch.undo()
    loaded_model, loaded_optim, _ = cm.load_checkpoint(str(tmp_path), 4, load_optimizer=True)
    assert loaded_model.keys() == model_state.keys() and all(torch.equal(loaded_model[k], model_state[k]) for k in model_state)
    assert torch.equal(loaded_optim["optimizer"]["state"][0]["m"], optim_state["optimizer"]["state"][0]["m"])
    assert cm.find_last_step(str(tmp_path)) == 4


def test_failing_torch_save_leaves_no_temp_file(tmp_path, monkeypatch):
    model_state, _ = small_checkpoint(tmp_path, step=4)
    before = snapshot(tmp_path)

    def no_space(obj, f, *args, **kwargs):
        f.write(b"PK\x03\x04 half a zip")
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(torch, "save", no_space)
    with pytest.raises(UserError, match="No space left on device"):
        small_checkpoint(tmp_path, step=8, seed=1)
    assert snapshot(tmp_path) == before


def test_real_write_failure_inside_torch_save_is_reported_with_its_reason(tmp_path):
    """torch's own zip writer hits a real OS limit (a file size limit: EFBIG) mid-file."""
    script = f"""
import resource, signal, sys, torch
sys.path.insert(0, {REPO!r})
from nanochat import checkpoint_manager as cm
from nanochat.common import run_entry
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
resource.setrlimit(resource.RLIMIT_FSIZE, (20000, 20000))
sys.exit(run_entry(lambda argv: cm.save_checkpoint({str(tmp_path)!r}, 4, {{"w": torch.zeros(100000)}}, None, {{"model_config": {{}}}})))
"""
    r = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert r.returncode == 2, r.stderr
    assert r.stderr.count("\n") == 1 and "File too large" in r.stderr and "step 4" in r.stderr
    assert os.listdir(tmp_path) == []


@pytest.mark.skipif(hasattr(os, "geteuid") and os.geteuid() == 0, reason="root ignores folder permissions")
def test_read_only_folder_is_one_line(tmp_path):
    small_checkpoint(tmp_path, step=4)
    before = snapshot(tmp_path)
    os.chmod(tmp_path, 0o555)
    try:
        with pytest.raises(UserError, match="Permission denied"):
            small_checkpoint(tmp_path, step=8)
    finally:
        os.chmod(tmp_path, 0o755)
    assert snapshot(tmp_path) == before


def test_old_optimizer_file_with_numpy_rng_state_still_loads(tmp_path):
    """Optimizer files written before the RNG state was stored as lists hold a numpy array."""
    import numpy as np
    small_checkpoint(tmp_path)
    state = {"optimizer": {}, "dataloader": None, "rng": {"numpy": np.random.get_state()}}
    plant(tmp_path, 4, "optim_000004_rank0.pt", state, record_checksum=True)
    _, loaded, _ = cm.load_checkpoint(str(tmp_path), 4, load_optimizer=True)
    assert np.array_equal(loaded["rng"]["numpy"][1], state["rng"]["numpy"][1])


def test_rng_state_round_trips_through_a_weights_only_load(tmp_path):
    import random
    import numpy as np
    from nanochat.training import get_rng_state, set_rng_state
    torch.manual_seed(1), random.seed(1), np.random.seed(1)
    torch.save(get_rng_state(), tmp_path / "rng.pt")
    expected = (torch.rand(3), random.random(), np.random.rand(3))
    set_rng_state(cm.load_torch_file(str(tmp_path / "rng.pt")))
    assert torch.equal(torch.rand(3), expected[0]) and random.random() == expected[1]
    assert np.array_equal(np.random.rand(3), expected[2])


@pytest.mark.parametrize("fills_in", ["merges", "json"])
def test_tokenizer_save_that_fails_keeps_the_old_tokenizer(tmp_path, monkeypatch, fills_in):
    from nanochat import tokenizer as tokenizer_module
    from nanochat.tokenizer import RustBPETokenizer
    bytes_only = RustBPETokenizer(tokenizer_module.SPLIT_PATTERN, {bytes([i]): i for i in range(256)})
    bytes_only.save(str(tmp_path))
    before = snapshot(tmp_path)
    merged = RustBPETokenizer(tokenizer_module.SPLIT_PATTERN, {**{bytes([i]): i for i in range(256)}, b"ab": 256})
    room = {"merges": 10, "json": len(before["tokenizer.tiktoken"]) + 20}[fills_in]
    monkeypatch.setattr(tokenizer_module, "open", FullDisk(room), raising=False)
    with pytest.raises(UserError, match="No space left on device"):
        merged.save(str(tmp_path))
    monkeypatch.undo()
    assert snapshot(tmp_path) == before
    assert RustBPETokenizer.from_directory(str(tmp_path)).encode("ab") == [97, 98]
