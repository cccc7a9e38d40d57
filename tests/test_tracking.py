"""Experiment tracking (--logger, nanochat/tracking.py): tiny runs log what metrics.jsonl holds, plus
the evaluation before the first step, to TensorBoard, wandb (offline) and trackio (local), each read
back with the tracker's own reader; a resumed run continues TensorBoard's curves without doubles; a
tracker that is not installed is one line; upstream's --run NAME habit means wandb."""

import os
import sys
import json
import glob
import shutil
import struct
import argparse
import subprocess

import pytest

from conftest import base_dir_env
from nanochat import checkpoint_manager as cm
from nanochat import tracking
from nanochat.common import UserError

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MODEL = ["--depth", "2", "--max-seq-len", "64", "--device-batch-size", "4", "--total-batch-size", "512",
         "--window-pattern", "L", "--head-dim", "64", "--eval-tokens", "1024", "--core-metric-every", "-1"]
ARGS = MODEL + ["--num-iterations", "4", "--eval-every", "2", "--sample-every", "4", "--save-every", "-1"]


def fresh_base(tmp_path, tiny_run):
    """A new base dir holding only the shared tiny tokenizer."""
    base = tmp_path / "base"
    shutil.copytree(tiny_run / "tokenizer", base / "tokenizer")
    return base


def run_stage(base, module, args, **env):
    """python -m scripts.<module> in a subprocess (trackers patch stdout and keep background workers)."""
    env = dict(os.environ, NANOCHAT_BASE_DIR=str(base), OMP_NUM_THREADS="1", **env)
    r = subprocess.run([sys.executable, "-m", f"scripts.{module}", *args], cwd=REPO, env=env,
                       capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-3000:]
    return r


def tensorboard_events(log_dir):
    from tensorboard.backend.event_processing import event_accumulator as ea
    acc = ea.EventAccumulator(str(log_dir), size_guidance={ea.SCALARS: 0, ea.TENSORS: 0})
    acc.Reload()
    return acc


def scalar_steps(acc, tag):
    return {e.step: e.value for e in acc.Scalars(tag)}


# -----------------------------------------------------------------------------
# TensorBoard

def test_tensorboard_events_hold_the_metrics_at_their_steps_and_the_step_0_val(tmp_path, tiny_run):
    from scripts import base_train
    base = fresh_base(tmp_path, tiny_run)
    with base_dir_env(base):
        base_train.main(ARGS + ["--logger", "tensorboard"])
    ckpt = base / "base_checkpoints" / "d2"
    records = cm.read_metrics(str(ckpt))
    assert [r["step"] for r in records] == [1, 2, 3, 4]  # metrics.jsonl keeps counting steps done from 1
    acc = tensorboard_events(ckpt / "tensorboard")
    losses = scalar_steps(acc, "train_loss")
    assert list(losses) == [1, 2, 3, 4]
    assert all(losses[r["step"]] == pytest.approx(r["train_loss"], rel=1e-6) for r in records)  # float32 in events
    val = scalar_steps(acc, "val_bpb")
    assert list(val) == [0, 2, 4]  # step 0: before any training
    assert val[0] > val[4]
    assert all(val[r["step"]] == pytest.approx(r["val_bpb"], rel=1e-6) for r in records if "val_bpb" in r)
    lr_tags = [t for t in acc.Tags()["scalars"] if t.startswith("lrs/")]
    assert lr_tags and all(list(scalar_steps(acc, t)) == [1, 2, 3, 4] for t in lr_tags)
    assert "step" not in acc.Tags()["scalars"] and "wall" not in acc.Tags()["scalars"]
    # the greedy samples as text, at the step they were written
    (samples,) = acc.Tensors("samples/text_summary")
    assert samples.step == 4
    assert len(samples.tensor_proto.string_val[0].decode().splitlines()) >= 2
    (config,) = acc.Tensors("config/text_summary")
    assert "| depth | 2 |" in config.tensor_proto.string_val[0].decode()


def test_a_resumed_run_continues_tensorboard_curves_without_doubles(tmp_path, tiny_run):
    from scripts import base_train
    base = fresh_base(tmp_path, tiny_run)
    args = MODEL + ["--num-iterations", "6", "--eval-every", "3", "--sample-every", "-1", "--save-every", "3",
                    "--logger", "tensorboard"]
    with base_dir_env(base):
        base_train.main(args)
        ckpt = base / "base_checkpoints" / "d2"
        first = scalar_steps(tensorboard_events(ckpt / "tensorboard"), "train_loss")
        # killed after step 6 was logged but before its checkpoint: continue from step 3
        for name in ("model_000006.pt", "meta_000006.json", "optim_000006_rank0.pt"):
            os.remove(ckpt / name)
        base_train.main(args + ["--resume-from-step", "3"])
    acc = tensorboard_events(ckpt / "tensorboard")
    assert [e.step for e in acc.Scalars("train_loss")] == [1, 2, 3, 4, 5, 6]  # each step once
    assert scalar_steps(acc, "train_loss") == first  # the resume is exact
    assert len(glob.glob(str(ckpt / "tensorboard" / "events.out.tfevents.*"))) == 2


