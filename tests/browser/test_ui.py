#!/usr/bin/env python3
"""Browser tests of the MedGemma web UI, in headless Chromium over CDP.

Without --base-url the tests start mock_server.py (scripted answers, the
daemon's CSP, the whole API contract) and run every test. With --base-url
they run against a real medgemmad and skip the tests that need scripted
answers (mock_only). Tests marked new_api need the conversation API (list,
export, regenerate, edit, styles, language): against a daemon they run when
its /api/status has a "state" field (--new-api auto), always (--new-api on:
a missing route then fails the test), or never (--new-api off).

Screenshots (1366×768) go to artifacts/browser/; most items are shot in
English and Chinese, light and dark (NAME-{en,zh}-{light,dark}.png), and
every such shot first passes the 4.5:1 text contrast check. The last line
printed is "N passed, N failed[, N skipped]"; the exit status is non-zero on
failure.
"""

import argparse
import base64
import glob
import hashlib
import http.cookiejar
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
import traceback
import urllib.error
import urllib.request
from urllib.parse import urlsplit

from cdp import Browser
from mock_server import TEST_USERS

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(os.path.dirname(HERE))
WEB = os.path.join(REPO, "web")
ARTIFACTS = os.path.join(REPO, "artifacts", "browser")
# Seconds after which no further test starts: the mock answers at once, a
# real model on the CPU takes seconds per answer. run.sh's timeout is the backstop.
TIME_BUDGET_S = {"mock": 120, "daemon": 300}

DISCLAIMER_EN = "MedGemma output supports and does not replace clinical judgement."
DISCLAIMER_ZH = "MedGemma 的输出仅供辅助，不能替代临床判断。"
DEVICE_NOTE = {"en": "Not a medical device.", "zh": "本系统不是医疗器械。"}

TESTS = []


VISION_TESTS = set()


def test(mock_only=False, new_api=False, vision=False):
    """mock_only: needs scripted answers or mock controls. new_api: needs the
    conversation API (see the module doc). vision: needs a model that reads
    images (`model.images` in the status; run-daemon-vision.sh serves one)."""
    def wrap(fn):
        TESTS.append((fn.__name__, fn, mock_only, new_api))
        if vision:
            VISION_TESTS.add(fn.__name__)
        return fn
    return wrap


class Ctx:
    """What the tests share: the page, the base URL, and what was observed."""

    def __init__(self, page, base, mock):
        self.page = page
        self.base = base.rstrip("/")
        self.origin = "{0.scheme}://{0.netloc}".format(urlsplit(self.base))
        self.mock = mock
        self.requests = []
        self.console_errors = []
        self.exceptions = []
        self.log_errors = []
        self.network_log = []
        self.chat_bodies = []  # every POST /api/chat body the page sent, parsed
        page.on(self.on_event)

    def on_event(self, method, p):
        if method == "Network.requestWillBeSent":
            req = p["request"]
            self.requests.append(req["url"])
            if req.get("method") == "POST" and req["url"] == self.base + "/api/chat" and req.get("postData"):
                self.chat_bodies.append(json.loads(req["postData"]))
        elif method == "Runtime.consoleAPICalled" and p.get("type") in ("error", "assert"):
            args = [a.get("value", a.get("description", "")) for a in p.get("args", [])]
            self.console_errors.append(" ".join(str(a) for a in args))
        elif method == "Runtime.exceptionThrown":
            d = p["exceptionDetails"]
            self.exceptions.append(d.get("exception", {}).get("description") or d.get("text"))
        elif method == "Log.entryAdded":
            e = p["entry"]
            if e.get("level") == "error":
                # HTTP error statuses the UI asked for on purpose (the 503 test) are logged
                # by the network stack; everything else counts as a failure.
                (self.network_log if e.get("source") == "network" else self.log_errors).append(e.get("text"))

    def mock_get(self, path):
        with urllib.request.urlopen(self.base + path, timeout=5) as r:
            return json.load(r)

    def mock_post(self, path, body):
        req = urllib.request.Request(self.base + path, data=json.dumps(body).encode(),
                                     headers={"Content-Type": "application/json"}, method="POST")
        with urllib.request.urlopen(req, timeout=5) as r:
            return json.load(r)

    def load(self):
        # Clear the flag first so that the old document cannot answer for the new one.
        self.page.eval("document.documentElement && delete document.documentElement.dataset.ready")
        self.page.navigate(self.base + "/", "!!document.documentElement && document.documentElement.dataset.ready === '1'")

    def text(self, selector):
        return self.page.eval(f"(document.querySelector({json.dumps(selector)}) || {{}}).textContent || ''")

    def visible(self, selector):
        return self.page.eval(f"""(() => {{ const e = document.querySelector({json.dumps(selector)});
            return !!e && e.getClientRects().length > 0; }})()""")

    def ask(self, question, wait_done=True, timeout=15):
        page = self.page
        page.eval("document.getElementById('input').focus()")
        page.eval("document.getElementById('input').value = ''")
        page.insert_text(question)
        page.press_enter()
        if wait_done:
            page.wait_for("document.documentElement.dataset.busy === '0'", timeout, what="the answer to finish")
            # The list refreshes after each answer; give it a moment to mark this conversation.
            deadline = time.time() + 1.5
            while time.time() < deadline and not page.eval(
                    "document.getElementById('sidebar').hidden || "
                    "!!document.querySelector('#conv-list .conv-item.current')"):
                time.sleep(0.03)

    def shot(self, name):
        os.makedirs(ARTIFACTS, exist_ok=True)
        path = os.path.join(ARTIFACTS, name)
        self.page.screenshot(path)
        return path

    # ---- language and theme (the page's own switches) ----
    def lang(self):
        return "zh" if self.page.eval("document.documentElement.lang") == "zh-CN" else "en"

    def theme(self):
        return self.page.eval("document.documentElement.dataset.theme")

    def set_lang(self, lang):
        # element.click(): the switch works even under the print view's overlay.
        if self.lang() != lang:
            self.page.eval("document.getElementById('lang-toggle').click()")
        assert self.lang() == lang

    def set_theme(self, theme):
        if self.theme() != theme:
            self.page.eval("document.getElementById('theme-toggle').click()")
        assert self.theme() == theme

    def shots(self, name, contrast=True):
        """Screenshots of the current view in English and Chinese, light and
        dark; each first passes the text contrast check."""
        lang, theme = self.lang(), self.theme()
        try:
            for lg in ("en", "zh"):
                self.set_lang(lg)
                for th in ("light", "dark"):
                    self.set_theme(th)
                    if contrast:
                        res = self.page.eval(CONTRAST_JS)
                        assert not res["bad"], (name, lg, th, res["bad"])
                    self.shot(f"{name}-{lg}-{th}.png")
        finally:
            self.set_theme(theme)
            self.set_lang(lang)

    def new_conversation(self):
        self.page.click("#new-conversation")
        self.page.wait_for("document.querySelectorAll('#turns > .turn').length === 0", 3, what="an empty view")

    def turn_count(self):
        return self.page.eval("document.querySelectorAll('#turns > .turn').length")

    def conversation_id(self):
        """The id of the conversation shown (from the list's current item or the last chat event)."""
        return self.page.eval("(document.querySelector('#conv-list .conv-item.current') || {dataset: {}}).dataset.id")

    def wait_mock(self, cond, what, timeout=3):
        deadline = time.time() + timeout
        while True:
            st = self.mock_get("/__mock/state")
            if cond(st):
                return st
            assert time.time() < deadline, f"the mock never saw {what}: {st}"
            time.sleep(0.05)


LAST_TURN = "document.querySelector('#turns > .turn:last-child')"


# ---------------------------------------------------------------------------

@test()
def page_loads_without_csp_violations(c):
    c.load()
    p = c.page
    assert p.eval("document.title") == "MedGemma"
    assert p.eval("window.__csp.length") == 0, p.eval("window.__csp")
    # The page itself never scrolls at 1366×768; only the conversation pane does.
    dims = p.eval("""({sh: document.scrollingElement.scrollHeight, sw: document.scrollingElement.scrollWidth,
                      h: innerHeight, w: innerWidth})""")
    assert dims["w"] == 1366 and dims["h"] == 768, dims
    assert dims["sh"] <= dims["h"] and dims["sw"] <= dims["w"], dims
    assert c.text("#st-model").strip(), "model chip is empty"
    assert c.visible(".disclaimer") and c.text(".disclaimer") == DISCLAIMER_EN
    assert not c.console_errors and not c.exceptions and not c.log_errors, \
        (c.console_errors, c.exceptions, c.log_errors)
    c.shot("01-empty-en.png")


@test()
def csp_is_enforced_and_violations_are_seen(c):
    # A sanity check of the harness: an inline style attribute must be blocked
    # and reported, so a zero count above means something.
    p = c.page
    p.eval("document.getElementById('turns').setAttribute('style', 'color: red')")
    p.wait_for("window.__csp.length > 0", 3, what="a CSP violation report")
    assert p.eval("getComputedStyle(document.getElementById('turns')).color") != "rgb(255, 0, 0)"
    p.eval("document.getElementById('turns').removeAttribute('style'); window.__csp.length = 0")
    c.log_errors.clear()
    c.console_errors.clear()


@test()
def status_bar_matches_api_status(c):
    p = c.page
    status = p.eval("fetch('/api/status').then(r => r.json())", await_promise=True)
    sb = status.get("sandbox") or {}
    enforced = sb.get("enforced") is True and sb.get("insecure_no_sandbox") is not True
    chip = p.eval("""(() => { const e = document.getElementById('st-sandbox');
        return {text: e.textContent, cls: e.className, mode: e.dataset.sandbox}; })()""")
    assert ("tone-ok" in chip["cls"]) == enforced, (chip, sb)
    if not enforced and (sb.get("enforced") is False or sb.get("insecure_no_sandbox") is True):
        assert chip["text"] == "Sandbox OFF (development)" and "tone-bad" in chip["cls"], chip
    model = status.get("model") or {}
    if model.get("label"):
        assert model["label"] in c.text("#st-model")
    # The model chip's tooltip says how many answers run at once (the mock
    # and the real daemon in these tests: 1).
    q = status.get("queue") or {}
    tip = p.eval("document.getElementById('st-model').title")
    want = f"Queue: {q.get('active')} of {q.get('max_concurrent')} answering at once"
    assert want in tip, (want, tip)
    assert c.visible("#st-demo") == (model.get("demo") is True)
    if model.get("demo") is True:
        assert c.text("#st-demo") == "Demo model — not a medical model"
    backend = c.text("#st-backend")
    assert backend.startswith("CPU") or backend.startswith("GPU"), backend


@test(mock_only=True)
def sandbox_chip_is_green_only_when_enforced(c):
    p = c.page
    try:
        c.mock_post("/__mock/status", {"sandbox": "on"})
        c.load()
        chip = p.eval("document.getElementById('st-sandbox').className")
        assert "tone-ok" in chip and c.text("#st-sandbox") == "Local only · sandbox enforced", chip
        c.shot("02-sandbox-enforced.png")
        assert not p.eval(CONTRAST_JS)["bad"], p.eval(CONTRAST_JS)["bad"]
        # A poll that fails must not leave a stale green chip behind.
        p.send("Network.setBlockedURLs", {"urls": ["*/api/status*"]})
        try:
            p.eval("document.dispatchEvent(new Event('visibilitychange'))")
            p.wait_for("document.getElementById('st-sandbox').dataset.sandbox === 'unknown'", 6,
                       what="the sandbox chip to drop to unknown")
            assert "tone-ok" not in p.eval("document.getElementById('st-sandbox').className")
            assert c.text("#st-backend") == "Status unavailable: the daemon did not answer"
            c.shot("02b-status-unreachable.png")
        finally:
            p.send("Network.setBlockedURLs", {"urls": []})
        c.mock_post("/__mock/status", {"sandbox": "missing"})
        c.load()
        chip = p.eval("document.getElementById('st-sandbox').className")
        assert "tone-ok" not in chip and "unknown" in c.text("#st-sandbox"), chip
    finally:
        c.mock_post("/__mock/status", {"sandbox": "off"})
    c.load()
    chip = p.eval("document.getElementById('st-sandbox').className")
    assert "tone-bad" in chip and c.text("#st-sandbox") == "Sandbox OFF (development)"
    bg = p.eval("getComputedStyle(document.getElementById('st-sandbox')).backgroundColor")
    r, g, b = map(int, re.findall(r"\d+", bg)[:3])
    assert r > 150 and g < 80 and b < 80, f"sandbox-off chip is not red: {bg}"


