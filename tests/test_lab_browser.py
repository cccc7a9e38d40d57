"""The lab's pages in headless Chromium (Playwright), on conftest's tiny trained run: what each
view shows is read back from the page and compared with the backend functions' own output,
computed here. Chromium and Playwright as in test_chat_web_browser.py (skipped on a developer
machine without them, a failure in CI).

Screenshots of every view, desktop and phone size, go to the test's temporary folder. The two
that README and guide 08 show are made here too: with NANOCHAT_UPDATE_DOC_IMAGES=1 the test writes
them into docs/images/lab/ (a plain test run leaves the repository as it was):

    NANOCHAT_UPDATE_DOC_IMAGES=1 python -m pytest tests/test_lab_browser.py
"""

import os
import shutil
import signal
import subprocess
import sys
import time

import pytest
import torch

from test_chat_web_browser import CHROMIUM, CHROMIUM_ARGS, browser_ready  # noqa: F401 (a fixture)
from test_lab import REPO, serve_lab

PROMPT = "a b c d a b c d"
DOC_IMAGES = os.path.join(REPO, "docs", "images", "lab")
VIEWS = ("tokens", "training", "forward", "generation", "checkpoints")
SHOWN_IN_DOCS = {"forward": "lab-forward.png", "training": "lab-training.png"}


@pytest.fixture(scope="module")
def lab_base(tiny_run, tmp_path_factory):
    """A copy of the tiny run (the live-training test adds a run to it)."""
    base = tmp_path_factory.mktemp("lab_browser") / "base"
    shutil.copytree(tiny_run, base)
    return base


@pytest.fixture(scope="module")
def lab_url(lab_base, tmp_path_factory):
    log = tmp_path_factory.mktemp("lab_browser_log") / "lab.log"
    with serve_lab(lab_base, log) as url:
        yield url
    text = log.read_text()
    assert "Traceback" not in text and "unexpected error" not in text, text[-3000:]


@pytest.fixture(scope="module")
def page(browser_ready, lab_url, tmp_path_factory):  # noqa: F811
    from playwright.sync_api import sync_playwright
    profile = tmp_path_factory.mktemp("lab_profile")
    with sync_playwright() as p:
        ctx = p.chromium.launch_persistent_context(
            str(profile), executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS,
            viewport={"width": 1200, "height": 900}, bypass_csp=True)  # wait_for_function needs eval
        pg = ctx.new_page()
        pg.errors, pg.requests = [], []
        pg.on("console", lambda m: pg.errors.append(m.text) if m.type == "error" else None)
        pg.on("pageerror", lambda e: pg.errors.append(str(e)))
        pg.on("request", lambda r: pg.requests.append(r.url))
        pg.set_default_timeout(60_000)
        pg.lab_url = lab_url
        try:
            yield pg
        finally:
            ctx.close()
    assert all(u.startswith(lab_url) or u.startswith("data:") for u in pg.requests), \
        [u for u in pg.requests if not u.startswith(lab_url)][:5]


@pytest.fixture(scope="module")
def model_and_tokenizer(lab_base):
    from nanochat.common import use_base_dir
    from nanochat import checkpoint_manager as cm
    use_base_dir(str(lab_base))
    model, tokenizer, _ = cm.load_model_from_dir(cm.checkpoint_dir("base", "d2", str(lab_base)), 12, "cpu")
    return model, tokenizer


def screenshots(page, name, shots):
    """Desktop and phone screenshots of the page as it is now; nothing may stick out sideways on a phone."""
    page.screenshot(path=str(shots / f"{name}_desktop.png"), full_page=True)
    if name in SHOWN_IN_DOCS:
        page.screenshot(path=str(shots / SHOWN_IN_DOCS[name]))
        if os.environ.get("NANOCHAT_UPDATE_DOC_IMAGES") == "1":
            os.makedirs(DOC_IMAGES, exist_ok=True)
            shutil.copyfile(shots / SHOWN_IN_DOCS[name], os.path.join(DOC_IMAGES, SHOWN_IN_DOCS[name]))
    page.set_viewport_size({"width": 390, "height": 844})
    page.wait_for_timeout(300)
    wide = page.evaluate("() => document.documentElement.scrollWidth")
    page.screenshot(path=str(shots / f"{name}_phone.png"), full_page=True)
    page.set_viewport_size({"width": 1200, "height": 900})
    assert wide <= 400, f"the {name} view is {wide} px wide on a 390 px phone"


@pytest.fixture(scope="module")
def shots(tmp_path_factory):
    return tmp_path_factory.mktemp("lab_screenshots")


