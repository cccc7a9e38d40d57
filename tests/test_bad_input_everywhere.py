"""Bad input to every script and tool: one line on stderr starting with 'error:', a non-zero exit
code, no traceback, and nothing written (the base dir and the working folder are listed before and
after each case).

The cases, in three tables:
  FLAGS     every numeric flag of every script and tool, with text, NaN and infinity, and the zero,
            negative and huge values its range leaves out ('huge' is 1e15 or 1e300); to these the
            parsers themselves add --step and a value outside the choices of every flag with choices
  PATHS     missing, empty and non-UTF-8 files and folders, unknown tags and steps, values that only
            the loaded model or data can refuse (a head dim that does not split, a batch that does
            not divide, --max-tokens beyond the model's context, a resume with other model flags)
  METAS     checkpoint metas with a damaged value (n_layer -1, a list for model_config, ...), read
            by every command that loads a model; the inspecting tools report them instead
They run in-process through nanochat.common.run_entry (the same boundary as the command line);
a handful also run as real subprocesses. A numeric flag added to a script or tool without a row
in FLAGS, or without a type that checks its range, fails test_every_numeric_flag_of_every_command_has_a_row.
"""

import os
import sys
import json
import shutil
import argparse
import importlib
import subprocess
from unittest import mock

import pytest

from nanochat.common import repo_root, run_entry

# text, NaN and infinity are wrong for every number; each row adds the values its range leaves out
NOT_NUMBERS = ["abc", "nan", "inf"]
LRS = ["--embedding-lr", "--unembedding-lr", "--matrix-lr", "--scalar-lr", "--weight-decay"]
# the flags midtraining and SFT share (scripts/chat_finetune.py)
FINETUNE_FLAGS = [("--seed", ["-1", "1e15"]), ("--synthetic-size", ["0", "-1", "1e15"]),
                  ("--max-seq-len", ["0", "1", "-2", "1e15"]), ("--num-iterations", ["0", "-2", "1e15"]),
                  *[(lr, ["-1", "1e300"]) for lr in LRS], ("--init-lr-frac", ["0", "-1", "2"]),
                  ("--warmdown-ratio", ["-1", "2"]), ("--final-lr-frac", ["-1", "2"]), ("--eval-every", ["0", "-2"]),
                  ("--save-every", ["0", "-2"]), ("--resume-from-step", ["0", "-2"]), ("--compile", ["2"])]

