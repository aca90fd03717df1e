#!/usr/bin/env python3
"""Browser tests of the MedGemma web UI, in headless Chromium over CDP.

Without --base-url the tests start mock_server.py (scripted answers, the
daemon's CSP) and run every test. With --base-url they run against a real
medgemmad and skip the tests that need scripted answers.

Screenshots (1366×768) go to artifacts/browser/. The last line printed is
"N passed, N failed[, N skipped]"; the exit status is non-zero on failure.
"""

import argparse
import json
import os
import re
import subprocess
import sys
import time
import traceback
import urllib.request
from urllib.parse import urlsplit

from cdp import Browser

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(os.path.dirname(HERE))
WEB = os.path.join(REPO, "web")
ARTIFACTS = os.path.join(REPO, "artifacts", "browser")
TIME_BUDGET_S = 110

DISCLAIMER_EN = "MedGemma output supports and does not replace clinical judgement."
DISCLAIMER_ZH = "MedGemma 的输出仅供辅助，不能替代临床判断。"

TESTS = []


def test(mock_only=False):
    def wrap(fn):
        TESTS.append((fn.__name__, fn, mock_only))
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
        page.on(self.on_event)

    def on_event(self, method, p):
        if method == "Network.requestWillBeSent":
            self.requests.append(p["request"]["url"])
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

    def shot(self, name):
        os.makedirs(ARTIFACTS, exist_ok=True)
        path = os.path.join(ARTIFACTS, name)
        self.page.screenshot(path)
        return path


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
    assert res["scripts"] == ["/i18n.js", "/markdown.js", "/app.js"], res["scripts"]
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
        deadline = time.time() + 3
        while True:
            st = c.mock_get("/__mock/state")
            if st["cancels"] and st["disconnects"] >= 1:
                break
            assert time.time() < deadline, f"the mock saw no cancel and disconnect: {st}"
            time.sleep(0.1)
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
    cid = p.eval("fetch('/__mock/state').then(r => r.json())", await_promise=True)
    p.click("#notice-new")
    p.wait_for("document.querySelectorAll('#turns > .turn').length === 0", 3, what="the view to clear")
    assert c.visible("#empty-state") and not c.visible("#notice")
    assert c.text("#ctx-text") == "Context: empty"
    deadline = time.time() + 3
    while not c.mock_get("/__mock/state")["deletes"]:
        assert time.time() < deadline, "no DELETE /api/conversations/{id} seen"
        time.sleep(0.1)
    assert cid is not None


@test()
def new_conversation_button_clears_view(c):
    p = c.page
    if c.mock:
        c.ask("Another question")
    elif not p.eval("document.querySelectorAll('#turns > .turn').length"):
        c.ask("Say OK.", timeout=75)
    deletes_before = len(c.mock_get("/__mock/state")["deletes"]) if c.mock else 0
    p.click("#new-conversation")
    p.wait_for("document.querySelectorAll('#turns > .turn').length === 0", 3, what="the view to clear")
    assert c.visible("#empty-state")
    if c.mock:
        deadline = time.time() + 3
        while len(c.mock_get("/__mock/state")["deletes"]) <= deletes_before:
            assert time.time() < deadline, "no DELETE seen"
            time.sleep(0.1)


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

def start_mock():
    proc = subprocess.Popen([sys.executable, os.path.join(HERE, "mock_server.py"), "--web", WEB],
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
    args = ap.parse_args()

    mock_proc = None
    if args.base_url:
        base, mock = args.base_url, False
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
        for name, fn, mock_only in TESTS:
            if args.k and args.k not in name:
                continue
            if mock_only and not mock:
                skipped += 1
                print(f"SKIP {name} (needs the mock server)")
                continue
            if time.time() - start > TIME_BUDGET_S:
                failed += 1
                print(f"FAIL {name}: the run is over its {TIME_BUDGET_S} s budget")
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