@test()
def markdown_renderer_never_creates_markup_from_text(c):
    res = c.page.eval(r"""(() => {
        const src = 'A <script>window.__xss=3</script> and <img src=x onerror="window.__xss=4">\n\n' +
          '| a | b |\n|---|---|\n| <b>1</b> | **2** |\n\n- one\n- two\n  1. nested\n\n' +
          '[click](javascript:alert(1)) `<i>code</i>`\n\n```\n<script>1</script>\n```';
        const div = document.createElement('div');
        div.appendChild(MedMarkdown.render(src));
        return {
          scripts: div.querySelectorAll('script, img, iframe, b, i, a').length,
          text: div.textContent,
          tables: div.querySelectorAll('table td').length,
          lis: div.querySelectorAll('li').length,
          nested: div.querySelectorAll('ul li ol li').length,
          strong: div.querySelectorAll('strong').length,
          attrs: [...div.querySelectorAll('*')].filter(e => [...e.attributes].some(a =>
              !['class', 'scope', 'start'].includes(a.name))).length,
        };
    })()""")
    assert res["scripts"] == 0, res
    assert res["attrs"] == 0, res
    assert "<script>window.__xss=3</script>" in res["text"], res["text"]
    assert '<img src=x onerror="window.__xss=4">' in res["text"]
    assert "<b>1</b>" in res["text"] and "<i>code</i>" in res["text"]
    assert res["tables"] == 2 and res["lis"] == 3 and res["nested"] == 1 and res["strong"] == 1, res
    assert c.page.eval("window.__xss === undefined")


@test()
def ask_and_see_streamed_answer(c):
    p = c.page
    if c.mock:
        c.ask("What is the first-line treatment for community-acquired pneumonia?")
    else:
        c.ask("In one short sentence: what is a normal adult resting heart rate?", timeout=75)
    info = p.eval(f"""(() => {{
        const turn = {LAST_TURN};
        const details = turn.querySelector('details.reasoning');
        const answer = turn.querySelector('.answer');
        return {{
          user: turn.querySelector('.bubble-user').textContent,
          answer: answer.textContent,
          live: answer.getAttribute('aria-live'),
          reasoningHidden: details.hidden,
          reasoningOpen: details.open,
          reasoning: details.querySelector('.reasoning-body').textContent,
          summary: details.querySelector('summary').textContent,
          separate: !details.contains(answer) && !answer.contains(details),
          tables: answer.querySelectorAll('table').length,
          bodyRows: answer.querySelectorAll('table tbody tr').length,
          ul: answer.querySelectorAll('ul > li').length,
          ol: answer.querySelectorAll('ol > li').length,
          strong: answer.querySelectorAll('strong').length,
          em: answer.querySelectorAll('em').length,
          headings: answer.querySelectorAll('h3, h4, h5, h6').length,
          pre: answer.querySelectorAll('pre code').length,
          copyVisible: !turn.querySelector('.copy').hidden,
          ctx: document.getElementById('ctx-text').textContent,
        }};
    }})()""")
    assert info["live"] == "polite", info
    assert info["answer"].strip() or info["reasoning"].strip(), info
    assert info["ctx"].startswith("Context:") and "empty" not in info["ctx"], info["ctx"]
    if not c.mock:
        c.shot("03-answer-en.png")
        return
    assert info["separate"] and not info["reasoningHidden"], info
    assert info["reasoningOpen"] is False, "reasoning should fold once the answer starts"
    assert info["summary"].startswith("Reasoning"), info["summary"]
    assert "CURB-65" in info["reasoning"] and "CURB-65" in info["answer"]
    assert info["tables"] == 1 and info["bodyRows"] == 2, info
    assert info["ul"] == 4 and info["ol"] == 2 and info["strong"] >= 1 and info["em"] >= 1, info
    assert info["headings"] == 1 and info["pre"] == 1 and info["copyVisible"], info
    assert "**" not in info["answer"] and "|---" not in info["answer"], info["answer"]
    assert re.search(r"Context: [\d,]+ / 8,192 tokens", info["ctx"]), info["ctx"]
    assert "42.5 tokens/s" in c.text("#turns > .turn:last-child .meta")
    c.shot("03-answer-en.png")
    # The reasoning block opens and closes.
    p.click("#turns > .turn:last-child details.reasoning summary")
    assert p.eval(f"{LAST_TURN}.querySelector('details').open") is True
    c.shot("04-reasoning-open.png")
    p.click("#turns > .turn:last-child details.reasoning summary")
    assert p.eval(f"{LAST_TURN}.querySelector('details').open") is False


@test()
def copy_answer_button(c):
    p = c.page
    if not p.eval(f"!!{LAST_TURN} && !{LAST_TURN}.querySelector('.copy').hidden"):
        raise AssertionError("no answer with a Copy button")
    p.click("#turns > .turn:last-child .copy")
    p.wait_for(f"{LAST_TURN}.querySelector('.copy').textContent === 'Copied'", 3, what="'Copied'")


@test()
def shift_enter_adds_a_line_and_enter_sends(c):
    p = c.page
    before = p.eval("document.querySelectorAll('#turns > .turn').length")
    p.eval("document.getElementById('input').value = ''; document.getElementById('input').focus()")
    p.insert_text("first line")
    p.press_enter(shift=True)
    p.insert_text("second line")
    assert p.eval("document.getElementById('input').value") == "first line\nsecond line"
    assert p.eval("document.querySelectorAll('#turns > .turn').length") == before
    p.eval("document.getElementById('input').value = ''")


@test(mock_only=True)
def answer_html_is_shown_as_text(c):
    p = c.page
    c.ask("xss test")
    res = p.eval(f"""(() => {{
        const answer = {LAST_TURN}.querySelector('.answer');
        return {{
          xss: typeof window.__xss,
          inPane: document.querySelectorAll('#conversation script, #conversation img, #conversation a, ' +
                                            '#conversation b').length,
          scripts: [...document.scripts].map(s => s.getAttribute('src')),
          imgs: [...document.images].map(i => i.getAttribute('src')),
          text: answer.textContent,
        }};
    }})()""")
    assert res["xss"] == "undefined", res
    assert res["inPane"] == 0, res
    assert res["scripts"] == ["/theme.js", "/i18n.js", "/markdown.js", "/app.js"], res["scripts"]
    assert res["imgs"] == ["/favicon.svg"], res["imgs"]
    assert "<script>window.__xss=1</script>" in res["text"], res["text"]
    assert '<img src=x onerror="window.__xss=2">' in res["text"], res["text"]
    assert "<b>not bold</b>" in res["text"]
    time.sleep(0.3)
    assert p.eval("typeof window.__xss") == "undefined"
    c.shot("05-xss-as-text.png")


@test()
def stop_button_aborts_the_stream(c):
    p = c.page
    if c.mock:
        c.ask("slow answer please", wait_done=False)
    else:
        c.ask("Write a detailed, very long essay on the history of medicine, at least 2000 words.",
              wait_done=False)
    p.wait_for("!document.getElementById('stop').disabled", 5, what="Stop to be enabled")
    if c.mock:
        # The reasoning streams into an open block, apart from the (still empty) answer ...
        p.wait_for(f"{LAST_TURN}.querySelector('.reasoning-body').textContent.length > 0", 5,
                   what="reasoning to stream")
        live = p.eval(f"""(() => {{ const t = {LAST_TURN}; const d = t.querySelector('details');
            return {{open: d.open, answer: t.querySelector('.answer').textContent,
                     summary: d.querySelector('summary').textContent}}; }})()""")
        assert live["open"] is True and live["answer"] == "", live
        assert "thinking…" in live["summary"], live
        c.shot("09-streaming-reasoning.png")
        # ... and folds away once the answer starts.
        p.wait_for(f"{LAST_TURN}.querySelector('.answer').textContent.length > 0", 5, what="the answer")
        assert p.eval(f"{LAST_TURN}.querySelector('details').open") is False
        time.sleep(0.3)
        c.shot("10-streaming-answer.png")
    p.wait_for(f"{LAST_TURN}.querySelector('.answer').textContent.length > 0 || "
               f"{LAST_TURN}.querySelector('.reasoning-body').textContent.length > 0",
               30 if not c.mock else 5, what="streamed output")
    p.click("#stop")
    p.wait_for("document.documentElement.dataset.busy === '0'", 3, what="the stream to stop")
    assert p.eval("document.getElementById('stop').disabled") is True
    assert p.eval("document.getElementById('send').disabled") is False
    assert "Stopped." in c.text("#turns > .turn:last-child .turn-notes")
    n1 = len(c.text("#turns > .turn:last-child .answer"))
    time.sleep(0.6)
    assert len(c.text("#turns > .turn:last-child .answer")) == n1, "answer kept growing after Stop"
    if c.mock:
        # The cancel arrived, and the stream ended: by the cancel, or by the page dropping the connection.
        c.wait_mock(lambda st: st["cancels"] and (st["disconnects"] >= 1 or st["cancelled_turns"] >= 1),
                    "a cancel and the end of the stream")
    assert not c.page.eval("document.getElementById('notice').hidden === false"), "Stop showed an error"


@test(mock_only=True)
def sse_framing_split_anywhere(c):
    c.ask("chunky framing")
    p = c.page
    assert c.text("#turns > .turn:last-child .answer") == "分段测试：中文 粗体 ok", \
        c.text("#turns > .turn:last-child .answer")
    assert p.eval(f"{LAST_TURN}.querySelectorAll('.answer strong').length") == 1
    assert c.text("#turns > .turn:last-child .reasoning-body") == "先想一想。"


@test(mock_only=True)
def queue_full_says_busy_with_retry_after(c):
    p = c.page
    before = p.eval("document.querySelectorAll('#turns > .turn').length")
    c.ask("busy")
    p.wait_for("!document.getElementById('notice').hidden", 3, what="the notice")
    assert c.text("#alert") == "The model is busy, try again in 7 s."
    assert p.eval("document.getElementById('alert').getAttribute('role')") == "alert"
    assert p.eval("document.querySelectorAll('#turns > .turn').length") == before
    assert p.eval("document.getElementById('input').value") == "busy", "the question should be given back"
    p.click("#notice-dismiss")
    assert p.eval("document.getElementById('notice').hidden") is True
    p.eval("document.getElementById('input').value = ''")


@test(mock_only=True)
def unterminated_reasoning_is_flagged(c):
    p = c.page
    c.ask("unterminated reasoning")
    notes = c.text("#turns > .turn:last-child .turn-notes")
    assert "The reasoning trace was cut off before it ended." in notes, notes
    assert "length limit" in notes, notes
    assert p.eval(f"{LAST_TURN}.querySelector('details').open") is True


@test(mock_only=True)
def context_warning_at_80_percent(c):
    p = c.page
    c.ask("nearly full")
    assert c.visible("#ctx-warn"), "no context warning at 85 %"
    assert p.eval("document.getElementById('ctx-progress').classList.contains('warn')")
    assert p.eval("document.getElementById('ctx-progress').value") >= 80
    c.shot("06-context-warning.png")


CONTRAST_JS = r"""(() => {
  const rgba = (c) => (c.match(/[\d.]+/g) || []).map(Number);
  const lum = ([r, g, b]) => {
    const f = (v) => { v /= 255; return v <= 0.03928 ? v / 12.92 : Math.pow((v + 0.055) / 1.055, 2.4); };
    return 0.2126 * f(r) + 0.7152 * f(g) + 0.0722 * f(b);
  };
  const bgOf = (el) => {
    for (let e = el; e; e = e.parentElement) {
      const v = rgba(getComputedStyle(e).backgroundColor);
      if (v.length === 3 || v[3] > 0) return v.slice(0, 3);
    }
    return [255, 255, 255];
  };
  const ratio = (fg, bg) => { const a = lum(fg), b = lum(bg); return (Math.max(a, b) + 0.05) / (Math.min(a, b) + 0.05); };
  const bad = [];
  let checked = 0;
  const w = document.createTreeWalker(document.body, NodeFilter.SHOW_TEXT);
  while (w.nextNode()) {
    const el = w.currentNode.parentElement;
    if (!w.currentNode.textContent.trim() || !el || !el.getClientRects().length) continue;
    if (el.closest('[hidden], .sr-only, .offscreen, noscript')) continue;
    const r = ratio(rgba(getComputedStyle(el).color).slice(0, 3), bgOf(el));
    checked++;
    if (r < 4.5) bad.push(el.tagName + '.' + el.className + ' "' + w.currentNode.textContent.trim().slice(0, 30) + '" ' + r.toFixed(2));
  }
  const input = document.getElementById('input');
  const ph = ratio(rgba(getComputedStyle(input, '::placeholder').color).slice(0, 3), bgOf(input));
  if (ph < 4.5) bad.push('placeholder ' + ph.toFixed(2));
  return {bad, checked};
})()"""