@pytest.mark.slow
def test_sft_and_rl_log_to_tensorboard(tmp_path, tiny_run):
    from scripts import chat_sft, chat_rl
    base = tmp_path / "base"
    shutil.copytree(tiny_run, base)
    shutil.copytree(base / "base_checkpoints", base / "mid_checkpoints")
    with base_dir_env(base):
        chat_sft.main(["--offline", "--synthetic-size", "24", "--device-batch-size", "2",
                       "--target-examples-per-step", "4", "--max-seq-len", "128", "--num-iterations", "2",
                       "--eval-every", "2", "--eval-steps", "2", "--logger", "tensorboard"])
        chat_rl.main(["--offline", "--device-type", "cpu", "--num-steps", "2", "--num-samples", "3",
                      "--questions-per-step", "2", "--max-new-tokens", "6", "--eval-examples", "2",
                      "--eval-every", "-1", "--train-size", "20", "--logger", "tensorboard"])
    sft = tensorboard_events(base / "chatsft_checkpoints" / "d2" / "tensorboard")
    assert list(scalar_steps(sft, "train_loss")) == [1, 2] and list(scalar_steps(sft, "val_bpb")) == [0, 2]
    ckpt = base / "chatrl_checkpoints" / "d2"
    rl = tensorboard_events(ckpt / "tensorboard")
    rewards = scalar_steps(rl, "reward_mean")
    assert rewards == {r["step"]: pytest.approx(r["reward_mean"]) for r in cm.read_metrics(str(ckpt))}
    assert list(scalar_steps(rl, "heldout_reward")) == [0, 2]  # before RL, and after its last step


# -----------------------------------------------------------------------------
# wandb, offline

def wandb_records(path):
    """The protobuf records of a .wandb file: a 7-byte header (':W&B', magic, version), then
    LevelDB's log format: 32 KiB blocks of chunks, each crc32c (4 bytes), length (2), type (1:
    whole record, 2/3/4: first/middle/last piece of one)."""
    from wandb.proto import wandb_internal_pb2
    data = open(path, "rb").read()
    assert data[:4] == b":W&B"
    pos, pending = 7, b""
    while pos + 7 <= len(data):
        if 32768 - pos % 32768 < 7:  # a block's tail too short for a chunk header is padding
            pos += 32768 - pos % 32768
            continue
        _, length, kind = struct.unpack("<IHB", data[pos:pos + 7])
        if kind == 0:
            break
        pending += data[pos + 7:pos + 7 + length]
        pos += 7 + length
        if kind in (1, 4):
            record = wandb_internal_pb2.Record()
            record.ParseFromString(pending)
            pending = b""
            yield record


@pytest.mark.slow
def test_run_name_with_wandb_installed_logs_an_offline_wandb_run(tmp_path, tiny_run):
    pytest.importorskip("wandb")
    base = fresh_base(tmp_path, tiny_run)
    # no --logger: upstream's habit, --run NAME, means wandb when it is installed
    run_stage(base, "base_train", ARGS + ["--run", "tiny-wandb"], WANDB_MODE="offline",
              WANDB_DIR=str(tmp_path / "wandb_dir"))
    (run_file,) = glob.glob(str(tmp_path / "wandb_dir" / "wandb" / "offline-run-*" / "run-*.wandb"))
    history, run = {}, None
    for record in wandb_records(run_file):
        kind = record.WhichOneof("record_type")
        if kind == "run":
            run = record.run
        elif kind == "history":
            row = {"/".join(item.nested_key) or item.key: json.loads(item.value_json) for item in record.history.item}
            history[row["_step"]] = row
    assert run.project == "nanochat" and run.display_name == "tiny-wandb"
    config = {item.key: json.loads(item.value_json) for item in run.config.update}
    assert config["depth"] == 2 and config["run"] == "tiny-wandb"
    records = cm.read_metrics(str(base / "base_checkpoints" / "d2"))
    assert sorted(history) == [0, 1, 2, 3, 4]
    assert "train_loss" not in history[0] and history[0]["val_bpb"] > 0
    for r in records:
        assert history[r["step"]]["train_loss"] == pytest.approx(r["train_loss"])
        assert ("val_bpb" in history[r["step"]]) == ("val_bpb" in r)
    assert history[4]["samples/_type"] == "html-file"  # the samples, as text


# -----------------------------------------------------------------------------
# trackio, local

