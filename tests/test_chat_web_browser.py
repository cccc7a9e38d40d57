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
            model = httpx.get(url + "/health", timeout=30).json()["model"]
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
            # the page sent max_tokens 48 (the 64-token context may end the reply first); it shows the count
            generated = stats["workers"][0]["tokens_generated"]
            assert 30 < generated <= 48
            assert page.inner_text(".msg.assistant .stats").startswith(f"{generated} tokens")

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

            # the empty chat offers the prompts the model was trained on (nanochat_tasks/examples.py); a click asks one
            from nanochat_tasks.examples import example_prompts
            prompts = [e["prompt"] for e in example_prompts()]
            assert page.locator(".empty .example").all_inner_texts() == prompts
            page.locator(".empty .example").first.click()  # the shortest (Identity): it fits the 64-token context
            page.wait_for_selector(".msg.assistant .regen")
            assert page.inner_text(".msg.user .bubble") == prompts[0]
            assert page.locator(".empty").count() == 0
        finally:
            ctx.close()

    for name in ("chat_desktop.png", "chat_phone.png", "chat_new.png"):
        assert (tmp_path / name).stat().st_size > 5000
    # the page talked to our server only: no CDN, fonts or anything else
    assert requests and all(r.startswith(url) or r.startswith("data:") for r in requests), \
        [r for r in requests if not r.startswith(url)]
    assert not console_errors, console_errors
    print(f"\nscreenshots in {tmp_path}")


# a reply as the server streams it to the page: markdown with a code block, and a calculator call
SCRIPTED_REPLY = [
    {"token": "Here is **bold** and *italic* text with `inline code`.\n\n- first item\n- second item\n\n", "part": "text"},
    {"token": "```python\nprint('hi')\nx = 1 < 2\n```\n", "part": "text"},
    {"mark": "python_start"}, {"token": "12*(3+4)", "part": "python"}, {"mark": "python_end"},
    {"mark": "output_start"}, {"token": "84", "part": "python_output"}, {"mark": "output_end"},
    {"token": " so the answer is 84. <img src=x onerror=alert(1)>", "part": "text"},
    {"done": True, "finish_reason": "stop", "prompt_tokens": 9, "completion_tokens": 42, "seconds": 0.2,
     "tokens_per_s": 210.0},
]


