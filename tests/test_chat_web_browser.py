"""Browser test of the chat page (nanochat/ui.html) in headless Chromium, driven by Playwright.

It uses Debian's chromium (/usr/bin/chromium; the test command installs it with apt-get) with a
fresh profile, never a browser that `playwright install` downloads. Without chromium the test is
skipped on a developer machine and fails in CI (the CI environment variable is set there).
Screenshots (desktop and phone size) are saved in the test's temporary folder."""

import os
import shutil

import httpx
import pytest

from test_chat_web import serve, wait_idle

CHROMIUM = os.environ.get("NANOCHAT_CHROMIUM", "/usr/bin/chromium")
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]


def _need(condition, why):
    if condition:
        return
    if os.environ.get("CI"):
        pytest.fail(f"{why} (CI is set, so the browser test must run)")
    pytest.skip(why)


# counts every text the reply bubble showed, to see the reply arrive in pieces
WATCH_REPLY = """() => {
  window.__replyLengths = [];
  new MutationObserver((records) => {
    for (const r of records) {
      const bubble = r.target.closest ? r.target.closest('.msg.assistant .bubble') : null;
      if (bubble) for (const n of r.addedNodes) window.__replyLengths.push(n.textContent.length);
    }
  }).observe(document.getElementById('transcript'), {childList: true, subtree: true});
}"""


@pytest.fixture(scope="session")
def browser_ready():
    """Checked before the tiny model is trained, so a skip is instant."""
    _need(shutil.which(CHROMIUM) or os.path.exists(CHROMIUM), f"no chromium at {CHROMIUM} (apt-get install -y chromium)")
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        _need(False, "the playwright Python package is not installed")


@pytest.mark.slow
def test_chat_page_streams_regenerates_edits_stops_and_starts_over(browser_ready, tiny_run, tmp_path):
    from playwright.sync_api import sync_playwright

    with serve(tiny_run, tmp_path / "server.log") as (url, _), sync_playwright() as p:
        requests, console_errors = [], []
        ctx = p.chromium.launch_persistent_context(
            str(tmp_path / "profile"), executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS,
            viewport={"width": 1100, "height": 760}, bypass_csp=True)  # wait_for_function needs eval
        try:
            page = ctx.new_page()
            page.on("request", lambda r: requests.append(r.url))
            page.on("console", lambda m: console_errors.append(m.text) if m.type == "error" else None)
            page.goto(url + "/")

            # model name and status come from /health
            model = httpx.get(url + "/health").json()["model"]
            page.wait_for_function("(m) => document.getElementById('model-name').textContent === m", arg=model)
            page.wait_for_selector("#status.ready")

            # sampling controls: a short reply keeps the test quick
            page.click("#settings-toggle")
            page.fill("#max-tokens", "48")
            page.fill("#top-k", "20")

            # Shift+Enter is a new line, Enter sends
            page.evaluate(WATCH_REPLY)
            page.click("#input")
            page.keyboard.type("Hello there")
            page.keyboard.press("Shift+Enter")
            page.keyboard.type("second line 🙂")
            assert page.input_value("#input") == "Hello there\nsecond line 🙂"
            assert page.locator(".msg").count() == 0
            page.keyboard.press("Enter")
            page.wait_for_selector(".msg.assistant .regen")
            assert page.inner_text(".msg.user .bubble") == "Hello there\nsecond line 🙂"
            assert page.input_value("#input") == ""
            first = page.inner_text(".msg.assistant .bubble")
            assert first.strip()
            lengths = page.evaluate("window.__replyLengths")
            assert len(set(n for n in lengths if n > 0)) >= 2, f"the reply did not arrive in pieces: {lengths}"
            assert page.locator(".msg.assistant .note").inner_text() == "cut at max tokens"
            stats = wait_idle(url)
            assert stats["workers"][0]["tokens_generated"] == 48  # the page sent max_tokens 48

            # regenerate: a new reply replaces the last one
            page.click(".regen")
            page.wait_for_selector(".msg.assistant .regen")
            assert page.locator(".msg.assistant").count() == 1
            second = page.inner_text(".msg.assistant .bubble")
            assert second.strip() and second != first
            assert wait_idle(url)["requests_served"] == 2

            # a second turn, then edit the first message: the conversation continues from there
            page.fill("#input", "Another question")
            page.keyboard.press("Enter")
            page.wait_for_function("document.querySelectorAll('.msg.assistant .regen').length === 1 && "
                                   "document.querySelectorAll('.msg').length === 4")
            page.locator(".msg.user .edit").first.click()
            page.fill(".msg.user textarea", "An edited first message")
            page.click(".msg.user .save")
            page.wait_for_function("document.querySelectorAll('.msg').length === 2 && "
                                   "document.querySelector('.msg.assistant .regen') !== null")
            assert page.inner_text(".msg.user .bubble") == "An edited first message"

            # stop: a long reply (to the end of the context) is cut off and the worker freed
            page.fill("#max-tokens", "4096")
            page.fill("#input", "Tell me everything")
            page.keyboard.press("Enter")
            # the reply takes ~0.5 s; clicking from the page as soon as text shows beats Playwright's
            # own click (which first waits for the button to be stable) by a wide margin
            page.wait_for_function("""() => {
                const b = document.querySelector('.msg.streaming .bubble');
                if (!b || !b.textContent.length) return false;
                document.getElementById('stop').click();
                return true;
            }""")
            page.wait_for_selector(".msg.assistant .note:text('stopped')")
            assert wait_idle(url)["workers"][0]["cancelled"] == 1

            # screenshots: desktop, then phone size (nothing may stick out sideways)
            page.wait_for_selector("#status.ready")
            page.screenshot(path=str(tmp_path / "chat_desktop.png"))
            page.set_viewport_size({"width": 390, "height": 760})
            assert page.evaluate("document.documentElement.scrollWidth <= window.innerWidth")
            page.screenshot(path=str(tmp_path / "chat_phone.png"))

            # new chat: an empty transcript
            page.click("#new-chat")
            assert page.locator(".msg").count() == 0 and page.locator(".empty").count() == 1
            page.screenshot(path=str(tmp_path / "chat_new.png"))
        finally:
            ctx.close()

    for name in ("chat_desktop.png", "chat_phone.png", "chat_new.png"):
        assert (tmp_path / name).stat().st_size > 5000
    # the page talked to our server only: no CDN, fonts or anything else
    assert requests and all(r.startswith(url) or r.startswith("data:") for r in requests), \
        [r for r in requests if not r.startswith(url)]
    assert not console_errors, console_errors
    print(f"\nscreenshots in {tmp_path}")