@test()
def text_contrast_at_least_4_5(c):
    res = c.page.eval(CONTRAST_JS)
    assert res["checked"] > 10, res
    assert not res["bad"], res["bad"]


@test(mock_only=True)
def context_full_offers_new_conversation(c):
    p = c.page
    c.ask("context full now")
    p.wait_for("!document.getElementById('notice').hidden", 3, what="the notice")
    assert "context limit" in c.text("#alert"), c.text("#alert")
    assert c.visible("#notice-new") and c.text("#notice-new") == "Start a new conversation"
    c.shot("07-context-full.png")
    assert not p.eval(CONTRAST_JS)["bad"], p.eval(CONTRAST_JS)["bad"]
    deletes = len(c.mock_get("/__mock/state")["deletes"])
    full_id = c.conversation_id()
    p.click("#notice-new")
    p.wait_for("document.querySelectorAll('#turns > .turn').length === 0", 3, what="the view to clear")
    assert c.visible("#empty-state") and not c.visible("#notice")
    assert c.text("#ctx-text") == "Context: empty"
    # The full conversation stays on the server and in the list, to read or export.
    assert full_id and p.eval(f"!!document.querySelector('#conv-list [data-id=\"{full_id}\"]')"), full_id
    assert not c.conversation_id(), "the new conversation is not the current one"
    time.sleep(0.2)
    assert len(c.mock_get("/__mock/state")["deletes"]) == deletes, "a new conversation deleted the old one"


@test()
def new_conversation_button_clears_view(c):
    p = c.page
    if c.mock:
        c.ask("Another question")
    elif not p.eval("document.querySelectorAll('#turns > .turn').length"):
        c.ask("Say OK.", timeout=75)
    deletes_before = len(c.mock_get("/__mock/state")["deletes"]) if c.mock else 0
    old_id = c.conversation_id()
    p.click("#new-conversation")
    p.wait_for("document.querySelectorAll('#turns > .turn').length === 0", 3, what="the view to clear")
    assert c.visible("#empty-state")
    assert p.eval("document.activeElement.id") == "input"
    if c.mock:
        # The old conversation is kept (the list reaches it), not deleted.
        assert old_id and p.eval(f"!!document.querySelector('#conv-list [data-id=\"{old_id}\"]')")
        assert not p.eval("document.querySelector('#conv-list .conv-item.current')")
        time.sleep(0.2)
        assert len(c.mock_get("/__mock/state")["deletes"]) == deletes_before, "the old conversation was deleted"


@test()
def language_toggle_switches_to_chinese_and_is_remembered(c):
    p = c.page
    c.load()
    p.click("#lang-toggle")
    assert p.eval("document.documentElement.lang") == "zh-CN"
    assert c.text(".disclaimer") == DISCLAIMER_ZH
    assert c.text("#send") == "发送" and c.text("#stop") == "停止" and c.text("#new-conversation") == "新建对话"
    assert c.text("#lang-toggle") == "English"
    assert "沙箱" in c.text("#st-sandbox"), c.text("#st-sandbox")
    if c.mock:
        assert c.text("#st-demo") == "演示模型——非医疗模型"
        c.ask("肺炎的一线治疗是什么？")
        assert c.text("#turns > .turn:last-child summary").startswith("推理过程")
        assert c.text("#turns > .turn:last-child .copy") == "复制回答"
    else:
        c.ask("用一句话回答：成人正常静息心率是多少？", timeout=75)
    assert c.text("#ctx-text").startswith("上下文")
    c.shot("08-answer-zh.png")
    c.load()
    assert p.eval("document.documentElement.lang") == "zh-CN", "language choice not remembered"
    p.click("#lang-toggle")
    assert p.eval("document.documentElement.lang") == "en" and c.text(".disclaimer") == DISCLAIMER_EN
    c.load()
    assert p.eval("document.documentElement.lang") == "en"


@test()
def follows_navigator_languages(c):
    p = c.page
    ua = p.eval("navigator.userAgent")
    try:
        p.eval("localStorage.clear()")
        p.send("Emulation.setUserAgentOverride", {"userAgent": ua, "acceptLanguage": "zh-CN,zh;q=0.9"})
        c.load()
        assert p.eval("navigator.languages[0]").lower().startswith("zh")
        assert p.eval("document.documentElement.lang") == "zh-CN"
        assert c.text(".disclaimer") == DISCLAIMER_ZH
    finally:
        p.send("Emulation.setUserAgentOverride", {"userAgent": ua, "acceptLanguage": "en-US,en"})
    c.load()
    assert p.eval("document.documentElement.lang") == "en"


@test()
def keyboard_focus_is_visible(c):
    p = c.page
    p.eval("document.getElementById('input').focus()")
    p.key("Tab", "Tab", 9)
    focused = p.eval("document.activeElement.id")
    outline = p.eval("getComputedStyle(document.activeElement).outlineStyle")
    assert focused == "send" and outline == "solid", (focused, outline)


# ---- issue 16: the chat page ------------------------------------------------

LAST_Q = "#turns > .turn:last-child"


def pneumonia_question(c):
    return ("What is the first-line treatment for community-acquired pneumonia?" if c.mock
            else "In one short sentence: what is a normal adult resting heart rate?")


def answer_timeout(c):
    return 15 if c.mock else 75


@test()
def not_a_medical_device_note_is_visible(c):
    p = c.page
    c.load()
    for lang in ("en", "zh"):
        c.set_lang(lang)
        assert c.visible("#device-note") and c.text("#device-note") == DEVICE_NOTE[lang], c.text("#device-note")
        assert c.visible(".disclaimer")
        assert c.text(".disclaimer") == (DISCLAIMER_EN if lang == "en" else DISCLAIMER_ZH)
        # Above the fold, beside the input, not in a tooltip.
        box = p.eval("document.getElementById('device-note').getBoundingClientRect().bottom")
        assert 0 < box <= 768, box
    c.set_lang("en")
    c.shots("11-device-note")


@test()
def input_sends_nothing_to_spelling_or_autofill_services(c):
    p = c.page
    attrs = p.eval("""(() => { const i = document.getElementById('input');
        return {spellcheck: i.spellcheck, sc: i.getAttribute('spellcheck'), ac: i.getAttribute('autocomplete'),
                acorr: i.getAttribute('autocorrect'), acap: i.getAttribute('autocapitalize'),
                login: [...document.querySelectorAll('#login input')].map(e => e.spellcheck)}; })()""")
    assert attrs == {"spellcheck": False, "sc": "false", "ac": "off", "acorr": "off", "acap": "off",
                     "login": [False, False]}, attrs


@test()
def show_reasoning_switch_is_sent_and_remembered(c):
    p = c.page
    c.load()
    assert p.eval("document.getElementById('show-reasoning').checked") is True, "on by default"
    assert c.text("label[for=show-reasoning]").strip() == "Show reasoning"
    c.set_lang("zh")
    assert c.text("label[for=show-reasoning]").strip() == "显示推理过程"
    c.set_lang("en")
    c.new_conversation()
    try:
        p.click("#show-reasoning")
        assert p.eval("localStorage.getItem('medgemma.reasoning')") == "0"
        c.load()
        assert p.eval("document.getElementById('show-reasoning').checked") is False, "switch not remembered"
        c.ask(pneumonia_question(c), timeout=answer_timeout(c))
        assert c.chat_bodies[-1]["thinking"] is False, c.chat_bodies[-1]
        if c.mock:
            # Not asked for, none came: no reasoning panel.
            assert p.eval(f"document.querySelector('{LAST_Q} details.reasoning').hidden") is True
            assert c.text(f"{LAST_Q} .answer").strip()
            c.shots("12-reasoning-off")
    finally:
        if not p.eval("document.getElementById('show-reasoning').checked"):
            p.click("#show-reasoning")
    assert p.eval("localStorage.getItem('medgemma.reasoning')") == "1"
    c.load()
    assert p.eval("document.getElementById('show-reasoning').checked") is True
    c.ask(pneumonia_question(c), timeout=answer_timeout(c))
    assert c.chat_bodies[-1]["thinking"] is True, c.chat_bodies[-1]
    if c.mock:
        info = p.eval(f"""(() => {{ const d = document.querySelector('{LAST_Q} details.reasoning');
            return {{hidden: d.hidden, open: d.open, text: d.querySelector('.reasoning-body').textContent}}; }})()""")
        assert info["hidden"] is False and info["open"] is False and "CURB-65" in info["text"], info


@test()
def reasoning_streams_open_then_folds_in_chinese(c):
    p = c.page
    c.set_lang("zh")
    try:
        c.new_conversation()
        if c.mock:
            c.ask("slow 慢一点回答", wait_done=False)
            p.wait_for(f"document.querySelector('{LAST_Q} .reasoning-body').textContent.length > 0", 5,
                       what="reasoning to stream")
            live = p.eval(f"""(() => {{ const d = document.querySelector('{LAST_Q} details.reasoning');
                return {{open: d.open, summary: d.querySelector('summary').textContent,
                         answer: document.querySelector('{LAST_Q} .answer').textContent}}; }})()""")
            assert live["open"] is True and live["answer"] == "" and "思考中…" in live["summary"], live
            c.shot("13-reasoning-streaming-zh-light.png")
            p.wait_for(f"document.querySelector('{LAST_Q} .answer').textContent.length > 0", 5, what="the answer")
            assert p.eval(f"document.querySelector('{LAST_Q} details.reasoning').open") is False
            c.shot("13-reasoning-folded-zh-light.png")
            p.click("#stop")
            p.wait_for("document.documentElement.dataset.busy === '0'", 3, what="the stream to stop")
        else:
            c.ask("用一句话回答：发烧是什么？", timeout=75)
        assert c.chat_bodies[-1]["thinking"] is True
    finally:
        c.set_lang("en")


@test(new_api=True)
def ui_language_is_sent_and_answers_follow_it(c):
    p = c.page
    c.set_lang("zh")
    try:
        c.new_conversation()
        c.ask("肺炎的一线治疗是什么？" if c.mock else "用一句话回答：成人正常体温是多少？", timeout=answer_timeout(c))
        assert c.chat_bodies[-1]["language"] == "zh", c.chat_bodies[-1]
        if c.mock:
            heads = p.eval(f"[...document.querySelectorAll('{LAST_Q} .answer h4')].map(h => h.textContent)")
            assert heads == ["定义", "机制", "鉴别诊断", "建议"], heads
            c.shots("14-answer-language")
    finally:
        c.set_lang("en")
    c.new_conversation()
    c.ask(pneumonia_question(c), timeout=answer_timeout(c))
    assert c.chat_bodies[-1]["language"] == "en", c.chat_bodies[-1]