@pytest.mark.slow
def test_tokens_view_shows_the_tokenizers_ids_and_the_supervised_tokens(page, model_and_tokenizer, shots):
    from tools.lib.token_inspect import DEMO_CONVERSATION
    _, tokenizer = model_and_tokenizer
    page.goto(page.lab_url + "/lab/tokens")
    # The page loads with its own text and tokenizes it while we type ours; the server answers
    # from a thread pool, so the first answer may come back last. newestOnly keeps it off the page:
    # two calls answered in reverse order, only the newer one's answer is used.
    assert page.evaluate("""async () => {
        const answer = [];
        const call = newestOnly(x => new Promise(resolve => answer.push(() => resolve(x))));
        const older = call('older'), newer = call('newer');
        answer[1](); answer[0]();
        return [await older, await newer];
    }""") == [None, "newer"]
    text = "Hello world! naïve 🙂 12345"
    page.fill("#text", text)
    page.wait_for_function("(t) => window.labState.tokens && window.labState.tokens.text === t", arg=text)
    shown = [int(x) for x in page.eval_on_selector_all("#ours .tok", "els => els.map(e => e.dataset.id)")]
    assert shown == tokenizer.encode(text)
    ref = page.evaluate("() => window.labState.tokens.reference")
    try:
        from nanochat.tokenizer import get_reference_encoding
        expected = get_reference_encoding("cl100k").encode(text)
    except Exception:
        expected = None
    if expected is None:
        assert not ref["available"] and "not available offline" in page.inner_text("#ref")
    else:
        assert [int(x) for x in page.eval_on_selector_all("#ref .tok", "els => els.map(e => e.dataset.id)")] == expected
    page.wait_for_function("() => window.labState.conversation")
    ids, mask = tokenizer.render_conversation(DEMO_CONVERSATION)
    chips = page.eval_on_selector_all("#conv-tokens .tok", "els => els.map(e => [+e.dataset.id, e.classList.contains('sup')])")
    assert chips == [[i, bool(m)] for i, m in zip(ids, mask)]
    screenshots(page, "tokens", shots)


@pytest.mark.slow
def test_attention_heatmap_equals_attention_maps(page, model_and_tokenizer, shots):
    from tools.lib import attention_maps as am
    model, tokenizer = model_and_tokenizer
    page.goto(page.lab_url + "/lab/forward")
    page.wait_for_function("() => window.labState.forward")
    page.select_option("#ckpt", "base/d2:12")
    page.fill("#text", PROMPT)
    page.select_option("#layer", "1")
    page.wait_for_function("() => window.labState.forward.layer === 1")
    page.select_option("#head", "1")
    page.wait_for_function("(p) => window.labState.forward.head === 1 && window.labState.forward.labels.length > 8", arg=PROMPT)
    cells = page.eval_on_selector_all("#heat rect", "rs => rs.map(r => [+r.dataset.q, +r.dataset.k, +r.dataset.value])")
    ids = tokenizer.encode(PROMPT, prepend=tokenizer.get_bos_token_id())
    expected = am.attention_probs(model, ids, [1])[1][1]  # (T, T) of layer 1, head 1
    T = len(ids)
    assert len(cells) == T * (T + 1) // 2  # the causal half, the future left blank
    shown = torch.zeros(T, T)
    for q, k, v in cells:
        shown[q, k] = v
    assert torch.allclose(shown, expected, atol=1e-5), (shown - expected).abs().max()
    assert page.eval_on_selector_all("#heads tbody tr", "rs => rs.length") == model.config.n_layer * model.config.n_head
    screenshots(page, "forward", shots)


def _bars(page):
    return page.eval_on_selector_all("#bars rect", "rs => rs.map(r => +r.dataset.value)")