@pytest.mark.slow
def test_trackio_writes_a_local_project_that_trackio_reads_back(tmp_path, tiny_run):
    pytest.importorskip("trackio")
    base = fresh_base(tmp_path, tiny_run)
    store = tmp_path / "trackio"
    run_stage(base, "base_train", ARGS + ["--logger", "trackio", "--run", "tiny-trackio"], TRACKIO_DIR=str(store))
    read = ("import json; from trackio.sqlite_storage import SQLiteStorage as S; "
            "print(json.dumps([S.get_runs('nanochat'), S.get_logs('nanochat', 'tiny-trackio'), "
            "S.get_run_config('nanochat', 'tiny-trackio')]))")
    r = subprocess.run([sys.executable, "-c", read], env=dict(os.environ, TRACKIO_DIR=str(store)),
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    runs, logs, config = json.loads(r.stdout.strip().splitlines()[-1])
    assert runs == ["tiny-trackio"] and config["depth"] == 2
    losses = {row["step"]: row["train_loss"] for row in logs if "train_loss" in row}
    records = cm.read_metrics(str(base / "base_checkpoints" / "d2"))
    assert losses == {r["step"]: pytest.approx(r["train_loss"]) for r in records}
    assert [row["step"] for row in logs if "val_bpb" in row] == [0, 2, 4]
    assert all("__time" not in row for row in logs)  # no name trackio had to rename
    (samples,) = [row["samples"] for row in logs if "samples" in row]
    assert samples["_type"] == "trackio.markdown" and samples["_value"].startswith("```")


# -----------------------------------------------------------------------------
# choosing a tracker

def flags(**over):
    return argparse.Namespace(**{"logger": None, "run": "dummy", **over})


def test_a_missing_tracker_is_a_one_line_error_naming_what_to_install(monkeypatch, tmp_path):
    monkeypatch.setattr(tracking, "_installed", lambda package: False)
    for name in ("wandb", "trackio", "tensorboard"):
        with pytest.raises(UserError, match=f"--logger {name} needs the {name} package: pip install {name}") as e:
            tracking.make_logger(flags(logger=name), "base", {}, str(tmp_path))
        assert "\n" not in str(e.value)


def test_run_name_means_wandb_only_when_installed_and_says_so_otherwise(monkeypatch, capsys):
    monkeypatch.setattr(tracking, "_installed", lambda package: True)
    assert tracking.choose_logger(flags(run="speedrun")) == "wandb"
    assert tracking.choose_logger(flags()) == "none"  # "dummy", upstream's default: no tracker
    assert tracking.choose_logger(flags(run="speedrun", logger="none")) == "none"
    assert tracking.choose_logger(flags(run="speedrun", logger="tensorboard")) == "tensorboard"
    assert capsys.readouterr().out == ""
    monkeypatch.setattr(tracking, "_installed", lambda package: False)
    assert tracking.choose_logger(flags(run="speedrun")) == "none"
    out = capsys.readouterr().out
    assert out.count("\n") == 1 and "'speedrun' is only recorded" in out and "pip install wandb" in out


def test_no_tracker_and_other_ranks_get_a_logger_that_does_nothing(monkeypatch, tmp_path):
    assert type(tracking.make_logger(flags(), "base", {}, str(tmp_path))) is tracking.Logger
    monkeypatch.setenv("RANK", "1")
    monkeypatch.setenv("LOCAL_RANK", "1")
    monkeypatch.setenv("WORLD_SIZE", "2")
    logger = tracking.make_logger(flags(logger="tensorboard"), "base", {}, str(tmp_path))
    assert type(logger) is tracking.Logger
    logger.log({"train_loss": 1.0}, 1)
    logger.finish()
    assert os.listdir(tmp_path) == []


def test_scalars_flattens_a_record_and_leaves_out_step_and_wall_clock():
    record = {"step": 3, "train_loss": 2.5, "lrs": {"matrix": 0.02, "embedding": 0.3}, "mfu": None, "wall": 1.7e9,
              "questions": 4, "time": 12.5}
    assert tracking.scalars(record) == {"train_loss": 2.5, "lrs/matrix": 0.02, "lrs/embedding": 0.3, "questions": 4,
                                        "training_time": 12.5}


@pytest.mark.slow
def test_wandb_without_a_login_is_a_one_line_error_naming_offline_mode(tmp_path, tiny_run):
    pytest.importorskip("wandb")
    base = fresh_base(tmp_path, tiny_run)
    env = {k: v for k, v in os.environ.items() if not k.startswith("WANDB_")}
    env.update(NANOCHAT_BASE_DIR=str(base), OMP_NUM_THREADS="1", HOME=str(tmp_path), WANDB_MODE="online",
               WANDB_CONFIG_DIR=str(tmp_path / "wandb_config"), WANDB_DIR=str(tmp_path / "wandb_dir"))
    r = subprocess.run([sys.executable, "-m", "scripts.base_train", *ARGS, "--logger", "wandb"], cwd=REPO, env=env,
                       stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=600)
    assert r.returncode == 2, r.stderr[-3000:]
    assert "Traceback" not in r.stderr and r.stderr.strip().count("\n") == 0
    assert "wandb could not start a run" in r.stderr and "WANDB_MODE=offline" in r.stderr