FLAGS = [
    # module                      argv before the flag                        flag                    out of range
    ("scripts.tok_train",         [],                                         "--vocab-size",         ["0", "-1", "100", "1e15"]),
    ("scripts.tok_train",         [],                                         "--max-chars",          ["0", "-1"]),
    ("scripts.tok_train",         [],                                         "--doc-cap",            ["0", "-1", "2.5"]),
    ("scripts.tok_eval",          [],                                         "--corpus-chars",       ["-1"]),
    ("scripts.base_train",        [],                                         "--seed",               ["-1", "1e15"]),
    ("scripts.base_train",        [],                                         "--depth",              ["0", "-1", "1e15"]),
    ("scripts.base_train",        [],                                         "--aspect-ratio",       ["0", "-1", "1e15"]),
    ("scripts.base_train",        [],                                         "--head-dim",           ["0", "-1", "1e15"]),
    ("scripts.base_train",        [],                                         "--n-kv-head",          ["-1"]),
    ("scripts.base_train",        [],                                         "--max-seq-len",        ["0", "1", "-1", "1e15"]),
    ("scripts.base_train",        [],                                         "--num-iterations",     ["0", "-2", "1e15"]),
    ("scripts.base_train",        [],                                         "--target-flops",       ["0", "-2", "1e300"]),
    ("scripts.base_train",        [],                                         "--target-param-data-ratio", ["0", "-1", "1e300"]),
    ("scripts.base_train",        [],                                         "--device-batch-size",  ["0", "-1", "1e15"]),
    ("scripts.base_train",        [],                                         "--total-batch-size",   ["0", "-1", "1e15"]),
    *[("scripts.base_train",      [],                                         lr,                     ["-1", "1e300"]) for lr in LRS],
    ("scripts.base_train",        [],                                         "--warmup-ratio",       ["-1", "2"]),
    ("scripts.base_train",        [],                                         "--warmdown-ratio",     ["-1", "2"]),
    ("scripts.base_train",        [],                                         "--final-lr-frac",      ["-1", "2"]),
    ("scripts.base_train",        [],                                         "--compile",            ["2", "-2"]),
    ("scripts.base_train",        [],                                         "--eval-every",         ["0", "-2"]),
    ("scripts.base_train",        [],                                         "--eval-tokens",        ["0", "-1", "1e15"]),
    ("scripts.base_train",        [],                                         "--core-metric-every",  ["0", "-2"]),
    ("scripts.base_train",        [],                                         "--core-metric-max-per-task", ["0", "-2"]),
    ("scripts.base_train",        [],                                         "--sample-every",       ["0", "-2"]),
    ("scripts.base_train",        [],                                         "--save-every",         ["0", "-2"]),
    ("scripts.base_train",        [],                                         "--resume-from-step",   ["0", "-2"]),
    ("scripts.base_loss",         [],                                         "--device-batch-size",  ["0", "-1", "1e15"]),
    ("scripts.base_loss",         [],                                         "--split-tokens",       ["0", "-1", "1e15"]),
    ("scripts.base_loss",         [],                                         "--max-tokens",         ["-1", "1e15"]),
    ("scripts.base_eval",         [],                                         "--max-per-task",       ["0", "-2"]),
    ("scripts.base_eval",         [],                                         "--device-batch-size",  ["0", "-1", "1e15"]),
    ("scripts.base_eval",         [],                                         "--split-tokens",       ["0", "-1", "1e15"]),
    ("scripts.chat_cli",          ["-i", "base"],                             "-t",                   ["-1", "1e300", "1e-300"]),
    ("scripts.chat_cli",          ["-i", "base"],                             "-k",                   ["-1"]),
    ("scripts.chat_cli",          ["-i", "base"],                             "-m",                   ["0", "-1", "1e15"]),
    ("scripts.chat_cli",          ["-i", "base"],                             "--seed",               ["-1", "1e15"]),
    ("scripts.chat_eval",         ["-i", "base"],                             "-t",                   ["-1", "1e300", "1e-300"]),
    ("scripts.chat_eval",         ["-i", "base"],                             "-m",                   ["0", "-1", "1e15"]),
    ("scripts.chat_eval",         ["-i", "base"],                             "-n",                   ["0", "-1", "1e15"]),
    ("scripts.chat_eval",         ["-i", "base"],                             "-k",                   ["-1"]),
    ("scripts.chat_eval",         ["-i", "base"],                             "-b",                   ["0", "-1", "1e15"]),
    ("scripts.chat_eval",         ["-i", "base"],                             "-x",                   ["0", "-1"]),
    ("scripts.chat_web",          ["-i", "base"],                             "-n",                   ["0", "-1", "1e15"]),
    ("scripts.chat_web",          ["-i", "base"],                             "-t",                   ["-1", "5", "1e300"]),
    ("scripts.chat_web",          ["-i", "base"],                             "-k",                   ["-1", "1e15"]),
    ("scripts.chat_web",          ["-i", "base"],                             "-m",                   ["0", "-1", "1e15"]),
    ("scripts.chat_web",          ["-i", "base"],                             "-p",                   ["-1", "70000"]),
    ("scripts.chat_web",          ["-i", "base"],                             "--max-queue",          ["-1"]),
    *[(stage, ["-i", "base"], flag, extra) for stage in ("scripts.mid_train", "scripts.chat_sft")
      for flag, extra in FINETUNE_FLAGS],
    ("scripts.mid_train",         ["-i", "base"],                             "--device-batch-size",  ["0", "-1", "1e15"]),
    ("scripts.mid_train",         ["-i", "base"],                             "--total-batch-size",   ["0", "-1", "1e15"]),
    ("scripts.mid_train",         ["-i", "base"],                             "--eval-tokens",        ["0", "-1", "1e15"]),
    ("scripts.chat_sft",          ["-i", "base"],                             "--device-batch-size",  ["0", "-1", "1e15"]),
    ("scripts.chat_sft",          ["-i", "base"],                             "--target-examples-per-step", ["0", "-1", "1e15"]),
    ("scripts.chat_sft",          ["-i", "base"],                             "--eval-steps",         ["0", "-1", "1e15"]),
    ("scripts.chat_rl",           ["-i", "base"],                             "--seed",               ["-1", "1e15"]),
    ("scripts.chat_rl",           ["-i", "base"],                             "--train-size",         ["0", "-1", "1e15"]),
    ("scripts.chat_rl",           ["-i", "base"],                             "--num-samples",        ["0", "-1", "1e15"]),
    ("scripts.chat_rl",           ["-i", "base"],                             "--questions-per-step", ["0", "-1", "1e15"]),
    ("scripts.chat_rl",           ["-i", "base"],                             "--max-new-tokens",     ["0", "-1", "1e15"]),
    ("scripts.chat_rl",           ["-i", "base"],                             "--temperature",        ["-1", "1e300", "1e-300"]),
    ("scripts.chat_rl",           ["-i", "base"],                             "--top-k",              ["-1"]),
    ("scripts.chat_rl",           ["-i", "base"],                             "--device-batch-size",  ["-1", "1e15"]),
    ("scripts.chat_rl",           ["-i", "base"],                             "--num-steps",          ["0", "-2", "1e15"]),
    *[("scripts.chat_rl",         ["-i", "base"],                             lr,                     ["-1", "1e300"]) for lr in LRS],
    ("scripts.chat_rl",           ["-i", "base"],                             "--init-lr-frac",       ["0", "-1", "2"]),
    ("scripts.chat_rl",           ["-i", "base"],                             "--eval-every",         ["0", "-2"]),
    ("scripts.chat_rl",           ["-i", "base"],                             "--eval-examples",      ["-1", "1e15"]),
    ("scripts.chat_rl",           ["-i", "base"],                             "--eval-samples",       ["0", "-1", "1e15"]),
    ("scripts.chat_rl",           ["-i", "base"],                             "--eval-k",             ["0", "-1", "1e15"]),
    ("scripts.chat_rl",           ["-i", "base"],                             "--save-every",         ["0", "-2"]),
    ("scripts.chat_rl",           ["-i", "base"],                             "--resume-from-step",   ["0", "-2"]),
    ("tools.attention_visualizer", ["--text", "hi"],                          "--layer",              ["-1"]),
    ("tools.attention_visualizer", ["--text", "hi"],                          "--head",               ["-1"]),
    ("tools.attention_visualizer", ["--text", "hi"],                          "--top-k",              ["0", "-1", "1e15"]),
    ("tools.attention_visualizer", ["--text", "hi", "--across-checkpoints"], "--steps",              ["-1"]),
    ("tools.checkpoint_browser",  ["--compare", "d2", "d2:8", "--prompt", "hi"], "--max-tokens",      ["0", "-1", "1e15"]),
    ("tools.conversation_template_builder", ["--simple", "Hi", "Hello"],     "--max-seq-len",        ["0", "-1", "1e15"]),
    ("tools.dataset_inspector",   ["{conversations}"],                        "--samples",            ["-1", "1e15"]),
    ("tools.dataset_inspector",   ["{conversations}"],                        "--seed",               ["-1", "1e15"]),
    ("tools.dataset_inspector",   ["{conversations}"],                        "--max-seq-len",        ["0", "-1"]),
    ("tools.dataset_inspector",   ["{conversations}"],                        "--export-count",       ["0", "-1"]),
    ("tools.dataset_inspector",   ["{conversations}"],                        "--max-problems",       ["-1"]),
    ("tools.generation_explorer", ["--prompt", "hi"],                         "--compare-temp",       ["-1", "1e-300"]),
    ("tools.generation_explorer", ["--prompt", "hi"],                         "--compare-topk",       ["-1"]),
    ("tools.generation_explorer", ["--prompt", "hi"],                         "--temperature",        ["-1", "1e300", "1e-300"]),
    ("tools.generation_explorer", ["--prompt", "hi"],                         "--top-k",              ["-1"]),
    ("tools.generation_explorer", ["--prompt", "hi"],                         "--top-p",              ["-0.5", "2"]),
    ("tools.generation_explorer", ["--prompt", "hi"],                         "--min-p",              ["-1", "2"]),
    ("tools.generation_explorer", ["--prompt", "hi"],                         "--max-tokens",         ["0", "-1", "1e15"]),
    ("tools.generation_explorer", ["--prompt", "hi"],                         "--seed",               ["-1", "1e15"]),
    ("tools.generation_explorer", ["--prompt", "hi"],                         "--top-n",              ["0", "-1", "1e15"]),
    ("tools.generation_explorer", ["--prompt", "hi"],                         "--force-at",           ["-1"]),
    ("tools.lr_finder",           ["--range-test"],                           "--depth",              ["0", "-1", "1e15"]),
    ("tools.lr_finder",           ["--range-test"],                           "--max-seq-len",        ["0", "1", "1e15"]),
    ("tools.lr_finder",           ["--range-test"],                           "--head-dim",           ["0", "1e15"]),
    ("tools.lr_finder",           ["--range-test"],                           "--device-batch-size",  ["0", "1e15"]),
    ("tools.lr_finder",           ["--range-test"],                           "--num-steps",          ["0", "5", "1e15"]),
    ("tools.lr_finder",           ["--range-test"],                           "--start",              ["0", "-1", "1e300"]),
    ("tools.lr_finder",           ["--range-test"],                           "--end",                ["0", "-1", "1e300"]),
    ("tools.lr_finder",           ["--range-test"],                           "--seeds",              ["0", "1e15"]),
    ("tools.lr_finder",           ["--range-test"],                           "--diverge-factor",     ["0", "1", "1e300"]),
    *[("tools.lr_finder",         ["--range-test"],                           lr,                     ["-1", "1e300"])
      for lr in LRS if lr != "--weight-decay"],
    ("tools.model_calculator",    [],                                         "--depth",              ["0", "-1", "100000"]),
    ("tools.model_calculator",    ["--depth", "4"],                           "--hidden-dim",         ["0", "1e15"]),
    ("tools.model_calculator",    ["--depth", "4"],                           "--aspect-ratio",       ["0", "1e15"]),
    ("tools.model_calculator",    ["--depth", "4"],                           "--head-dim",           ["0", "1e15"]),
    ("tools.model_calculator",    ["--depth", "4"],                           "--n-kv-head",          ["0", "-1"]),
    ("tools.model_calculator",    ["--depth", "4"],                           "--vocab-size",         ["0", "1e15"]),
    ("tools.model_calculator",    ["--depth", "4"],                           "--seq-len",            ["0", "1e15"]),
    ("tools.model_calculator",    ["--depth", "4"],                           "--batch-size",         ["0", "1e15"]),
    ("tools.model_calculator",    ["--depth", "4"],                           "--total-batch-size",   ["0", "1e15"]),
    ("tools.model_calculator",    ["--depth", "4"],                           "--total-tokens",       ["0", "-1", "1e300"]),
    ("tools.model_calculator",    ["--depth", "4"],                           "--param-data-ratio",   ["0", "1e300"]),
    ("tools.model_calculator",    ["--depth", "4"],                           "--num-gpus",           ["0", "1e15"]),
    ("tools.model_calculator",    ["--depth", "4"],                           "--mfu",                ["0", "2"]),
    ("tools.model_calculator",    ["--depth", "4"],                           "--price-per-hour",     ["-1"]),
    ("tools.model_calculator",    ["--depth", "4"],                           "--gpu-memory",         ["0", "1e300"]),
    ("tools.model_calculator",    ["--depth", "4", "--measure"],              "--measure-steps",      ["0", "1e15"]),
    ("tools.tokenizer_playground", ["hi"],                                    "--max-bytes",          ["0", "-1", "1e15"]),
    ("tools.tokenizer_playground", ["hi"],                                    "--max-rows",           ["-1"]),
    ("tools.training_dashboard",  ["d2"],                                     "--interval",           ["0", "-1", "1e300"]),
    ("tools.training_dashboard",  ["d2"],                                     "--max-refreshes",      ["-1"]),
    ("tools.training_resume_helper", ["d2"],                                  "--target-steps",       ["0", "-1", "1e15"]),
    ("tools.training_resume_helper", ["d2", "--verify"],                      "--replay",             ["-1", "1e15"]),
    ("nanochat.dataset",          [],                                         "--num-shards",         ["0", "-1", "1e15"]),
    ("nanochat.dataset",          [],                                         "--workers",            ["0", "-1", "1e15"]),
    ("nanochat.dataset",          [],                                         "--max-attempts",       ["0", "-1", "1e15"]),
    ("nanochat.dataset",          [],                                         "--timeout",            ["0", "-1", "1e300"]),
]
MODULES = ["scripts.tok_train", "scripts.tok_eval", "scripts.base_train", "scripts.base_loss", "scripts.base_eval",
           "scripts.chat_cli", "scripts.chat_eval", "scripts.chat_web", "scripts.mid_train", "scripts.chat_sft",
           "scripts.chat_rl", "tools.attention_visualizer", "tools.checkpoint_browser",
           "tools.conversation_template_builder", "tools.dataset_inspector", "tools.generation_explorer",
           "tools.lr_finder", "tools.model_calculator", "tools.tokenizer_playground", "tools.training_dashboard",
           "tools.training_resume_helper", "nanochat.dataset", "nanochat.report"]