@pytest.mark.slow
def test_temperature_slider_redraws_softmax_of_logits_over_t_and_forcing_branches(page, model_and_tokenizer, shots):
    model, tokenizer = model_and_tokenizer
    page.goto(page.lab_url + "/lab/generation")
    page.wait_for_function("() => window.labState.generation")
    page.select_option("#ckpt", "base/d2:12")
    page.fill("#prompt", "The")
    page.dispatch_event("#prompt", "change")
    ids = tokenizer.encode("The", prepend=tokenizer.get_bos_token_id())
    with torch.no_grad():
        logits = model(torch.tensor([ids]))[0, -1].float()
    for t in (1.0, 0.5, 1.5):
        page.eval_on_selector("#temperature", "(e, t) => { e.value = t; e.dispatchEvent(new Event('input')); }", t)
        page.wait_for_function("(t) => window.labState.generation.settings.temperature === t", arg=t)
        page.wait_for_function("() => document.querySelectorAll('#bars rect').length === 8")
        expected = torch.topk(torch.softmax(logits / t, dim=-1), 8).values
        assert torch.allclose(torch.tensor(_bars(page)), expected, atol=1e-5), (t, _bars(page), expected)
    # the distribution at T = 1.5 is flatter than at 0.5: the slider changed what is shown
    page.click("#step8")
    page.wait_for_function("() => window.labState.generation.steps.length >= 9")
    before = page.evaluate("() => window.labState.generation")
    page.click(".tok[title^='step 0:']")
    page.wait_for_function("() => document.querySelector('#bars-title').textContent.startsWith('Step 0')")
    chosen = before["steps"][0]["id"]
    other = next(i for i, a in enumerate(before["steps"][0]["alternatives"]) if a["id"] != chosen)
    forced = before["steps"][0]["alternatives"][other]["id"]
    page.click(f"#bars rect[data-index='{other}']")
    page.wait_for_function("() => window.labState.generation.steps[0].forced")
    after = page.evaluate("() => window.labState.generation")
    assert after["steps"][0]["id"] == forced != chosen
    # the branch is the backend's trace with that token forced, and what follows is drawn from new
    # distributions (a model this small may still pick the same tokens from them)
    from nanochat.engine import Engine
    from tools.lib import generation_trace as gt
    expected = gt.trace_generation(model, ids, len(after["steps"]), temperature=1.5, seed=42, top_n=8, force={0: forced},
                                   stop_ids=gt.stop_ids_for(tokenizer, False), engine=Engine(model, tokenizer))
    assert [s["id"] for s in after["steps"]] == [s.token_id for s in expected]
    assert after["steps"][1]["alternatives"] != before["steps"][1]["alternatives"]
    assert "before the branch" in page.inner_text("#branch")
    screenshots(page, "generation", shots)


@pytest.mark.slow
def test_checkpoints_view_lists_and_compares(page, model_and_tokenizer, shots):
    page.goto(page.lab_url + "/lab/checkpoints")
    page.wait_for_function("() => window.labState.compare")
    names = page.eval_on_selector_all("#list tbody tr td:first-child", "tds => tds.map(t => t.textContent)")
    assert names == ["base/d2:4", "base/d2:8", "base/d2:12"]
    data = page.evaluate("() => window.labState.compare")
    assert data["a"] == "base/d2:4" and data["b"] == "base/d2:12" and data["weights"]
    assert page.eval_on_selector_all("#weights rect", "rs => rs.length") == len(data["weights"])
    screenshots(page, "checkpoints", shots)


@pytest.mark.slow
def test_training_chart_grows_while_base_train_writes_metrics(page, lab_base, shots):
    from conftest import TINY_TRAIN_ARGS
    args = list(TINY_TRAIN_ARGS)
    args[args.index("--num-iterations") + 1] = "400"
    args[args.index("--save-every") + 1] = "-1"
    args[args.index("--eval-every") + 1] = "20"
    env = dict(os.environ, NANOCHAT_BASE_DIR=str(lab_base), OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1")
    log = open(lab_base / "live_train.log", "w")
    train = subprocess.Popen([sys.executable, "-m", "scripts.base_train", *args, "--model-tag", "live"], cwd=REPO,
                             env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        metrics = lab_base / "base_checkpoints" / "live" / "metrics.jsonl"
        deadline = time.time() + 120
        while not (metrics.exists() and metrics.read_text().count("\n") >= 2):
            assert train.poll() is None, (lab_base / "live_train.log").read_text()[-2000:]
            assert time.time() < deadline, "base_train wrote no metrics in 120 s"
            time.sleep(0.5)
        page.goto(page.lab_url + "/lab/training?every=0.5")
        page.wait_for_selector("input[data-run='base/live']")
        page.check("input[data-run='base/live']")
        points = "() => { const l = document.querySelector(\"#chart-loss polyline[data-name='base/live']\"); " \
                 "return l ? +l.dataset.points : 0; }"
        page.wait_for_function(f"({points})() > 0")
        first = page.evaluate(points)
        page.wait_for_function(f"({points})() > {first}", timeout=90_000)
        assert page.evaluate(points) > first
        # the finished run is drawn too, with its diagnosis beside the charts
        assert page.eval_on_selector_all("#chart-loss polyline[data-name='base/d2']", "ls => +ls[0].dataset.points") == 12
        assert "first loss" in page.inner_text("#diagnosis").lower() or page.query_selector_all(".finding")
        screenshots(page, "training", shots)
    finally:
        os.killpg(train.pid, signal.SIGTERM)
        try:
            train.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(train.pid, signal.SIGKILL)
            train.wait()
        log.close()
    assert not page.errors, page.errors[:5]