@test(new_api=True)
def answer_style_per_conversation_defaults_from_status(c):
    p = c.page
    if c.mock:
        c.mock_post("/__mock/status", {"default_style": "brief"})
    try:
        c.load()
        status = p.eval("fetch('/api/status').then(r => r.json())", await_promise=True)
        styles, default = status["styles"], status["default_style"]
        assert default in styles, status
        picker = p.eval("""(() => ({hidden: document.getElementById('style-picker').hidden,
            values: [...document.querySelectorAll('#style-options input')].map(i => i.value),
            checked: (document.querySelector('#style-options input:checked') || {}).value,
            labels: [...document.querySelectorAll('#style-options label')].map(l => l.textContent.trim()),
            legend: document.querySelector('#style-picker legend').textContent}))()""")
        assert picker["hidden"] is False and picker["values"] == styles and picker["checked"] == default, picker
        if c.mock:
            assert picker["labels"] == ["Structured", "Brief"] and picker["legend"] == "Answer style", picker
            c.set_lang("zh")
            assert p.eval("[...document.querySelectorAll('#style-options label')].map(l => l.textContent.trim())") \
                == ["结构化", "简要"]
            c.set_lang("en")
        other = next(s for s in styles if s != default)
        # Conversation A: the default style, then switched.
        c.new_conversation()
        c.ask(pneumonia_question(c), timeout=answer_timeout(c))
        assert c.chat_bodies[-1]["style"] == default, c.chat_bodies[-1]
        if c.mock:
            assert p.eval(f"document.querySelectorAll('{LAST_Q} .answer h3, {LAST_Q} .answer h4').length") == 0, \
                "a brief answer has no sections"
        p.click(f"#style-options input[value={other}]")
        c.ask("And for a penicillin allergy?" if c.mock else "Say OK.", timeout=answer_timeout(c))
        assert c.chat_bodies[-1]["style"] == other, c.chat_bodies[-1]
        conv_a = c.conversation_id()
        assert conv_a
        if c.mock:
            assert c.mock_get("/__mock/state")["conversations"][conv_a]["style"] == other
            c.shots("15-answer-style")
        # A new conversation starts from the default again ...
        c.new_conversation()
        assert p.eval("document.querySelector('#style-options input:checked').value") == default
        # ... and A keeps its own style when opened from the list.
        p.click(f"#conv-list [data-id='{conv_a}'] .conv-open")
        p.wait_for("document.querySelectorAll('#turns > .turn').length === 2", 5, what="conversation A")
        assert p.eval("document.querySelector('#style-options input:checked').value") == other
    finally:
        if c.mock:
            c.mock_post("/__mock/status", {"default_style": "structured"})
        c.load()


@test(mock_only=True)
def terms_panel_beside_the_answer(c):
    p = c.page
    c.new_conversation()
    c.ask("Is crushing chest pain a heart attack?")
    info = p.eval(f"""(() => {{ const t = document.querySelector('{LAST_Q}');
        const aside = t.querySelector('aside.terms'), bubble = t.querySelector('.bubble-model');
        const a = aside.getBoundingClientRect(), b = bubble.getBoundingClientRect();
        return {{hidden: aside.hidden, title: aside.querySelector('.terms-title').textContent,
                 items: [...aside.querySelectorAll('.term')].map(li => ({{
                    phrase: li.querySelector('.term-phrase').textContent,
                    preferred: li.querySelector('.term-preferred').textContent,
                    code: (li.querySelector('.term-code') || {{}}).textContent}})),
                 beside: a.left >= b.right && a.top < b.bottom,
                 links: aside.querySelectorAll('a, [href], [onclick]').length}}; }})()""")
    assert info["hidden"] is False and info["title"] == "Terms" and info["beside"], info
    assert {"phrase": "heart attack", "preferred": "Acute myocardial infarction", "code": "I21.9 · ICD-10"} \
        in info["items"], info["items"]
    assert info["links"] == 0, info
    c.shots("16-terms")
    # Chinese: the colloquial 心梗 maps to the standard term.
    c.set_lang("zh")
    try:
        c.new_conversation()
        c.ask("胸痛一小时，是心梗吗？")
        items = p.eval(f"[...document.querySelectorAll('{LAST_Q} .term')].map(li => li.textContent)")
        assert any(x.startswith("心梗") and "急性心肌梗死" in x and "I21.9 · ICD-10" in x for x in items), items
        assert c.text(f"{LAST_Q} .terms-title") == "术语"
        c.shots("16b-terms-chinese")
    finally:
        c.set_lang("en")
    # No term found: no panel.
    c.ask("xss test")
    assert p.eval(f"document.querySelector('{LAST_Q} aside.terms').hidden") is True
    assert not p.eval(f"document.querySelector('{LAST_Q} .model-row').classList.contains('has-terms')")


@test(new_api=True)
def conversation_list_loads_switches_and_deletes(c):
    p = c.page
    c.load()
    c.new_conversation()
    q1 = "First question: community-acquired pneumonia?" if c.mock else "Say one."
    q2 = "Second question: is it a heart attack?" if c.mock else "Say two."
    c.ask(q1, timeout=answer_timeout(c))
    id1 = c.conversation_id()
    c.new_conversation()
    c.ask(q2, timeout=answer_timeout(c))
    id2 = c.conversation_id()
    assert id1 and id2 and id1 != id2
    listed = p.eval("""[...document.querySelectorAll('#conv-list .conv-item')].map(li => ({id: li.dataset.id,
        title: li.querySelector('.conv-item-title').textContent, meta: li.querySelector('.conv-item-meta').textContent,
        current: li.classList.contains('current')}))""")
    assert [x["id"] for x in listed[:2]] == [id2, id1], listed  # newest first
    assert listed[0]["title"] == q2[:60] and listed[1]["title"] == q1[:60], listed
    assert listed[0]["current"] and listed[0]["meta"].startswith("1 question"), listed
    # Switch to the first conversation: its question, answer, folded reasoning (and terms) come back.
    p.click(f"#conv-list [data-id='{id1}'] .conv-open")
    p.wait_for(f"document.querySelector('#turns .bubble-user') && "
               f"document.querySelector('#turns .bubble-user').textContent === {json.dumps(q1)}", 5, what="conversation 1")
    info = p.eval(f"""(() => {{ const t = document.querySelector('{LAST_Q}');
        const d = t.querySelector('details.reasoning');
        return {{turns: document.querySelectorAll('#turns > .turn').length, answer: t.querySelector('.answer').textContent,
                 reasoningShown: !d.hidden, open: d.open, terms: t.querySelectorAll('.term').length,
                 current: document.querySelector('#conv-list .conv-item.current').dataset.id,
                 title: document.getElementById('conv-title').textContent,
                 ctx: document.getElementById('ctx-text').textContent}}; }})()""")
    assert info["turns"] == 1 and info["answer"].strip() and info["current"] == id1, info
    assert info["title"] == q1[:60], info
    if c.mock:
        assert info["reasoningShown"] and info["open"] is False and info["terms"] >= 1, info
        assert info["ctx"] == "Context: counted after the next answer", info
    c.shots("17-conversation-list")
    # Delete the other one: two clicks (the first only asks to confirm).
    sel = f"#conv-list [data-id='{id2}'] .conv-delete"
    assert c.text(sel) == "Delete"
    p.click(sel)
    assert c.text(sel) == "Confirm delete"
    c.shot("17b-delete-confirm-en-light.png")
    p.click(sel)
    p.wait_for(f"!document.querySelector(\"#conv-list [data-id='{id2}']\")", 3, what="the item to go")
    if c.mock:
        c.wait_mock(lambda st: id2 in st["deletes"], "the DELETE")
    gone = p.eval(f"fetch('/api/conversations/{id2}').then(r => r.status)", await_promise=True)
    assert gone == 404, gone
    # Deleting the conversation on screen clears the view.
    sel = f"#conv-list [data-id='{id1}'] .conv-delete"
    p.click(sel)
    p.click(sel)
    p.wait_for("document.querySelectorAll('#turns > .turn').length === 0", 3, what="the view to clear")
    assert c.visible("#empty-state") and not c.visible("#conv-bar")


@test(new_api=True)
def regenerate_the_last_answer(c):
    p = c.page
    c.new_conversation()
    c.ask("Tell me about pneumonia." if c.mock else "Say OK.", timeout=answer_timeout(c))
    c.ask(pneumonia_question(c), timeout=answer_timeout(c))
    # Only the last answer offers it.
    shown = p.eval("[...document.querySelectorAll('#turns .regenerate')].map(b => !b.hidden)")
    assert shown == [False, True], shown
    cid = c.conversation_id()
    before = c.text(f"{LAST_Q} .answer")
    p.click(f"{LAST_Q} .regenerate")
    p.wait_for("document.documentElement.dataset.busy === '1'", 3, what="regenerating")
    p.wait_for("document.documentElement.dataset.busy === '0'", answer_timeout(c), what="the new answer")
    body = c.chat_bodies[-1]
    assert body["regenerate"] is True and body["conversation_id"] == cid and body["message"] == "", body
    assert "replace_last" not in body
    assert c.turn_count() == 2
    assert c.text(f"{LAST_Q} .bubble-user") == pneumonia_question(c)
    after = c.text(f"{LAST_Q} .answer")
    assert after.strip()
    if c.mock:
        assert before != after and "Regenerated answer, attempt 2" in after, after
        assert c.mock_get("/__mock/state")["conversations"][cid]["turns"] == 2
        c.set_lang("zh")
        assert c.text(f"{LAST_Q} .regenerate") == "重新生成"
        c.set_lang("en")
        c.shots("18-regenerated")


@test(new_api=True)
def edit_and_resend_the_last_question(c):
    p = c.page
    c.new_conversation()
    c.ask("Tell me about pneumonia." if c.mock else "Say OK.", timeout=answer_timeout(c))
    c.ask("What about a heart atack?" if c.mock else "Say yes.", timeout=answer_timeout(c))
    shown = p.eval("[...document.querySelectorAll('#turns .edit')].map(b => !b.hidden)")
    assert shown == [False, True], shown
    cid = c.conversation_id()
    # Esc leaves edit mode and gives the input back empty.
    p.click(f"{LAST_Q} .edit")
    assert c.visible("#edit-bar") and p.eval("document.getElementById('input').value") == \
        ("What about a heart atack?" if c.mock else "Say yes.")
    p.key("Escape", "Escape", 27)
    assert not c.visible("#edit-bar") and p.eval("document.getElementById('input').value") == ""
    p.click(f"{LAST_Q} .edit")
    assert p.eval("document.activeElement.id") == "input"
    c.shots("19-editing")
    fixed = "What about a heart attack?" if c.mock else "Say no."
    p.eval("document.getElementById('input').select()")
    p.insert_text(fixed)
    p.press_enter()
    p.wait_for("document.documentElement.dataset.busy === '0'", answer_timeout(c), what="the new answer")
    body = c.chat_bodies[-1]
    assert body["replace_last"] is True and body["message"] == fixed and body["conversation_id"] == cid, body
    assert c.turn_count() == 2 and c.text(f"{LAST_Q} .bubble-user") == fixed
    assert not c.visible("#edit-bar")
    if c.mock:
        st = c.mock_get("/__mock/state")["conversations"][cid]
        assert st["turns"] == 2, st
        assert "Acute myocardial infarction" in c.text(f"{LAST_Q} .answer"), "the answer is to the new question"
        c.shots("19b-edited")


@test(mock_only=True)
def copy_buttons_on_answer_reasoning_and_code(c):
    p = c.page
    c.new_conversation()
    c.ask(pneumonia_question(c))
    clip = "navigator.clipboard.readText()"

    def copied(selector, label):
        p.click(selector)
        p.wait_for(f"document.querySelector({json.dumps(selector)}).textContent === 'Copied'", 3, what=f"'Copied' on the {label} button")
        return p.eval(clip, await_promise=True)

    assert copied(f"{LAST_Q} .copy", "answer").startswith("## Community-acquired pneumonia")
    p.click(f"{LAST_Q} details.reasoning summary")
    assert "CURB-65" in copied(f"{LAST_Q} .copy-reasoning", "reasoning")
    assert copied(f"{LAST_Q} .copy-code", "code") == "CURB-65 = C + U + R + B + 65"
    labels = p.eval(f"[...document.querySelectorAll('{LAST_Q} .copy-reasoning, {LAST_Q} .copy-code')]"
                    ".map(b => b.textContent)")
    assert labels == ["Copied", "Copied"], labels
    c.shots("20-copy-buttons")
    p.wait_for(f"document.querySelector('{LAST_Q} .copy-code').textContent === 'Copy code'", 3,
               what="the label to come back")
    c.set_lang("zh")
    labels = p.eval(f"[...document.querySelectorAll('{LAST_Q} .copy, {LAST_Q} .copy-reasoning, {LAST_Q} .copy-code')]"
                    ".map(b => b.textContent)")
    assert sorted(labels) == sorted(["复制回答", "复制推理过程", "复制代码"]), labels
    c.set_lang("en")