def parser_of(module_name):
    """The argument parser a module's parse_args (or main) builds, caught as it starts parsing."""
    class Caught(Exception):
        pass

    def catch(parser, *args, **kwargs):
        raise Caught(parser)
    with mock.patch.object(argparse.ArgumentParser, "parse_args", catch):
        try:
            module = importlib.import_module(module_name)
            getattr(module, "parse_args", module.main)([])
        except Caught as caught:
            return caught.args[0]
    raise AssertionError(f"{module_name}.parse_args never parsed")


def numeric_flags(parser):
    return [a for a in parser._actions if a.option_strings and a.type not in (None, str) and not a.choices]


PARSERS = {name: parser_of(name) for name in MODULES}
FLAG_CASES = [(module, before + [flag, value]) for module, before, flag, extra in FLAGS
              for value in NOT_NUMBERS + extra]
# the checkpoint address's --step of every command that has one, and a value outside the choices of every
# flag that has choices (--source, --sort, --compile, ...)
FLAG_CASES += [(name, [a.option_strings[0], value]) for name, parser in PARSERS.items() for a in parser._actions
               if "--step" in a.option_strings for value in NOT_NUMBERS + ["-1"]]
FLAG_CASES += [(name, [a.option_strings[0], "nope"]) for name, parser in PARSERS.items() for a in parser._actions
               if a.option_strings and a.choices]

