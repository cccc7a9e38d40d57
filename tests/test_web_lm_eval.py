"""lm-evaluation-harness against the server, offline: `lm_eval --model local-completions` scores a
local multiple-choice task (a task YAML over a JSONL file written here) through /v1/completions
(echo + logprobs) and the server's vLLM-style /tokenize. Its accuracy must equal the project's own
letter scoring (nanochat.task_eval.run_categorical_eval) of the same items on the same model, and
every per-choice log-likelihood must match a forward pass of the model within 1e-4.

The items are chat-format multiple-choice prompts (nanochat_tasks.common.mc_conversation), written out
with their special tokens as text: /tokenize reads special-token strings as the special tokens,
so the harness sends exactly the ids the letter scoring feeds the model."""

import glob
import json
import os
import subprocess
import sys

import pytest
import torch

from test_chat_web import serve

pytest.importorskip("lm_eval")

ITEMS = [("2+2=?", ["3", "4", "5", "6"], "B"), ("Sky color?", ["red", "blue", "green", "black"], "B"),
         ("Opposite of hot?", ["cold", "warm", "big", "wet"], "A"), ("1+1=?", ["2", "3", "4", "5"], "A"),
         ("Cats say?", ["moo", "woof", "meow", "oink"], "C"), ("3x3=?", ["6", "8", "9", "12"], "C"),
         ("Ice is?", ["hot", "dry", "loud", "cold"], "D"), ("Fish live in?", ["trees", "water", "sand", "air"], "B")]

TASK_YAML = """task: nanochat_letters
dataset_path: json
dataset_kwargs:
  data_files:
    test: {jsonl}
test_split: test
output_type: multiple_choice
doc_to_text: prompt
doc_to_choice: letters
doc_to_target: answer
target_delimiter: ""
metric_list:
  - metric: acc
"""


class LetterItems:
    """The items as a categorical chat task, the way task_eval reads tasks."""
    eval_type = "categorical"

    def __init__(self, conversations):
        self.conversations = conversations

    def __len__(self):
        return len(self.conversations)

    def __getitem__(self, i):
        return self.conversations[i]

    def evaluate(self, conversation, response):
        from nanochat_tasks.common import evaluate_mc
        return evaluate_mc(conversation, response)


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_lm_eval_local_completions_matches_our_letter_scoring(tiny_run, tmp_path):
    from conftest import base_dir_env
    from nanochat.checkpoint_manager import load_model
    from nanochat.task_eval import letter_token_ids, run_categorical_eval
    from nanochat_tasks.common import mc_conversation

    with base_dir_env(tiny_run):
        model, tok, _ = load_model("base", "cpu", verbose=False)
    conversations = [mc_conversation(q, "ABCD", choices, answer) for q, choices, answer in ITEMS]
    prompts = [tok.render_for_completion(c) for c in conversations]
    assert max(len(p) for p in prompts) < model.config.sequence_len - 1  # prompt + letter fit the context
    with open(tmp_path / "items.jsonl", "w") as f:
        for conv, ids, (_, _, answer) in zip(conversations, prompts, ITEMS):
            f.write(json.dumps({"prompt": tok.decode(ids), "letters": list("ABCD"), "answer": "ABCD".index(answer)}) + "\n")
    (tmp_path / "nanochat_letters.yaml").write_text(TASK_YAML.format(jsonl=tmp_path / "items.jsonl"))

    # ours: the letter logits of one forward pass
    ours = run_categorical_eval(LetterItems(conversations), tok, model)
    letters = letter_token_ids(tok, "ABCD")
    with torch.no_grad():
        expected_ll = [torch.log_softmax(model(torch.tensor([p]))[0, -1].float(), -1)[letters].tolist() for p in prompts]

    # lm-eval's, through the server, with no network but loopback
    env = dict(os.environ, HF_DATASETS_OFFLINE="1", HF_HUB_OFFLINE="1", HF_HOME=str(tmp_path / "hf"),
               OMP_NUM_THREADS="1", OPENAI_API_KEY="none")
    with serve(tiny_run, tmp_path / "server.log") as (url, _):
        args = [sys.executable, "-m", "lm_eval", "--model", "local-completions", "--model_args",
                f"base_url={url}/v1/completions,tokenizer_backend=remote,model=nanochat,num_concurrent=1,"
                f"max_retries=1,max_length={model.config.sequence_len}",
                "--tasks", "nanochat_letters", "--include_path", str(tmp_path), "--output_path",
                str(tmp_path / "out"), "--log_samples"]
        run = subprocess.run(args, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=500)
    assert run.returncode == 0, run.stdout[-2000:] + run.stderr[-4000:]
    results = json.load(open(glob.glob(str(tmp_path / "out" / "*" / "results_*.json"))[0]))
    samples = [json.loads(line) for line in open(glob.glob(str(tmp_path / "out" / "*" / "samples_*.jsonl"))[0])]
    samples.sort(key=lambda s: s["doc_id"])

    theirs_acc = results["results"]["nanochat_letters"]["acc,none"]
    print(f"\nlm_eval acc {theirs_acc:.4f}, ours {ours.accuracy:.4f} on {len(ITEMS)} items")
    assert theirs_acc == pytest.approx(ours.accuracy, abs=1e-9)
    worst = 0.0
    for sample, expected, item in zip(samples, expected_ll, ours.items):
        got = [float(ll) for ll, _ in sample["filtered_resps"]]
        worst = max(worst, max(abs(a - b) for a, b in zip(got, expected)))
        assert "ABCD"[max(range(4), key=got.__getitem__)] == item["response"]  # the same letter, item by item
    print(f"largest per-choice log-likelihood difference {worst:.2e}")
    assert worst < 1e-4