@test(new_api=True)
def export_markdown_download_and_print_view(c):
    p = c.page
    c.new_conversation()
    question = pneumonia_question(c)
    c.ask(question, timeout=answer_timeout(c))
    cid = c.conversation_id()
    assert c.visible("#conv-bar") and c.text("#export-md") == "Download Markdown" and c.text("#export-print") == "Print view"
    downloads = tempfile.mkdtemp(prefix="medgemma-dl-")
    try:
        p.send("Browser.setDownloadBehavior", {"behavior": "allow", "downloadPath": downloads})
        p.click("#export-md")
        deadline = time.time() + 5
        while not glob.glob(os.path.join(downloads, "medgemma-conversation-*.md")):
            assert time.time() < deadline, f"no download: {os.listdir(downloads)}"
            time.sleep(0.05)
        time.sleep(0.2)
        path = glob.glob(os.path.join(downloads, "medgemma-conversation-*.md"))[0]
        with open(path, encoding="utf-8") as f:
            md = f.read()
        assert question in md, md[:400]
    finally:
        p.send("Browser.setDownloadBehavior", {"behavior": "default"})
        shutil.rmtree(downloads, ignore_errors=True)
    if c.mock:
        c.wait_mock(lambda st: {"conversation": cid, "format": "markdown"}.items()
                    <= (st["exports"][-1] if st["exports"] else {}).items(), "the audited export")
    p.click("#export-print")
    p.wait_for("!document.getElementById('print-view').hidden", 3, what="the print view")
    info = p.eval("""(() => { const b = document.getElementById('print-body');
        return {text: b.textContent, heads: b.querySelectorAll('h3, h4').length, tables: b.querySelectorAll('table').length,
                markup: b.querySelectorAll('a, script, img, iframe').length,
                head: document.getElementById('print-head').textContent}; })()""")
    assert question in info["text"] and info["heads"] >= 2 and info["markup"] == 0, info
    assert info["head"].startswith("MedGemma conversation · exported"), info
    if c.mock:
        assert info["tables"] == 1, info
        assert c.mock_get("/__mock/state")["exports"][-1]["format"] == "print"
    c.shots("21-print-view")
    # Printed: only the export, in print colours.
    p.send("Emulation.setEmulatedMedia", {"media": "print"})
    try:
        printed = p.eval("""({app: getComputedStyle(document.querySelector('.app')).display,
            tools: getComputedStyle(document.querySelector('.print-tools')).display,
            view: getComputedStyle(document.getElementById('print-view')).position})""")
        assert printed == {"app": "none", "tools": "none", "view": "static"}, printed
        c.shot("21b-print-media-en-light.png")
    finally:
        p.send("Emulation.setEmulatedMedia", {"media": ""})
    p.key("Escape", "Escape", 27)
    assert p.eval("document.getElementById('print-view').hidden") is True
    assert p.eval("document.getElementById('print-body').childElementCount") == 0, "the export lingers in the page"


@test()
def dark_mode_follows_the_system_and_the_switch_is_remembered(c):
    p = c.page

    def system(value):
        p.send("Emulation.setEmulatedMedia", {"media": "", "features": [{"name": "prefers-color-scheme", "value": value}]})

    def bg_dark():
        rgb = list(map(int, re.findall(r"\d+", p.eval("getComputedStyle(document.body).backgroundColor"))[:3]))
        return sum(rgb) < 150

    stored = "localStorage.getItem('medgemma.theme')"
    try:
        p.eval("localStorage.removeItem('medgemma.theme')")
        system("dark")
        c.load()
        assert c.theme() == "dark" and bg_dark(), "does not follow the system's dark preference"
        assert p.eval("document.getElementById('theme-toggle').getAttribute('aria-pressed')") == "true"
        p.click("#theme-toggle")
        assert c.theme() == "light" and not bg_dark() and p.eval(stored) == "light"
        c.load()
        assert c.theme() == "light", "the switch was not remembered"
        p.click("#theme-toggle")  # back to the system's choice: no override kept
        assert c.theme() == "dark" and p.eval(stored) is None
        system("light")
        p.wait_for("document.documentElement.dataset.theme === 'light'", 2, what="following the system live")
        p.click("#theme-toggle")
        assert c.theme() == "dark" and p.eval(stored) == "dark"
        c.load()
        assert c.theme() == "dark" and bg_dark()
        assert c.text("#theme-toggle") == "Dark mode"
        c.set_lang("zh")
        assert c.text("#theme-toggle") == "深色模式"
        c.set_lang("en")
        if c.mock:
            c.ask(pneumonia_question(c))
        c.shots("22-dark-mode")
    finally:
        if c.theme() == "dark":
            p.click("#theme-toggle")
        system("light")
        p.send("Emulation.setEmulatedMedia", {"media": "", "features": []})
    assert c.theme() == "light" and p.eval(stored) is None


@test()
def escape_stops_the_answer(c):
    p = c.page
    for lang, stopped in (("en", "Stopped."), ("zh", "已停止。")):
        c.set_lang(lang)
        try:
            cancels = len(c.mock_get("/__mock/state")["cancels"]) if c.mock else 0
            c.ask("slow answer please" if c.mock else
                  "Write a detailed, very long essay on the history of medicine, at least 2000 words.", wait_done=False)
            p.wait_for(f"document.querySelector('{LAST_Q} .answer').textContent.length > 0 || "
                       f"document.querySelector('{LAST_Q} .reasoning-body').textContent.length > 0",
                       5 if c.mock else 30, what="the answer to stream")
            p.key("Escape", "Escape", 27)
            p.wait_for("document.documentElement.dataset.busy === '0'", 3, what="Esc to stop the stream")
            assert stopped in c.text(f"{LAST_Q} .turn-notes"), c.text(f"{LAST_Q} .turn-notes")
            if c.mock:
                c.wait_mock(lambda st: len(st["cancels"]) > cancels, "the cancel")
            n = len(c.text(f"{LAST_Q} .answer"))
            time.sleep(0.3)
            assert len(c.text(f"{LAST_Q} .answer")) == n, "the answer kept growing after Esc"
        finally:
            c.set_lang("en")
    assert c.text("#stop") == "Stop" and "Esc" in p.eval("document.getElementById('stop').title")


@test(mock_only=True)
def model_loading_state_with_progress(c):
    p = c.page
    try:
        c.mock_post("/__mock/status", {"state": "loading", "stage": "reading weights", "progress": 0.4})
        c.load()
        info = p.eval("""({shown: !document.getElementById('loading').hidden,
            text: document.getElementById('loading-text').textContent,
            value: document.getElementById('loading-progress').value,
            send: document.getElementById('send').disabled,
            backend: document.getElementById('st-backend').textContent})""")
        assert info == {"shown": True, "text": "Loading the model: reading weights · 40 %", "value": 40,
                        "send": True, "backend": "Compute: unknown"}, info
        c.shots("23-model-loading")
        c.set_lang("zh")
        assert c.text("#loading-text") == "正在加载模型：reading weights · 40%"
        c.set_lang("en")
        # The bar follows the load closely (polled every second while loading).
        c.mock_post("/__mock/status", {"progress": 0.8})
        p.wait_for("document.getElementById('loading-progress').value === 80", 3, what="80 %")
        c.mock_post("/__mock/status", {"state": "ready"})
        p.wait_for("document.getElementById('loading').hidden", 3, what="the banner to go")
        assert p.eval("document.getElementById('send').disabled") is False
        assert c.text("#st-backend").startswith("CPU")
        c.mock_post("/__mock/status", {"state": "failed"})
        c.load()
        assert c.visible("#loading") and c.text("#loading-text").startswith("The model could not be loaded")
        assert p.eval("document.getElementById('send').disabled") is True
        c.shots("23b-model-failed")
    finally:
        c.mock_post("/__mock/status", {"state": "ready", "stage": None, "progress": None})
    c.load()
    assert not c.visible("#loading")


@test(mock_only=True)
def server_errors_are_sentences_in_both_languages(c):
    p = c.page
    c.new_conversation()
    cases = [
        ("engine error now", "The model failed while answering. Send the question again.", "模型回答时出错，请重新发送问题。"),
        # A code the UI does not know: the server's own sentence.
        ("mystery failure", "A test-only failure the UI has no sentence for.",
         "A test-only failure the UI has no sentence for."),
    ]
    for question, en, zh in cases:
        c.ask(question)
        p.wait_for("!document.getElementById('notice').hidden", 3, what="the notice")
        assert c.text("#alert") == en, c.text("#alert")
        c.set_lang("zh")
        assert c.text("#alert") == zh, c.text("#alert")
        c.set_lang("en")
        p.click("#notice-dismiss")
    # The model is loading again (a restart): 503 `loading`, and the banner comes up at once.
    c.ask(pneumonia_question(c))
    try:
        c.mock_post("/__mock/status", {"state": "loading", "stage": "warming up", "progress": 0.9})
        c.ask(pneumonia_question(c))
        p.wait_for("!document.getElementById('notice').hidden", 3, what="the notice")
        assert c.text("#alert") == "The model is still loading; try again in 5 s.", c.text("#alert")
        p.wait_for("!document.getElementById('loading').hidden", 3, what="the loading banner")
        c.set_lang("zh")
        assert c.text("#alert") == "模型仍在加载，请在 5 秒后重试。", c.text("#alert")
        c.set_lang("en")
        assert p.eval("document.getElementById('input').value") == pneumonia_question(c), "question not given back"
        c.shots("24-error-loading")
    finally:
        c.mock_post("/__mock/status", {"state": "ready", "stage": None, "progress": None})
    p.wait_for("document.getElementById('loading').hidden", 3, what="the banner to go")
    p.click("#notice-dismiss")
    # The conversation was deleted behind the page's back (another tab): a sentence and a way on.
    cid = c.conversation_id()
    assert p.eval(f"fetch('/api/conversations/{cid}', {{method: 'DELETE'}}).then(r => r.status)",
                  await_promise=True) == 204
    c.ask("Does it still exist?")
    p.wait_for("!document.getElementById('notice').hidden", 3, what="the notice")
    assert c.text("#alert").startswith("This conversation is no longer on the server"), c.text("#alert")
    assert c.visible("#notice-new")
    c.set_lang("zh")
    assert c.text("#alert") == "服务器上已没有此对话（已过期或已删除），请开始新对话。"
    c.set_lang("en")
    c.shots("24b-error-not-found")
    p.click("#notice-new")
    p.eval("document.getElementById('input').value = ''")


# ---- issue 19: accounts (the daemon side comes later: mock only) -------------

def login_as(c, user, password, expect_ok=True):
    p = c.page
    p.eval("document.getElementById('login-user').value = ''; document.getElementById('login-password').value = '';"
           "document.getElementById('login-msg').hidden = true")
    p.eval("document.getElementById('login-user').focus()")
    p.insert_text(user)
    p.eval("document.getElementById('login-password').focus()")
    p.insert_text(password)
    p.press_enter()
    if expect_ok:
        p.wait_for("document.getElementById('login').hidden && !document.getElementById('workspace').hidden", 5,
                   what="the login to succeed")
    else:
        p.wait_for("!document.getElementById('login-msg').hidden", 5, what="the login message")


def accounts(c, enabled, idle=900):
    c.mock_post("/__mock/auth", {"enabled": enabled, "idle_logout_s": idle, "clear_lockouts": True})
    c.mock_post("/__mock/reset", {})


@test(mock_only=True)
def login_screen_wrong_password_and_lockout(c):
    p = c.page
    try:
        accounts(c, True)
        c.load()
        info = p.eval("""({login: !document.getElementById('login').hidden, work: document.getElementById('workspace').hidden,
            newConv: document.getElementById('new-conversation').hidden, user: document.getElementById('user-box').hidden,
            focus: document.activeElement.id, title: document.getElementById('login-title').textContent})""")
        assert info == {"login": True, "work": True, "newConv": True, "user": True, "focus": "login-user",
                        "title": "Log in"}, info
        assert c.visible("#login .device-note")
        c.shots("25-login")
        c.set_lang("zh")
        assert c.text("#login-title") == "登录" and c.text("#login-submit") == "登录"
        assert c.text("#login .device-note") == DEVICE_NOTE["zh"]
        c.set_lang("en")
        login_as(c, "dr.li", "not-the-password", expect_ok=False)
        assert c.text("#login-msg") == "Wrong user name or password."
        assert p.eval("document.getElementById('login-password').value") == "", "the password stays in the form"
        c.set_lang("zh")
        assert c.text("#login-msg") == "用户名或密码错误。"
        c.set_lang("en")
        c.shots("25b-login-failed")
        login_as(c, "dr.li", "still-wrong", expect_ok=False)
        login_as(c, "dr.li", "wrong-again", expect_ok=False)
        assert c.text("#login-msg") == "Too many failed attempts. Try again in 30 s.", c.text("#login-msg")
        assert p.eval("document.getElementById('login-submit').disabled") is True
        c.set_lang("zh")
        assert c.text("#login-msg") == "失败次数过多，请在 30 秒后重试。"
        c.set_lang("en")
        c.shots("25c-locked-out")
        # Locked: even the right password is refused until the time is up.
        c.load()
        login_as(c, "dr.li", TEST_USERS["dr.li"], expect_ok=False)
        assert c.text("#login-msg").startswith("Too many failed attempts. Try again in")
        outcomes = [o for u, o in c.mock_get("/__mock/state")["logins"] if u == "dr.li"]
        assert outcomes[-4:] == ["failed", "failed", "locked_out", "locked_out"], outcomes
    finally:
        accounts(c, False)
        c.load()
    assert not c.visible("#login") and c.visible("#workspace")