PATHS = [
    # module                      argv
    ("scripts.tok_train",         ["--data-dir", "{missing}"]),
    ("scripts.tok_train",         ["--data-dir", "{empty}"]),
    ("scripts.tok_train",         ["--data-dir", "{latin1_dir}"]),
    ("scripts.tok_train",         ["--data-dir", "{latin1_txt}"]),                  # a file, not a folder
    ("scripts.tok_eval",          ["--data-dir", "{missing}"]),
    ("scripts.tok_eval",          ["--data-dir", "{latin1_dir}"]),
    ("scripts.base_train",        ["--data-dir", "{missing}", "--model-tag", "new"]),
    ("scripts.base_train",        ["--data-dir", "{latin1_dir}", "--model-tag", "new"]),
    ("scripts.base_train",        ["--head-dim", "7", "--model-tag", "new"]),
    ("scripts.base_train",        ["--window-pattern", "XYZ", "--model-tag", "new"]),
    ("scripts.base_train",        ["--depth", "2", "--head-dim", "64", "--n-kv-head", "3", "--model-tag", "new"]),
    ("scripts.base_train",        ["--depth", "2", "--max-seq-len", "64", "--device-batch-size", "4",
                                   "--total-batch-size", "1000", "--model-tag", "new"]),
    ("scripts.base_train",        ["--model-tag", "../../x", "--depth", "2", "--head-dim", "64"]),
    ("scripts.base_train",        ["--model-tag", "d2", "--depth", "2"]),          # another run's folder
    ("scripts.base_train",        ["--model-tag", "d2", "--depth", "2", "--resume-from-step", "7"]),
    ("scripts.base_train",        ["--model-tag", "d2", "--depth", "3", "--head-dim", "64", "--max-seq-len", "64",
                                   "--window-pattern", "L", "--resume-from-step", "12"]),   # not the run's flags
    ("scripts.base_train",        ["--device-type", "quantum"]),
    ("scripts.base_loss",         ["--model-tag", "d99"]),
    ("scripts.base_loss",         ["--step", "7"]),
    ("scripts.base_loss",         ["--source", "mid"]),
    ("scripts.base_loss",         ["--base-dir", "{missing}"]),
    ("scripts.base_loss",         ["--data-dir", "{missing}"]),
    ("scripts.base_eval",         ["--eval", "vibes"]),
    ("scripts.base_eval",         ["--eval", "core", "--bundle-dir", "{missing}"]),
    ("scripts.base_eval",         ["--eval", "core", "--bundle-dir", "{empty}"]),
    ("scripts.chat_cli",          ["-i", "base", "-g", "d99", "-p", "hi"]),
    ("scripts.chat_cli",          ["-i", "base", "-s", "7", "-p", "hi"]),
    ("scripts.chat_cli",          ["-p", "hi"]),                                   # no sft checkpoint yet
    ("scripts.chat_eval",         ["-i", "base", "-a", "Nope"]),
    ("scripts.chat_eval",         ["-i", "base", "-g", "d99", "-a", "Arithmetic"]),
    ("scripts.chat_web",          ["-i", "base", "-g", "d99"]),
    ("scripts.chat_web",          ["-i", "base", "--log-level", "loud"]),
    ("scripts.mid_train",         ["-i", "base", "--custom-json", "{missing}", "--offline"]),
    ("scripts.mid_train",         ["-i", "base", "--custom-json", "{latin1_jsonl}", "--offline"]),
    ("scripts.mid_train",         ["-i", "base", "--custom-json", "{empty}", "--offline"]),
    ("scripts.mid_train",         ["-i", "base", "--output-tag", "../x", "--offline"]),
    ("scripts.chat_sft",          ["-i", "base", "--custom-json", "{latin1_jsonl}", "--offline"]),
    ("scripts.chat_sft",          ["-i", "base", "-g", "d99", "--offline"]),
    ("scripts.chat_rl",           ["-i", "base", "--task", "Nope", "--offline"]),
    ("scripts.chat_rl",           ["-i", "base", "--output-tag", "../x", "--offline"]),
    ("tools.generation_explorer", ["--prompt", "hi", "--max-tokens", "100000"]),
    ("tools.generation_explorer", ["--prompt", "hi", "--max-tokens", "64"]),       # the prompt takes room too
    ("tools.tokenizer_playground", ["--file", "{empty_txt}"]),
    ("tools.tokenizer_playground", ["--file", "{latin1_txt}"]),
    ("tools.tokenizer_playground", ["--chat", "{latin1_jsonl}"]),
    ("tools.dataset_inspector",   ["{empty_txt}"]),
    ("tools.conversation_template_builder", ["--batch-validate", "{empty_txt}"]),
    ("tools.model_calculator",    ["--depth", "4", "--window-pattern", "XYZ"]),
    ("tools.model_calculator",    ["--depth", "4", "--head-dim", "7"]),
    ("tools.model_calculator",    ["--depth", "4", "--n-kv-head", "3"]),
    ("tools.lr_finder",           ["--range-test", "--head-dim", "7"]),
    ("tools.lr_finder",           ["--range-test", "--start", "10", "--end", "1"]),
    ("tools.lr_finder",           ["--range-test", "--data-dir", "{latin1_dir}"]),
    ("tools.checkpoint_browser",  ["--inspect", "../../x"]),
    ("tools.checkpoint_browser",  ["--delete", "..", "--yes"]),
    ("tools.training_resume_helper", ["d2", "--command", "--target-steps", "4"]),   # target before the checkpoint
    ("tools.attention_visualizer", ["--text", "hi", "--head", "99"]),
    ("nanochat.report",           ["publish"]),
    ("nanochat.report",           []),
    ("nanochat.dataset",          ["--data-dir", "{latin1_txt}"]),                # a file, not a folder
]

