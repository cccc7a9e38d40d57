"""One folder, one run: every meta records its run's id and the sha256 of its files; a fresh run
refuses a folder that holds another run's checkpoints; a damaged file is named; a model tag cannot
point outside the base dir."""

import io
import os
import json
import shutil
import contextlib

import pytest

from conftest import TINY_TRAIN_ARGS, base_dir_env
from nanochat import checkpoint_manager as cm
from nanochat.common import UserError, run_entry


def run_base_train(base, args):
    """base_train through the scripts' error boundary: (exit code, stderr)."""
    from scripts import base_train
    err = io.StringIO()
    with base_dir_env(base), contextlib.redirect_stderr(err):
        code = run_entry(base_train.main, args)
    return code, err.getvalue()


def copy_run(tiny_run, tmp_path):
    base = tmp_path / "base"
    shutil.copytree(tiny_run, base)
    return base, base / "base_checkpoints" / "d2"


def snapshot(folder):
    return {name: (folder / name).read_bytes() for name in sorted(os.listdir(folder))}


def test_every_meta_records_one_run_id_and_the_sha256_of_its_files(tiny_run):
    ckpt = cm.checkpoint_dir("base", "d2", tiny_run)
    metas = [cm.read_meta(ckpt, step) for step in (4, 8, 12)]
    assert len({meta["run_id"] for meta in metas}) == 1 and metas[0]["run_id"]
    for step, meta in zip((4, 8, 12), metas):
        names = [os.path.basename(cm.model_path(ckpt, step)), os.path.basename(cm.optim_path(ckpt, step))]
        assert sorted(meta["sha256"]) == sorted(names)
        for name in names:
            assert meta["sha256"][name] == cm.sha256_of(os.path.join(ckpt, name))


def test_resumed_run_keeps_its_run_id(tiny_run, tmp_path):
    base, ckpt = copy_run(tiny_run, tmp_path)
    run_id = cm.read_meta(str(ckpt), 12)["run_id"]
    for name in ("model_000012.pt", "meta_000012.json", "optim_000012_rank0.pt"):
        os.remove(ckpt / name)
    code, err = run_base_train(base, TINY_TRAIN_ARGS + ["--resume-from-step", "8"])
    assert code == 0, err
    assert cm.read_meta(str(ckpt), 12)["run_id"] == run_id


def test_fresh_run_over_another_runs_folder_is_refused_and_changes_nothing(tiny_run, tmp_path):
    base, ckpt = copy_run(tiny_run, tmp_path)
    before = snapshot(ckpt)
    code, err = run_base_train(base, TINY_TRAIN_ARGS)  # no --resume-from-step: a fresh run
    assert code == 2 and err.count("\n") == 1, err
    assert str(ckpt) in err and "--resume-from-step 12" in err and "--model-tag" in err
    assert snapshot(ckpt) == before  # metrics.jsonl too: the refusal comes before anything is touched
    assert cm.find_last_step(str(ckpt)) == 12


def tiny_state(seed):
    import torch
    return {"w": torch.full((2, 2), float(seed))}


def test_leftovers_of_a_run_without_a_complete_checkpoint_do_not_block_a_fresh_run(tmp_path):
    # a crashed run left a model and an optimizer file for step 16, but never its meta
    cm.save_checkpoint(str(tmp_path), 16, tiny_state(1), tiny_state(1), {"model_config": {}})
    os.remove(cm.meta_path(str(tmp_path), 16))
    cm.check_fresh_run_dir(str(tmp_path))  # nothing complete: a fresh run may start here
    cm.save_checkpoint(str(tmp_path), 4, tiny_state(2), None, {"model_config": {}})
    assert cm.list_complete_steps(str(tmp_path)) == [4]
    assert cm.find_last_step(str(tmp_path)) == 4  # not the old run's step 16
    with pytest.raises(UserError, match="already holds the checkpoints of another run"):
        cm.check_fresh_run_dir(str(tmp_path))


def test_a_fresh_run_starts_a_new_run_id_that_later_saves_keep(tmp_path):
    first, second = tmp_path / "first", tmp_path / "second"
    for folder in (first, second):
        for step in (4, 8):
            cm.save_checkpoint(str(folder), step, tiny_state(step), None, {"model_config": {}})
    ids = {folder: [cm.read_meta(str(folder), s)["run_id"] for s in (4, 8)] for folder in (first, second)}
    assert ids[first][0] == ids[first][1] and ids[second][0] == ids[second][1]
    assert ids[first][0] != ids[second][0]


@pytest.mark.parametrize("name", ["model_000012.pt", "optim_000012_rank0.pt"])
def test_one_flipped_byte_is_named(tiny_run, tmp_path, name):
    base, ckpt = copy_run(tiny_run, tmp_path)
    data = bytearray((ckpt / name).read_bytes())
    data[len(data) // 2] ^= 0x01  # inside the tensor data: torch alone would load it without a word
    (ckpt / name).write_bytes(bytes(data))
    err = io.StringIO()
    with contextlib.redirect_stderr(err):
        code = run_entry(lambda argv: cm.load_checkpoint(str(ckpt), 12, load_optimizer=True))
    assert code == 2 and err.getvalue().count("\n") == 1, err.getvalue()
    assert str(ckpt / name) in err.getvalue() and "damaged" in err.getvalue()
    assert cm.load_checkpoint(str(ckpt), 8, load_optimizer=True)  # the other steps are fine


def test_meta_without_checksums_still_loads(tiny_run, tmp_path, monkeypatch):
    """Upstream nanochat's metas record no checksum and no run id."""
    base, ckpt = copy_run(tiny_run, tmp_path)
    meta = json.loads((ckpt / "meta_000012.json").read_text())
    del meta["sha256"], meta["run_id"]
    (ckpt / "meta_000012.json").write_text(json.dumps(meta))
    monkeypatch.setenv("NANOCHAT_BASE_DIR", str(base))
    model, _, loaded = cm.load_model("base", "cpu", step=12, verbose=False)
    assert loaded["step"] == 12 and model.config.n_layer == 2


def test_model_tag_that_leaves_the_base_dir_is_refused(tiny_run, tmp_path):
    base = tmp_path / "a" / "b" / "base"
    shutil.copytree(tiny_run / "tokenizer", base / "tokenizer")
    code, err = run_base_train(base, TINY_TRAIN_ARGS + ["--model-tag", "../../x"])
    assert code == 2 and err.count("\n") == 1 and "plain folder name" in err, err
    assert not [p for p in tmp_path.rglob("x")]  # nothing written where the tag pointed
    with pytest.raises(UserError, match="plain folder name"):
        cm.load_model("base", "cpu", model_tag="../../x", base_dir=str(base))
    with pytest.raises(UserError, match="cannot read the checkpoint name"):
        cm.parse_address("../../x")