@test(mock_only=True)
def login_logout_and_conversations_per_user(c):
    p = c.page
    try:
        accounts(c, True)
        c.load()
        login_as(c, "dr.li", TEST_USERS["dr.li"])
        assert c.visible("#user-box") and c.text("#user-name") == "dr.li", c.text("#user-box")
        assert c.text("#logout") == "Log out", c.text("#logout")
        c.ask("Dr Li asks about pneumonia.")
        li_id = c.conversation_id()
        assert li_id and c.text("#conv-list .conv-item-title") == "Dr Li asks about pneumonia."
        c.shots("26-logged-in")
        c.set_lang("zh")
        assert c.text("#logout") == "退出登录"
        c.set_lang("en")
        # Another user, through the API with their own session, cannot see, cancel or delete it.
        jar = http.cookiejar.CookieJar()
        opener = urllib.request.build_opener(urllib.request.HTTPCookieProcessor(jar))

        def call(method, path, body=None):
            data = json.dumps(body).encode() if body is not None else None
            req = urllib.request.Request(c.base + path, data=data, method=method,
                                         headers={"Content-Type": "application/json"} if data else {})
            try:
                with opener.open(req, timeout=5) as r:
                    return r.status, (json.load(r) if r.status != 204 else None)
            except urllib.error.HTTPError as e:
                return e.code, json.load(e)

        assert call("GET", "/api/conversations")[1]["error"]["code"] == "login_required"
        assert call("POST", "/api/login", {"user": "dr.wang", "password": TEST_USERS["dr.wang"]})[0] == 200
        assert call("GET", "/api/conversations") == (200, {"conversations": []})
        for method, path, body in (("GET", f"/api/conversations/{li_id}", None),
                                   ("DELETE", f"/api/conversations/{li_id}", None),
                                   ("POST", "/api/chat/cancel", {"conversation_id": li_id}),
                                   ("POST", f"/api/conversations/{li_id}/export", {"format": "markdown"}),
                                   ("POST", "/api/chat", {"conversation_id": li_id, "message": "mine now",
                                                          "thinking": False, "style": None, "language": "en"})):
            status, doc = call(method, path, body)
            assert (status, doc["error"]["code"]) == (404, "conversation_not_found"), (method, path, status, doc)
        assert li_id in c.mock_get("/__mock/state")["conversations"]
        # Logging out returns to the login screen, forgets the view and ends the session.
        p.click("#logout")
        p.wait_for("!document.getElementById('login').hidden", 3, what="the login screen")
        assert c.turn_count() == 0 and p.eval("document.getElementById('input').value") == ""
        assert p.eval("document.querySelectorAll('#conv-list .conv-item').length") == 0
        assert p.eval("fetch('/api/conversations').then(r => r.status)", await_promise=True) == 401
        assert li_id not in c.mock_get("/__mock/state")["conversations"], "conversations outlive the logout"
        login_as(c, "dr.wang", TEST_USERS["dr.wang"])
        assert c.text("#user-name") == "dr.wang"
        assert p.eval("document.querySelectorAll('#conv-list .conv-item').length") == 0
        assert c.visible("#conv-empty")
    finally:
        accounts(c, False)
        c.load()


@test(mock_only=True)
def idle_logout_returns_to_the_login_screen(c):
    p = c.page
    try:
        accounts(c, True, idle=1)
        c.load()
        login_as(c, "dr.li", TEST_USERS["dr.li"])
        p.eval("document.getElementById('input').focus()")
        p.insert_text("A question typed before a long pause.")
        time.sleep(1.3)
        p.press_enter()
        p.wait_for("!document.getElementById('login').hidden", 3, what="the login screen after the idle timeout")
        assert c.text("#login-msg") == "Your session has ended. Log in again."
        assert p.eval("document.getElementById('input').value") == "", "the typed question outlived the session"
        assert c.turn_count() == 0
        c.set_lang("zh")
        assert c.text("#login-msg") == "会话已结束，请重新登录。"
        c.set_lang("en")
        c.shots("27-idle-logout")
        # The status poll finds it too: after logging in again and waiting, the page returns by itself.
        login_as(c, "dr.li", TEST_USERS["dr.li"])
        time.sleep(1.2)
        p.eval("document.dispatchEvent(new Event('visibilitychange'))")
        p.wait_for("!document.getElementById('login').hidden", 3, what="the status poll to notice")
    finally:
        accounts(c, False)
        c.load()


# ---- issue 17: images with a question -----------------------------------------

FIXTURES = os.path.join(REPO, "tests", "fixtures")
IMG_PNG = os.path.join(FIXTURES, "vision_images", "rgb_300x220.png")
IMG_PNG_GREY = os.path.join(FIXTURES, "vision_images", "grey_97x141.png")
IMG_PNG_RGBA = os.path.join(FIXTURES, "vision_images", "rgba_64x40.png")
IMG_JPG = os.path.join(FIXTURES, "vision_images", "photo_420_257x511.jpg")
DCM_CT = os.path.join(FIXTURES, "vision_dicom", "ct_rescaled.dcm")
DCM_MR = os.path.join(FIXTURES, "vision_dicom", "mr_window.dcm")
DCM_TWO_FRAMES = os.path.join(FIXTURES, "vision_dicom", "ct_two_frames.dcm")
TILES = "#attachments .attachment"
DATA_PREFIX = {"png": "data:image/png;base64,", "jpeg": "data:image/jpeg;base64,",
               "dicom": "data:application/dicom;base64,"}


def file_bytes(path):
    with open(path, "rb") as f:
        return f.read()


def sha256(path):
    return hashlib.sha256(file_bytes(path)).hexdigest()


def attach_done(c):
    return int(c.page.eval("document.documentElement.dataset.attachDone || '0'"))


def wait_attached(c, before, what="the files to be read"):
    c.page.wait_for(f"Number(document.documentElement.dataset.attachDone || 0) > {before}", 10, what=what)


def choose_files(c, paths):
    """Picks `paths` in the attach button's file input, as the file dialog does."""
    before = attach_done(c)
    obj = c.page.send("Runtime.evaluate", {"expression": "document.getElementById('attach-input')"})["result"]
    c.page.send("DOM.setFileInputFiles", {"files": paths, "objectId": obj["objectId"]})
    wait_attached(c, before)


def paste_files(c, files, text=None, target="#input"):
    """Pastes [(name, type, path)] (and `text`) with a real ClipboardEvent and
    DataTransfer; returns whether the page prevented the default paste."""
    payload = [[name, mime, base64.b64encode(file_bytes(path)).decode()] for name, mime, path in files]
    before = attach_done(c)
    prevented = c.page.eval(f"""(() => {{
        const dt = new DataTransfer();
        for (const [name, type, b64] of {json.dumps(payload)}) {{
            const bytes = Uint8Array.from(atob(b64), (ch) => ch.charCodeAt(0));
            dt.items.add(new File([bytes], name, {{type}}));
        }}
        const text = {json.dumps(text)};
        if (text !== null) dt.setData('text/plain', text);
        const ev = new ClipboardEvent('paste', {{clipboardData: dt, bubbles: true, cancelable: true}});
        document.querySelector({json.dumps(target)}).dispatchEvent(ev);
        return ev.defaultPrevented;
    }})()""")
    wait_attached(c, before, "the pasted files to be read")
    return prevented


def drag_files(c, paths, selector="#input", drop=True):
    """Drags files from disk over `selector` with the browser's own drag and
    drop (Input.dispatchDragEvent); drops them when `drop`."""
    box = c.page.eval(f"""(() => {{ const r = document.querySelector({json.dumps(selector)}).getBoundingClientRect();
        return {{x: r.left + r.width / 2, y: r.top + r.height / 2}}; }})()""")
    data = {"items": [], "files": list(paths), "dragOperationsMask": 1}
    for kind in ("dragEnter", "dragOver") + (("drop",) if drop else ()):
        c.page.send("Input.dispatchDragEvent", {"type": kind, "x": box["x"], "y": box["y"], "data": data})


def tiles(c):
    return c.page.eval(f"""[...document.querySelectorAll('{TILES}')].map((li) => {{
        const img = li.querySelector('img.att-thumb'), tile = li.querySelector('.att-tile');
        return {{kind: li.dataset.kind, name: li.querySelector('.att-name').textContent,
                 img: img ? {{src: img.src.slice(0, 23), w: img.naturalWidth, h: img.naturalHeight, alt: img.alt}} : null,
                 tile: tile ? tile.textContent : null}}; }})""")


def tile_names(c):
    return [x["name"] for x in tiles(c)]


def attach_msg(c):
    return c.page.eval("document.getElementById('attach-msg').hidden ? '' : "
                       "[...document.querySelectorAll('#attach-msg p')].map((p) => p.textContent).join('\\n')")


def clear_tiles(c):
    while c.page.eval(f"document.querySelectorAll('{TILES}').length"):
        c.page.eval(f"document.querySelector('{TILES} .att-remove').click()")


def decode_data_url(url):
    head, b64 = url.split(",", 1)
    return head + ",", base64.b64decode(b64, validate=True)


@test()
def attach_button_follows_model_images(c):
    # Shown only when /api/status says the loaded model reads images.
    p = c.page
    c.load()
    status = p.eval("fetch('/api/status').then(r => r.json())", await_promise=True)
    reads = (status.get("model") or {}).get("images") is True
    assert c.visible("#attach") == reads, (status.get("model"), c.visible("#attach"))
    assert not c.visible("#attachments") and not c.visible("#attach-msg")
    if not c.mock:
        return
    assert reads, "the mock's model reads images by default"
    try:
        for value in (False, None):  # false, then absent (a daemon before images)
            c.mock_post("/__mock/status", {"images": value})
            c.load()
            assert not c.visible("#attach"), value
            # Dropped files are not taken (the drop is refused, the page stays), pasted ones neither.
            drag_files(c, [IMG_PNG])
            assert not p.eval("document.getElementById('composer').classList.contains('dropping')")
            assert paste_files(c, [("image.png", "image/png", IMG_PNG)]) is True
            assert tiles(c) == [] and attach_msg(c) == \
                "The model loaded now does not read images, so nothing was attached.", attach_msg(c)
            c.set_lang("zh")
            assert attach_msg(c) == "当前加载的模型不能读取图像，因此未附加任何文件。", attach_msg(c)
            c.set_lang("en")
            assert p.eval("document.documentElement.dataset.ready") == "1", "the drop navigated away"
        # A model without images loaded while images wait in the composer: they go, with a sentence.
        c.mock_post("/__mock/status", {"images": True})
        c.load()
        choose_files(c, [IMG_PNG])
        assert tile_names(c) == ["rgb_300x220.png"]
        c.mock_post("/__mock/status", {"images": False})
        p.eval("document.dispatchEvent(new Event('visibilitychange'))")
        p.wait_for("document.getElementById('attach').hidden", 3, what="the attach button to go")
        assert tiles(c) == [] and not c.visible("#attachments")
        assert attach_msg(c) == "The model loaded now does not read images; the attached images were removed."
    finally:
        c.mock_post("/__mock/status", {"images": True})
    c.load()
    assert c.visible("#attach") and c.text("#attach") == "Attach image"