# damaged meta values, one model tag each in the "metas" base dir: (tag, change to meta_000012.json)
METAS = [
    ("n_layer_negative", lambda m: m["model_config"].update(n_layer=-1)),
    ("n_layer_text",     lambda m: m["model_config"].update(n_layer="2")),
    ("n_layer_float",    lambda m: m["model_config"].update(n_layer=2.5)),
    ("n_head_zero",      lambda m: m["model_config"].update(n_head=0)),
    ("n_kv_head_3",      lambda m: m["model_config"].update(n_kv_head=3)),
    ("vocab_zero",       lambda m: m["model_config"].update(vocab_size=0)),
    ("vocab_null",       lambda m: m["model_config"].update(vocab_size=None)),
    ("seq_len_huge",     lambda m: m["model_config"].update(sequence_len=10**15)),
    ("n_embd_huge",      lambda m: m["model_config"].update(n_embd=10**15)),
    ("window_number",    lambda m: m["model_config"].update(window_pattern=5)),
    ("window_xyz",       lambda m: m["model_config"].update(window_pattern="XYZ")),
    ("smear_text",       lambda m: m["model_config"].update(smear="yes")),
    ("config_list",      lambda m: m.update(model_config=[2, 128])),
    ("config_text",      lambda m: m.update(model_config="d2")),
    ("config_missing",   lambda m: m.pop("model_config")),
    ("meta_list",        "[1, 2, 3]"),
    ("meta_truncated",   '{"step": 12, "model_config": {'),
    ("meta_latin1",      b'{"step": 12, "note": "caf\xe9"}'),
]
META_COMMANDS = [
    ("scripts.base_loss",         ["-g", "{tag}"]),
    ("scripts.base_eval",         ["-g", "{tag}", "--eval", "sample"]),
    ("scripts.chat_cli",          ["-i", "base", "-g", "{tag}", "-p", "hi"]),
    ("scripts.chat_eval",         ["-i", "base", "-g", "{tag}", "-a", "Arithmetic"]),
    ("scripts.mid_train",         ["-i", "base", "-g", "{tag}", "--offline", "--output-tag", "out"]),
    ("scripts.chat_rl",           ["-i", "base", "-g", "{tag}", "--offline", "--output-tag", "out"]),
    ("scripts.chat_web",          ["-i", "base", "-g", "{tag}", "-p", "0"]),
    ("tools.generation_explorer", ["--model-tag", "{tag}", "--prompt", "hi"]),
    ("tools.attention_visualizer", ["--model-tag", "{tag}", "--text", "hi"]),
    ("tools.checkpoint_browser",  ["--compare", "d2", "{tag}", "--prompt", "hi"]),
]
META_CASES = [(module, [a.replace("{tag}", tag) for a in argv]) for tag, _ in METAS for module, argv in META_COMMANDS]
# the commands that look at a damaged checkpoint on purpose report what is wrong instead (exit 0 or 1)
META_REPORTS = [
    ("tools.checkpoint_browser",  ["--inspect", "{tag}"]),
    ("tools.checkpoint_browser",  ["--compare", "d2", "{tag}"]),
    ("tools.training_resume_helper", ["{tag}", "--verify"]),
    ("tools.training_dashboard",  ["{tag}"]),
    ("tools.lr_finder",           ["{tag}"]),
]
META_REPORT_CASES = [(module, [a.replace("{tag}", tag) for a in argv]) for tag, _ in METAS
                     for module, argv in META_REPORTS]