@pytest.mark.slow
def test_chat_page_markdown_tools_saved_chats_server_defaults_and_screenshots(browser_ready, tiny_run, tmp_path):
    import json
    from playwright.sync_api import sync_playwright

    shots = tmp_path / "screenshots"
    shots.mkdir()
    with serve(tiny_run, tmp_path / "server.log", "-t", "0", "-m", "24") as (url, _), sync_playwright() as p:
        console_errors, bodies = [], []
        ctx = p.chromium.launch_persistent_context(
            str(tmp_path / "profile"), executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS,
            viewport={"width": 1100, "height": 760}, bypass_csp=True)
        try:
            ctx.grant_permissions(["clipboard-read", "clipboard-write"], origin=url)
            page = ctx.new_page()
            page.on("console", lambda m: console_errors.append(m.text) if m.type == "error" else None)
            page.on("request", lambda r: bodies.append(json.loads(r.post_data)) if r.url.endswith("/api/chat") else None)
            page.goto(url + "/")
            page.wait_for_selector("#status.ready")

            # the server's defaults (-t 0, -m 24) are what the page shows, and it sends none of its own
            page.click("#settings-toggle")
            page.wait_for_function("document.getElementById('max-tokens').value === '24'")
            assert page.input_value("#temperature") == "0"
            page.click("#settings-toggle")
            page.fill("#input", "Tell me a story")
            page.keyboard.press("Enter")
            page.wait_for_selector(".msg.assistant .regen")
            first = page.inner_text(".msg.assistant .bubble")
            assert "temperature" not in bodies[-1] and "max_tokens" not in bodies[-1]
            assert wait_idle(url)["workers"][0]["tokens_generated"] == 24
            stats = page.inner_text(".msg.assistant .stats")
            assert stats.startswith("24 tokens") and "tok/s" in stats
            # greedy on the server: regenerating gives the same reply
            page.click(".regen")
            page.wait_for_selector(".msg.assistant .regen")
            assert page.inner_text(".msg.assistant .bubble") == first
            assert wait_idle(url)["requests_served"] == 2

            # a system prompt goes first in what the page sends
            page.click("#settings-toggle")
            page.fill("#system-prompt", "You are terse.")
            page.click("#settings-toggle")

            # the conversation survives a reload
            page.reload()
            page.wait_for_selector(".msg.assistant .regen")
            assert page.inner_text(".msg.user .bubble") == "Tell me a story"
            assert page.inner_text(".msg.assistant .bubble") == first

            # a scripted reply (the tiny model writes neither markdown nor calculator calls)
            events = "".join(f"data: {json.dumps(e)}\n\n" for e in SCRIPTED_REPLY)
            page.route("**/api/chat", lambda route: route.fulfill(
                status=200, headers={"Content-Type": "text/event-stream"}, body=events))
            page.click("#new-chat")
            page.fill("#input", "Show me markdown")
            page.keyboard.press("Enter")
            page.wait_for_selector(".msg.assistant .codeblock")
            assert bodies[-1]["messages"][0] == {"role": "system", "content": "You are terse."}
            reply = page.locator(".msg.assistant .bubble")
            assert reply.locator("strong").inner_text() == "bold" and reply.locator("em").inner_text() == "italic"
            assert reply.locator("p code").inner_text() == "inline code"
            assert reply.locator("ul li").all_inner_texts() == ["first item", "second item"]
            assert reply.locator("pre code").inner_text() == "print('hi')\nx = 1 < 2"
            assert reply.locator("pre").evaluate("e => getComputedStyle(e).fontFamily").lower().find("mono") >= 0
            assert reply.locator("img").count() == 0  # model text never becomes markup
            assert "<img src=x" in reply.inner_text()
            reply.locator(".codeblock .copy").click()
            page.wait_for_function("document.querySelector('.codeblock .copy').textContent === 'Copied'")
            assert page.evaluate("navigator.clipboard.readText()") == "print('hi')\nx = 1 < 2"
            chip = reply.locator(".chip")
            assert chip.locator(".expr").inner_text() == "12*(3+4)" and chip.locator(".result").inner_text() == "84"
            assert page.inner_text(".msg.assistant .stats").startswith("42 tokens · 210 tok/s")
            # the next request sends the calculator call back as parts of the reply
            page.unroute("**/api/chat")
            page.fill("#input", "and then?")
            page.keyboard.press("Enter")
            page.wait_for_function("document.querySelectorAll('.msg.assistant .regen').length === 1 && "
                                   "document.querySelectorAll('.msg').length === 4")
            sent = bodies[-1]["messages"][2]["content"]
            assert {"type": "python", "text": "12*(3+4)"} in sent and {"type": "python_output", "text": "84"} in sent

            # screenshots: desktop and phone, light and dark
            for scheme in ("light", "dark"):
                page.emulate_media(color_scheme=scheme)
                page.set_viewport_size({"width": 1100, "height": 760})
                page.screenshot(path=str(shots / f"chat_desktop_{scheme}.png"))
                page.set_viewport_size({"width": 390, "height": 760})
                assert page.evaluate("document.documentElement.scrollWidth <= window.innerWidth")
                page.screenshot(path=str(shots / f"chat_phone_{scheme}.png"))
            page.set_viewport_size({"width": 1100, "height": 760})

            # past chats: the first one is listed, reopens, and can be deleted
            page.click("#chats-toggle")
            rows = page.locator("#chats .chat-row")
            assert rows.count() == 2
            page.locator("#chats .chat-row", has_text="Tell me a story").locator(".open-chat").click()
            page.wait_for_function("document.querySelector('.msg.user .bubble').textContent === 'Tell me a story'")
            assert page.inner_text(".msg.assistant .bubble") == first
            page.screenshot(path=str(shots / "chat_list_desktop.png"))
            page.locator("#chats .chat-row", has_text="Tell me a story").locator(".delete-chat").click()
            assert page.locator("#chats .chat-row").count() == 1 and page.locator(".msg").count() == 0
            page.reload()
            page.click("#chats-toggle")
            assert page.locator("#chats .chat-row").all_inner_texts()[0].startswith("Show me markdown")
        finally:
            ctx.close()
    for shot in shots.iterdir():
        assert shot.stat().st_size > 5000
    assert not console_errors, console_errors
    print(f"\nscreenshots in {shots}")