@test(mock_only=True)
def attach_by_button_shows_thumbnails_and_removes(c):
    p = c.page
    c.load()
    c.new_conversation()
    choose_files(c, [IMG_PNG, IMG_JPG, DCM_CT])
    got = tiles(c)
    assert [x["name"] for x in got] == ["rgb_300x220.png", "photo_420_257x511.jpg", "ct_rescaled.dcm"], got
    assert [x["kind"] for x in got] == ["png", "jpeg", "dicom"], got
    # Real thumbnails of the decoded pixels (longest side 192, the aspect kept) ...
    assert got[0]["img"] == {"src": "data:image/jpeg;base64,", "w": 192, "h": 141, "alt": "rgb_300x220.png"}, got[0]
    assert got[1]["img"] == {"src": "data:image/jpeg;base64,", "w": 97, "h": 192, "alt": "photo_420_257x511.jpg"}, \
        got[1]
    # ... and for DICOM a labelled tile with the file name, not a rendering.
    assert got[2]["img"] is None and got[2]["tile"] == "DICOMno preview", got[2]
    assert c.visible("#attachments") and not c.visible("#attach-msg")
    c.shots("28-attachments")
    c.set_lang("zh")
    assert p.eval(f"[...document.querySelectorAll('{TILES} .att-remove')].map(b => b.textContent)") == ["移除"] * 3
    assert c.text(f"{TILES}[data-kind=dicom] .att-note") == "无预览" and c.text("#attach") == "附加图像"
    c.set_lang("en")
    # Remove the middle one: the others keep their order, focus goes to the next Remove.
    p.click(f"{TILES}:nth-child(2) .att-remove")
    assert tile_names(c) == ["rgb_300x220.png", "ct_rescaled.dcm"]
    assert p.eval("document.activeElement.closest('.attachment').dataset.kind") == "dicom"
    # The same file can be chosen again after its removal.
    p.click(f"{TILES}:nth-child(1) .att-remove")
    choose_files(c, [IMG_PNG])
    assert tile_names(c) == ["ct_rescaled.dcm", "rgb_300x220.png"]
    clear_tiles(c)
    assert not c.visible("#attachments") and p.eval("document.activeElement.id") == "input"


@test(mock_only=True)
def paste_and_drop_attach_images(c):
    p = c.page
    c.load()
    # A pasted screenshot: attached, and nothing else pasted.
    assert paste_files(c, [("image.png", "image/png", IMG_PNG_GREY)]) is True
    assert tile_names(c) == ["image.png"] and tiles(c)[0]["img"]["w"] == 97, tiles(c)
    # An image copied with text: both arrive (the text by the browser's own paste).
    assert paste_files(c, [("photo.jpg", "image/jpeg", IMG_JPG)], text="chest film") is False
    assert tile_names(c) == ["image.png", "photo.jpg"]
    # Files dragged over the composer: it says where to drop them ...
    drag_files(c, [DCM_MR, IMG_PNG], drop=False)
    assert p.eval("document.getElementById('composer').classList.contains('dropping')")
    assert c.visible("#drop-hint") and c.text("#drop-hint") == "Drop PNG, JPEG or DICOM images here"
    c.shots("29-drop-hint")
    c.set_lang("zh")
    assert c.text("#drop-hint") == "将 PNG、JPEG 或 DICOM 图像拖放到此处"
    c.set_lang("en")
    # ... and takes them in order when dropped.
    drag_files(c, [DCM_MR, IMG_PNG])
    p.wait_for(f"document.querySelectorAll('{TILES}').length === 4", 5, what="the dropped files")
    assert tile_names(c) == ["image.png", "photo.jpg", "mr_window.dcm", "rgb_300x220.png"]
    assert not c.visible("#drop-hint")
    assert not p.eval("document.getElementById('composer').classList.contains('dropping')")
    # Dropped beside the composer: not attached, and the browser does not open the file in place of the page.
    clear_tiles(c)
    drag_files(c, [IMG_PNG], selector="#conversation")
    time.sleep(0.3)
    assert tiles(c) == [] and p.eval("document.documentElement.dataset.ready") == "1"
    assert p.eval("location.pathname") == "/"


@test(mock_only=True)
def image_limits_are_refused_in_both_languages(c):
    p = c.page
    c.load()
    # Five chosen: four attached, the fifth refused by name.
    choose_files(c, [IMG_PNG, IMG_JPG, DCM_CT, IMG_PNG_GREY, IMG_PNG_RGBA])
    assert tile_names(c) == ["rgb_300x220.png", "photo_420_257x511.jpg", "ct_rescaled.dcm", "grey_97x141.png"]
    assert attach_msg(c) == "Not attached: rgba_64x40.png. At most 4 images can go with one message.", attach_msg(c)
    c.set_lang("zh")
    assert attach_msg(c) == "未附加：rgba_64x40.png。每条消息最多可附带 4 张图像。", attach_msg(c)
    c.set_lang("en")
    c.shots("30-too-many-images")
    paste_files(c, [("image.png", "image/png", IMG_PNG_RGBA)])
    assert attach_msg(c) == "Not attached: image.png. At most 4 images can go with one message."
    assert len(tiles(c)) == 4
    clear_tiles(c)
    # 20 MiB is allowed, a byte more is not; other types and undecodable images are refused.
    tmp = tempfile.mkdtemp(prefix="medgemma-attach-")
    try:
        dicom = file_bytes(DCM_CT)
        exact = os.path.join(tmp, "exactly-20-mib.dcm")
        over = os.path.join(tmp, "over-20-mib.dcm")
        for path, size in ((exact, 20 * 1024 * 1024), (over, 20 * 1024 * 1024 + 1)):
            with open(path, "wb") as f:
                f.write(dicom)
                f.truncate(size)
        notes = os.path.join(tmp, "notes.txt")
        with open(notes, "w") as f:
            f.write("not an image")
        broken = os.path.join(tmp, "broken.png")
        with open(broken, "wb") as f:
            f.write(file_bytes(IMG_PNG)[:400])  # the PNG signature, then cut off
        choose_files(c, [over, notes, broken, exact])
        assert tile_names(c) == ["exactly-20-mib.dcm"], tiles(c)
        assert attach_msg(c).split("\n") == [
            "Not attached: over-20-mib.dcm is larger than 20 MiB. Send a smaller image (one slice, or a lower resolution).",
            "Not attached: notes.txt is not a PNG, JPEG or DICOM file.",
            "Not attached: broken.png could not be read as an image.",
        ], attach_msg(c)
        c.set_lang("zh")
        assert attach_msg(c).split("\n") == [
            "未附加：over-20-mib.dcm 超过 20 MiB。请发送更小的图像（单个切片或较低分辨率）。",
            "未附加：notes.txt 不是 PNG、JPEG 或 DICOM 文件。",
            "未附加：无法将 broken.png 读取为图像。",
        ], attach_msg(c)
        c.set_lang("en")
        c.shots("30b-refused-files")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    clear_tiles(c)
    assert not c.visible("#attach-msg"), "the sentences outlive the images they were about"
    # Images alone are not a question: the text is still required.
    choose_files(c, [IMG_PNG])
    sent = len(c.chat_bodies)
    p.eval("document.getElementById('input').value = ''; document.getElementById('input').focus()")
    p.press_enter()
    assert attach_msg(c) == "Type a question to send with the images.", attach_msg(c)
    c.set_lang("zh")
    assert attach_msg(c) == "请输入与图像一起发送的问题。"
    c.set_lang("en")
    time.sleep(0.2)
    assert len(c.chat_bodies) == sent and tile_names(c) == ["rgb_300x220.png"]
    clear_tiles(c)


@test(mock_only=True)
def images_are_sent_with_the_question_then_cleared(c):
    p = c.page
    c.load()
    c.new_conversation()
    choose_files(c, [IMG_PNG, DCM_CT])
    paste_files(c, [("photo.jpg", "image/jpeg", IMG_JPG)])
    order = [IMG_PNG, DCM_CT, IMG_JPG]
    question = "What does this chest image show?"
    c.ask(question)
    body = c.chat_bodies[-1]
    assert body["message"] == question and len(body["images"]) == 3, {k: v for k, v in body.items() if k != "images"}
    for url, path, kind in zip(body["images"], order, ("png", "dicom", "jpeg")):
        head, data = decode_data_url(url)
        assert head == DATA_PREFIX[kind] and data == file_bytes(path), (head, path)
    got = c.mock_get("/__mock/state")["chat_bodies"][-1]["images"]
    assert [(x["mime"], x["sha256"]) for x in got] == [
        ("image/png", sha256(IMG_PNG)), ("application/dicom", sha256(DCM_CT)), ("image/jpeg", sha256(IMG_JPG))], got
    assert c.text(f"{LAST_Q} .answer").startswith("Images read: PNG, DICOM, JPEG."), c.text(f"{LAST_Q} .answer")
    # Sent, so the composer is empty again; the question shows its thumbnails.
    assert tiles(c) == [] and not c.visible("#attachments") and p.eval("document.getElementById('input').value") == ""
    shown = p.eval(f"""[...document.querySelectorAll('{LAST_Q} .turn-image')].map((li) => {{
        const img = li.querySelector('img');
        return {{name: li.querySelector('.att-name').textContent, img: img ? img.src.slice(0, 23) : null,
                 w: img ? img.naturalWidth : 0, tile: (li.querySelector('.att-tile') || {{}}).textContent || null}}; }})""")
    assert shown == [
        {"name": "rgb_300x220.png", "img": "data:image/jpeg;base64,", "w": 192, "tile": None},
        {"name": "ct_rescaled.dcm", "img": None, "w": 0, "tile": "DICOMno preview"},
        {"name": "photo.jpg", "img": "data:image/jpeg;base64,", "w": 97, "tile": None},
    ], shown
    assert p.eval(f"document.querySelector('{LAST_Q} .turn-images').getAttribute('aria-label')") == \
        "Images sent with this question"
    p.eval(f"document.querySelector('{LAST_Q} .msg-user').scrollIntoView({{block: 'start'}})")
    c.shots("31-sent-images")
    # Edit-and-resend brings the images back into the composer; Send replaces them too.
    p.click(f"{LAST_Q} .edit")
    assert tile_names(c) == ["rgb_300x220.png", "ct_rescaled.dcm", "photo.jpg"]
    p.click(f"{TILES}:nth-child(2) .att-remove")
    p.eval("document.getElementById('input').select()")
    p.insert_text("And on this film alone?")
    p.press_enter()
    p.wait_for("document.documentElement.dataset.busy === '0'", 15, what="the edited answer")
    body = c.chat_bodies[-1]
    assert body["replace_last"] is True and [decode_data_url(u)[1] for u in body["images"]] == \
        [file_bytes(IMG_PNG), file_bytes(IMG_JPG)], {k: v for k, v in body.items() if k != "images"}
    assert p.eval(f"[...document.querySelectorAll('{LAST_Q} .turn-image .att-name')].map(e => e.textContent)") == \
        ["rgb_300x220.png", "photo.jpg"]
    assert c.turn_count() == 1 and tiles(c) == []
    # Regenerate asks again without sending them (the daemon has the question); they stay shown.
    p.click(f"{LAST_Q} .regenerate")
    p.wait_for("document.documentElement.dataset.busy === '0'", 15, what="the regenerated answer")
    assert c.chat_bodies[-1]["regenerate"] is True and "images" not in c.chat_bodies[-1]
    assert p.eval(f"document.querySelectorAll('{LAST_Q} .turn-image').length") == 2
    # A question without images sends no "images" field; the earlier thumbnails stay.
    c.ask("Any follow-up advice?")
    assert "images" not in c.chat_bodies[-1], c.chat_bodies[-1]
    assert p.eval("document.querySelectorAll('#turns .turn-image').length") == 2
    assert p.eval(f"document.querySelectorAll('{LAST_Q} .turn-images').length") == 0


@test(vision=True)
def an_image_question_is_answered(c):
    """Against any server whose model reads images: the mock (scripted
    answer), or the real daemon on a vision model (run-daemon-vision.sh):
    the image goes through the real decoder, tower and image prefill."""
    p = c.page
    c.load()
    c.new_conversation()
    choose_files(c, [IMG_PNG])
    assert tile_names(c) == ["rgb_300x220.png"]
    c.ask("What does this image show?", timeout=120)
    # Finished with its counts, no error; the question keeps its thumbnail.
    meta = c.text(f"{LAST_Q} .meta")
    assert "tokens/s" in meta, meta
    errors = p.eval(f"[...document.querySelectorAll('{LAST_Q} .turn-note.error')].map(e => e.textContent)")
    assert errors == [], errors
    assert p.eval(f"[...document.querySelectorAll('{LAST_Q} .turn-image .att-name')].map(e => e.textContent)") == \
        ["rgb_300x220.png"]
    assert tiles(c) == []
    c.shots("33-image-answered")