@pytest.fixture(scope="module")
def inputs(tiny_run, tmp_path_factory):
    """Base dirs (copies of the tiny run: "good", and "metas" with one damaged tag per row of METAS)
    and the bad files the cases name."""
    root = tmp_path_factory.mktemp("bad_input_everywhere")
    good = root / "good"
    shutil.copytree(tiny_run, good)
    metas = root / "metas"
    shutil.copytree(tiny_run, metas)
    d2 = metas / "base_checkpoints" / "d2"
    for tag, change in METAS:
        folder = d2.parent / tag
        folder.mkdir()
        for name in ("model_000012.pt", "optim_000012_rank0.pt"):
            shutil.copy(d2 / name, folder / name)
        meta_file = folder / "meta_000012.json"
        if callable(change):
            meta = json.loads((d2 / "meta_000012.json").read_text(encoding="utf-8"))
            change(meta)
            meta_file.write_text(json.dumps(meta), encoding="utf-8")
        elif isinstance(change, bytes):
            meta_file.write_bytes(change)
        else:
            meta_file.write_text(change, encoding="utf-8")
    files = root / "files"
    (files / "empty").mkdir(parents=True)
    (files / "latin1").mkdir()
    (files / "latin1" / "shard.txt").write_bytes("na\xefve caf\xe9 d\xe9j\xe0 vu\n".encode("latin-1") * 200)
    (files / "latin1.jsonl").write_bytes('[{"role": "user", "content": "caf\xe9"}]\n'.encode("latin-1") * 3)
    (files / "empty.txt").write_bytes(b"")
    (files / "conversations.jsonl").write_text(json.dumps([{"role": "user", "content": "Hi"},
                                                           {"role": "assistant", "content": "Hello"}]) + "\n")
    paths = {"good": good, "metas": metas, "missing": files / "does" / "not" / "exist", "empty": files / "empty",
             "latin1_dir": files / "latin1", "latin1_txt": files / "latin1" / "shard.txt",
             "latin1_jsonl": files / "latin1.jsonl", "empty_txt": files / "empty.txt",
             "conversations": files / "conversations.jsonl"}
    return {k: str(v) for k, v in paths.items()}


def test_every_numeric_flag_of_every_command_has_a_row():
    """A flag added without a row in FLAGS (and so without a checked type) fails here."""
    rows = {(module, flag) for module, _, flag, _ in FLAGS}
    missing = [f"{name} {a.option_strings[-1]}" for name, parser in PARSERS.items() for a in numeric_flags(parser)
               if "--step" not in a.option_strings and not any((name, o) in rows for o in a.option_strings)]
    assert not missing, "add these to FLAGS: " + ", ".join(missing)
    untyped = [f"{name} {a.option_strings[-1]}" for name, parser in PARSERS.items() for a in numeric_flags(parser)
               if a.type in (int, float) and "--step" not in a.option_strings and not a.choices]
    assert not untyped, "give these a type with a range (nanochat.common.int_range, ...): " + ", ".join(untyped)


def listing(folder):
    """Every file and folder under `folder` with its size and modification time."""
    out = {}
    for root, dirs, files in os.walk(folder):
        for name in dirs + files:
            path = os.path.join(root, name)
            st = os.stat(path)
            out[os.path.relpath(path, folder)] = (st.st_size if name in files else None, st.st_mtime_ns)
    return out


def run_in_process(module_name, argv, base, inputs, monkeypatch, capsys, tmp_path):
    """Run one case with NANOCHAT_BASE_DIR=base from an empty working folder; check the answer and
    that neither folder changed. Returns the error line."""
    argv = [a.format(**inputs) for a in argv]
    monkeypatch.setenv("NANOCHAT_BASE_DIR", base)
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "stdin", open(os.devnull))
    module = importlib.import_module(module_name)
    before = listing(base)
    capsys.readouterr()
    code = run_entry(module.main, argv)
    out, err = capsys.readouterr()
    assert code != 0, f"exit code 0 for {module_name} {argv}:\n{out[-2000:]}"
    assert "Traceback" not in out + err, err
    assert err.startswith("error: ") and err.count("\n") == 1, f"{module_name} {argv}: {err!r}"
    assert listing(base) == before, f"{module_name} {argv} changed the base dir"
    assert os.listdir(tmp_path) == [], f"{module_name} {argv} wrote {os.listdir(tmp_path)}"
    return err