@test(mock_only=True)
def image_errors_keep_the_question_and_images(c):
    p = c.page
    c.load()
    c.new_conversation()
    # A DICOM file of two frames: the server refuses it; nothing is lost.
    choose_files(c, [IMG_PNG, DCM_TWO_FRAMES])
    question = "Compare these two CT slices."
    c.ask(question)
    p.wait_for("!document.getElementById('notice').hidden", 3, what="the notice")
    detail = "Image 2 is a DICOM file with 2 frames; send a single frame (one slice)."
    assert c.text("#alert") == "The server could not use an image: " + detail, c.text("#alert")
    assert p.eval("document.getElementById('input').value") == question
    assert tile_names(c) == ["rgb_300x220.png", "ct_two_frames.dcm"] and c.turn_count() == 0
    c.set_lang("zh")
    assert c.text("#alert") == "服务器无法使用其中一张图像：" + detail, c.text("#alert")
    c.set_lang("en")
    c.shots("32-image-refused")
    # The server's own limits (lower than the page's here): each code has its sentence, and the composer stays.
    try:
        for limits, code_text in (({"max_images": 1}, "Too many images for one message: "
                                                      "This message has 2 images; the limit is 1."),
                                  ({"max_image_bytes": 65536}, "An image is too large: "
                                                               "Image 1 is larger than the limit of 0.0625 MiB per image.")):
            c.mock_post("/__mock/status", limits)
            p.click("#notice-dismiss")
            p.eval("document.getElementById('input').focus()")
            p.press_enter()
            p.wait_for("!document.getElementById('notice').hidden", 3, what="the notice")
            assert c.text("#alert") == code_text, c.text("#alert")
            assert p.eval("document.getElementById('input').value") == question
            assert tile_names(c) == ["rgb_300x220.png", "ct_two_frames.dcm"]
            c.mock_post("/__mock/status", {"max_images": 4, "max_image_bytes": 20 * 1024 * 1024})
    finally:
        c.mock_post("/__mock/status", {"max_images": 4, "max_image_bytes": 20 * 1024 * 1024})
    c.set_lang("zh")
    assert c.text("#alert").startswith("图像过大："), c.text("#alert")
    c.set_lang("en")
    # A body over the server's limit: with images, the sentence says to cut those.
    try:
        c.mock_post("/__mock/status", {"max_body_bytes": 64 * 1024})
        p.click("#notice-dismiss")
        p.eval("document.getElementById('input').focus()")
        p.press_enter()
        p.wait_for("!document.getElementById('notice').hidden", 3, what="the notice")
        assert c.text("#alert") == ("The question and its images are too large together for the server. "
                                    "Send fewer or smaller images."), c.text("#alert")
        c.set_lang("zh")
        assert c.text("#alert") == "问题与图像合计超出服务器的上限。请减少图像数量或发送更小的图像。"
        c.set_lang("en")
        assert p.eval("document.getElementById('input').value") == question
        assert tile_names(c) == ["rgb_300x220.png", "ct_two_frames.dcm"]
    finally:
        c.mock_post("/__mock/status", {"max_body_bytes": 128 * 1024 * 1024})
    p.click("#notice-dismiss")
    # Without the refused file it goes through.
    p.click(f"{TILES}:nth-child(2) .att-remove")
    p.eval("document.getElementById('input').focus()")
    p.press_enter()
    p.wait_for("document.documentElement.dataset.busy === '0' && document.querySelectorAll('#turns > .turn').length === 1",
               15, what="the answer")
    assert not c.visible("#notice") and tiles(c) == []
    assert len(c.chat_bodies[-1]["images"]) == 1 and c.text(f"{LAST_Q} .answer").startswith("Images read: PNG.")


@test(mock_only=True)
def images_never_reach_storage_and_leave_with_the_user(c):
    p = c.page
    # After the tests above attached, sent and refused images: no storage API holds any.
    stored = p.eval("""(async () => {
        const entries = (s) => Object.keys(s).map((k) => [k, s.getItem(k)]);
        const dbs = indexedDB.databases ? await indexedDB.databases() : [];
        const cacheNames = self.caches ? await caches.keys() : [];
        const est = await navigator.storage.estimate();
        return {local: entries(localStorage), session: entries(sessionStorage), dbs: dbs.map((d) => d.name),
                caches: cacheNames, details: est.usageDetails || {}, cookie: document.cookie};
    })()""", await_promise=True)
    assert {k for k, _ in stored["local"]} <= {"medgemma.lang", "medgemma.theme", "medgemma.reasoning"}, stored["local"]
    assert all(len(v or "") < 16 for _, v in stored["local"]), stored["local"]
    assert stored["session"] == [] and stored["dbs"] == [] and stored["caches"] == [], stored
    assert not any(stored["details"].get(k) for k in ("indexedDB", "caches", "serviceWorkerRegistrations")), stored
    assert "base64" not in json.dumps(stored)
    # Logging out takes the waiting images with it: the next person sees none.
    try:
        accounts(c, True)
        c.load()
        login_as(c, "dr.li", TEST_USERS["dr.li"])
        choose_files(c, [IMG_PNG, DCM_CT])
        p.eval("document.getElementById('input').focus()")
        p.insert_text("A question about these images.")
        p.click("#logout")
        p.wait_for("!document.getElementById('login').hidden", 3, what="the login screen")
        assert tiles(c) == [] and not c.visible("#attachments")
        login_as(c, "dr.wang", TEST_USERS["dr.wang"])
        assert tiles(c) == [] and p.eval("document.getElementById('input').value") == ""
    finally:
        accounts(c, False)
        c.load()


@test()
def features_follow_what_the_daemon_offers(c):
    # A daemon from before the conversation API (no "state" in /api/status)
    # refuses unknown chat fields and has no list, export, styles or login:
    # the page sends it only what it knows and hides the rest.
    p = c.page
    c.load()
    status = p.eval("fetch('/api/status').then(r => r.json())", await_promise=True)
    modern = isinstance(status.get("state"), str)
    c.new_conversation()
    c.ask("Say OK." if not c.mock else "A short question about pneumonia.", timeout=answer_timeout(c))
    body = c.chat_bodies[-1]
    if modern:
        assert {"conversation_id", "message", "thinking", "style", "language"} <= set(body), body
    else:
        assert set(body) <= {"conversation_id", "message", "thinking", "max_new_tokens", "temperature"}, body
    assert c.visible("#sidebar") == modern
    assert c.visible("#conv-bar") == modern
    assert c.visible("#style-picker") == (modern and bool(status.get("styles")))
    assert p.eval(f"!document.querySelector('{LAST_Q} .regenerate').hidden") == modern
    assert p.eval(f"!document.querySelector('{LAST_Q} .edit').hidden") == modern
    assert not c.visible("#login") and not c.visible("#user-box")


@test()
def only_same_origin_requests_and_no_errors(c):
    foreign = [u for u in c.requests if not (u.startswith(c.origin + "/") or u.startswith("data:"))]
    assert c.requests, "no requests were observed"
    assert not foreign, foreign
    assert c.page.eval("window.__csp.length") == 0, c.page.eval("window.__csp")
    assert not c.console_errors and not c.exceptions and not c.log_errors, \
        (c.console_errors, c.exceptions, c.log_errors)
    # HTTP error statuses (the 503 test; a cancel that arrives after the stream
    # ended may get a 404) and URLs the harness blocked are expected; any
    # other network failure is not.
    unexpected = [t for t in c.network_log
                  if "the server responded with a status of" not in t and "ERR_BLOCKED_BY_CLIENT" not in t]
    assert not unexpected, unexpected
    if c.mock:
        assert c.mock_get("/__mock/state")["origin_rejects"] == 0


# ---------------------------------------------------------------------------

def start_mock(*flags):
    proc = subprocess.Popen([sys.executable, os.path.join(HERE, "mock_server.py"), "--web", WEB, *flags],
                            stdout=subprocess.PIPE, text=True)
    line = proc.stdout.readline()
    m = re.match(r"LISTENING (\d+)", line or "")
    if not m:
        proc.kill()
        raise SystemExit("mock server did not start")
    return proc, f"http://127.0.0.1:{m.group(1)}"


def main():
    ap = argparse.ArgumentParser(description="MedGemma web UI browser tests")
    ap.add_argument("--base-url", help="a running medgemmad (default: start the mock server)")
    ap.add_argument("-k", help="run only tests whose name contains this")
    ap.add_argument("--new-api", choices=("auto", "on", "off"), default="auto",
                    help="against a daemon: run the tests that need the conversation API "
                         "(auto: when /api/status has a 'state' field)")
    ap.add_argument("--legacy-mock", action="store_true",
                    help="treat the mock in its --legacy mode as a daemon of before the conversation API "
                         "(checks the UI still chats with one)")
    args = ap.parse_args()

    # Each run's screenshots only: a stale one must not pass for this run's.
    if not args.k:
        for old in glob.glob(os.path.join(ARTIFACTS, "*.png")):
            os.remove(old)
    mock_proc = None
    if args.base_url:
        base, mock = args.base_url, False
    elif args.legacy_mock:
        mock_proc, base = start_mock("--legacy")
        mock = False
    else:
        mock_proc, base = start_mock()
        mock = True
    passed = failed = skipped = 0
    browser = None
    start = time.time()
    try:
        browser = Browser()
        page = browser.page
        ctx = Ctx(page, base, mock)
        for domain in ("Runtime", "Log", "Network", "Page"):
            page.send(domain + ".enable")
        page.send("Emulation.setDeviceMetricsOverride",
                  {"width": 1366, "height": 768, "deviceScaleFactor": 1, "mobile": False})
        page.send("Browser.grantPermissions", {"permissions": ["clipboardReadWrite", "clipboardSanitizedWrite"],
                                               "origin": ctx.origin})
        page.send("Page.addScriptToEvaluateOnNewDocument", {"source": """
            window.__csp = [];
            document.addEventListener('securitypolicyviolation',
              (e) => window.__csp.push(e.violatedDirective + ' ' + e.blockedURI));
        """})
        ctx.load()
        new_api = args.new_api == "on" or mock
        if not mock and args.new_api == "auto":
            status = page.eval("fetch('/api/status').then(r => r.json())", await_promise=True)
            new_api = isinstance(status, dict) and isinstance(status.get("state"), str)
        status = page.eval("fetch('/api/status').then(r => r.json())", await_promise=True)
        reads_images = isinstance(status, dict) and bool((status.get("model") or {}).get("images"))
        if not mock:
            print(f"daemon at {base}: conversation API tests {'on' if new_api else 'off'}")
        for name, fn, mock_only, needs_api in TESTS:
            if args.k and args.k not in name:
                continue
            if mock_only and not mock:
                skipped += 1
                print(f"SKIP {name} (needs the mock server)")
                continue
            if name in VISION_TESTS and not reads_images:
                skipped += 1
                print(f"SKIP {name} (the model does not read images; tests/browser/run-daemon-vision.sh serves one)")
                continue
            if needs_api and not new_api:
                skipped += 1
                print(f"SKIP {name} (needs the conversation API; --new-api on runs it anyway)")
                continue
            budget = TIME_BUDGET_S["mock" if mock else "daemon"]
            if time.time() - start > budget:
                failed += 1
                print(f"FAIL {name}: the run is over its {budget} s budget")
                continue
            t0 = time.time()
            try:
                fn(ctx)
                passed += 1
                print(f"PASS {name} ({time.time() - t0:.1f} s)")
            except Exception as e:  # noqa: BLE001 - every failure is reported the same way
                failed += 1
                print(f"FAIL {name} ({time.time() - t0:.1f} s): {type(e).__name__}: {e}")
                if os.environ.get("VERBOSE"):
                    traceback.print_exc()
                try:
                    ctx.shot(f"fail-{name}.png")
                except Exception:  # noqa: BLE001
                    pass
    except Exception as e:  # noqa: BLE001
        failed += 1
        print(f"FAIL setup: {type(e).__name__}: {e}")
    finally:
        if browser:
            browser.close()
        if mock_proc:
            mock_proc.terminate()
            mock_proc.wait(5)
    print(f"screenshots: {ARTIFACTS}")
    line = f"{passed} passed, {failed} failed"
    if skipped:
        line += f", {skipped} skipped"
    print(line)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