def case_id(module, argv):
    return (module.split(".")[1] + " " + " ".join(argv)).replace("{", "").replace("}", "")


@pytest.mark.timeout(120)
@pytest.mark.parametrize("module, argv", FLAG_CASES, ids=[case_id(m, a) for m, a in FLAG_CASES])
def test_flag_out_of_range_is_one_line_before_anything_runs(module, argv, inputs, monkeypatch, capsys, tmp_path):
    run_in_process(module, argv, inputs["good"], inputs, monkeypatch, capsys, tmp_path)


@pytest.mark.timeout(120)
@pytest.mark.parametrize("module, argv", PATHS, ids=[case_id(m, a) for m, a in PATHS])
def test_bad_path_or_value_is_one_line_and_writes_nothing(module, argv, inputs, monkeypatch, capsys, tmp_path):
    run_in_process(module, argv, inputs["good"], inputs, monkeypatch, capsys, tmp_path)


@pytest.mark.timeout(120)
@pytest.mark.parametrize("module, argv", META_CASES, ids=[case_id(m, a) for m, a in META_CASES])
def test_damaged_meta_value_is_one_line_naming_it(module, argv, inputs, monkeypatch, capsys, tmp_path):
    run_in_process(module, argv, inputs["metas"], inputs, monkeypatch, capsys, tmp_path)


@pytest.mark.timeout(120)
@pytest.mark.parametrize("module, argv", META_REPORT_CASES, ids=[case_id(m, a) for m, a in META_REPORT_CASES])
def test_damaged_meta_value_is_reported_by_the_inspecting_tools(module, argv, inputs, monkeypatch, capsys, tmp_path):
    monkeypatch.setenv("NANOCHAT_BASE_DIR", inputs["metas"])
    monkeypatch.chdir(tmp_path)
    module = importlib.import_module(module)
    before = listing(inputs["metas"])
    code = run_entry(module.main, argv)
    out, err = capsys.readouterr()
    assert "Traceback" not in out + err, err
    assert code in (0, 1) or (code == 2 and err.startswith("error: ") and err.count("\n") == 1), (code, err)
    assert listing(inputs["metas"]) == before and os.listdir(tmp_path) == []


def test_one_damaged_meta_does_not_hide_the_other_checkpoints(inputs, monkeypatch, capsys):
    from tools import checkpoint_browser
    monkeypatch.setenv("NANOCHAT_BASE_DIR", inputs["metas"])
    assert run_entry(checkpoint_browser.main, ["--list", "--json"]) == 0
    listed = {row["tag"]: row for row in json.loads(capsys.readouterr().out)}
    assert set(listed) == {"d2"} | {tag for tag, _ in METAS}
    assert all(listed[tag]["meta_error"] for tag, _ in METAS), [t for t, _ in METAS if not listed[t]["meta_error"]]
    assert listed["d2"]["meta_error"] is None and listed["d2"]["n_layer"] == 2
    for sort in ("modified", "val_bpb", "size_mb", "num_params", "step"):
        assert run_entry(checkpoint_browser.main, ["--list", "--sort", sort]) == 0
        out = capsys.readouterr().out
        assert "d2" in out and "n_layer_negative" in out and "corrupt meta" in out


SUBPROCESS_CASES = [
    ("scripts.base_train",        ["--total-batch-size", "0"]),
    ("scripts.tok_train",         ["--max-chars", "nan"]),
    ("scripts.chat_eval",         ["-i", "base", "-x", "0"]),
    ("scripts.base_loss",         ["-g", "config_list"]),
    ("tools.model_calculator",    ["--depth", "100000"]),
    ("tools.generation_explorer", ["--model-tag", "n_layer_negative", "--prompt", "hi"]),
]


@pytest.mark.slow
@pytest.mark.parametrize("module, argv", SUBPROCESS_CASES, ids=[case_id(m, a) for m, a in SUBPROCESS_CASES])
def test_bad_input_from_the_real_command_line(module, argv, inputs, tmp_path):
    env = dict(os.environ, NANOCHAT_BASE_DIR=inputs["metas"], PYTHONPATH=repo_root())
    before = listing(inputs["metas"])
    r = subprocess.run([sys.executable, "-m", module] + argv, cwd=tmp_path, env=env, capture_output=True,
                       text=True, timeout=300, stdin=subprocess.DEVNULL)
    assert r.returncode == 2, (r.stdout[-2000:], r.stderr)
    assert r.stderr.startswith("error: ") and r.stderr.count("\n") == 1, r.stderr
    assert listing(inputs["metas"]) == before and os.listdir(tmp_path) == []
