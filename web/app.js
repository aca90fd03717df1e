// MedGemma web UI: status bar, streaming chat, context meter.
// Talks only to its own origin: /api/status, /api/chat (SSE over fetch),
// /api/chat/cancel and /api/conversations/{id}.
'use strict';

(function () {
  const { t } = window.I18n;
  const STATUS_POLL_MS = 10000;
  const STATUS_TIMEOUT_MS = 5000;
  const CONTEXT_WARN_RATIO = 0.8;

  const $ = (id) => document.getElementById(id);
  const ui = {
    html: document.documentElement,
    langToggle: $('lang-toggle'),
    newConv: $('new-conversation'),
    stBackend: $('st-backend'),
    stModel: $('st-model'),
    stDemo: $('st-demo'),
    stSandbox: $('st-sandbox'),
    pane: $('conversation'),
    empty: $('empty-state'),
    turns: $('turns'),
    notice: $('notice'),
    alert: $('alert'),
    noticeNew: $('notice-new'),
    noticeDismiss: $('notice-dismiss'),
    ctxWarn: $('ctx-warn'),
    form: $('composer'),
    input: $('input'),
    send: $('send'),
    stop: $('stop'),
    ctxText: $('ctx-text'),
    ctxBar: $('ctx-progress'),
  };

  const state = {
    conversationId: null,
    busy: false,
    controller: null,
    generation: 0, // bumped by each send and by "new conversation"
    status: null, // last /api/status body, or null
    statusOk: false, // whether the last poll succeeded
    contextUsed: null,
    contextLimit: null,
  };

  function el(tag, className, text) {
    const node = document.createElement(tag);
    if (className) node.className = className;
    if (text !== undefined) node.textContent = text;
    return node;
  }

  const isObj = (v) => v !== null && typeof v === 'object' && !Array.isArray(v);
  const isNum = (v) => typeof v === 'number' && Number.isFinite(v);
  const str = (v) => (typeof v === 'string' && v.trim() ? v.trim() : null);
  const fmtInt = (n) => Math.round(n).toLocaleString(window.I18n.htmlLang());

  // ---- status bar -----------------------------------------------------------

  function setChip(chip, text, tone, title) {
    chip.textContent = text;
    chip.classList.remove('tone-ok', 'tone-bad', 'tone-warn', 'tone-neutral');
    chip.classList.add('tone-' + tone);
    chip.title = title || '';
  }

  function describe(obj) {
    if (!isObj(obj)) return '';
    return Object.keys(obj).map((k) => {
      const v = obj[k];
      return k + ': ' + (isObj(v) || Array.isArray(v) ? JSON.stringify(v) : String(v));
    }).join('\n');
  }

  function renderStatus() {
    const s = state.statusOk && isObj(state.status) ? state.status : null;

    // Compute backend.
    const backend = s && isObj(s.backend) ? s.backend : null;
    const gpu = backend && isObj(backend.gpu) ? backend.gpu : null;
    if (!s) {
      setChip(ui.stBackend, state.status === undefined ? t('status.loading') : t('status.unreachable'),
        state.status === undefined ? 'neutral' : 'bad');
    } else if (gpu) {
      const name = str(gpu.name) || str(backend.device) || t('status.unknown');
      const total = gpu.memory_total_mib;
      const used = gpu.memory_used_mib;
      const gib = (mib) => (mib / 1024).toFixed(1);
      const text = isNum(total) && isNum(used)
        ? t('status.gpu', { name, used: gib(used), total: gib(total) })
        : t('status.gpu.nomem', { name });
      setChip(ui.stBackend, text, 'neutral', describe(backend));
    } else if (backend && str(backend.kind)) {
      const reason = str(backend.reason);
      const text = backend.kind.toLowerCase() === 'cpu'
        ? (reason ? t('status.cpu.reason', { reason }) : t('status.cpu'))
        : t('status.gpu.nomem', { name: str(backend.device) || backend.kind });
      setChip(ui.stBackend, text, 'neutral', describe(backend));
    } else {
      setChip(ui.stBackend, t('status.backend.unknown'), 'neutral');
    }

    // Model and the demo badge.
    const model = s && isObj(s.model) ? s.model : null;
    const label = model && str(model.label);
    const details = [];
    if (model) details.push(describe(model));
    if (s && str(s.version)) details.push(t('status.version', { version: s.version }));
    if (s && isObj(s.queue)) {
      const q = s.queue;
      const n = (v) => (isNum(v) ? v : t('status.unknown'));
      details.push(t('status.queue', { active: n(q.active), max: n(q.max_concurrent), length: n(q.length), capacity: n(q.capacity) }));
    }
    setChip(ui.stModel, label ? t('status.model', { label }) : t('status.model.unknown'), 'neutral',
      details.join('\n'));
    ui.stDemo.hidden = !(model && model.demo === true);

    // Sandbox: green only when the daemon says it is enforced.
    const sb = s && isObj(s.sandbox) ? s.sandbox : null;
    let mode = 'unknown';
    if (sb) {
      if (sb.insecure_no_sandbox === true || sb.enforced === false) mode = 'off';
      else if (sb.enforced === true) mode = 'on';
    }
    const sandboxText = { on: 'status.sandbox.on', off: 'status.sandbox.off', unknown: 'status.sandbox.unknown' };
    const sandboxTone = { on: 'ok', off: 'bad', unknown: 'warn' };
    setChip(ui.stSandbox, t(sandboxText[mode]), sandboxTone[mode], describe(sb));
    ui.stSandbox.dataset.sandbox = mode;

    if (state.contextLimit === null && s && isNum(s.context_limit)) renderContext();
  }

  async function pollStatus() {
    const ctl = new AbortController();
    const timer = setTimeout(() => ctl.abort(), STATUS_TIMEOUT_MS);
    try {
      const res = await fetch('/api/status', { cache: 'no-store', signal: ctl.signal });
      if (!res.ok) throw new Error('HTTP ' + res.status);
      state.status = await res.json();
      state.statusOk = true;
    } catch (_) {
      state.status = null;
      state.statusOk = false;
    } finally {
      clearTimeout(timer);
    }
    renderStatus();
  }

  // ---- context meter --------------------------------------------------------

  function renderContext() {
    const used = state.contextUsed;
    let limit = state.contextLimit;
    if (limit === null && state.statusOk && isObj(state.status) && isNum(state.status.context_limit)) {
      limit = state.status.context_limit;
    }
    let ratio = 0;
    if (used === null) {
      ui.ctxText.textContent = t('context.empty');
    } else if (isNum(limit) && limit > 0) {
      ratio = Math.min(1, used / limit);
      ui.ctxText.textContent = t('context.value', { used: fmtInt(used), limit: fmtInt(limit) });
    } else {
      ui.ctxText.textContent = t('context.value.nolimit', { used: fmtInt(used) });
    }
    ui.ctxBar.value = Math.round(ratio * 100);
    const warn = ratio >= CONTEXT_WARN_RATIO;
    ui.ctxBar.classList.toggle('warn', warn);
    ui.ctxText.classList.toggle('warn', warn);
    ui.ctxWarn.hidden = !warn;
  }

  // ---- notices (role="alert") -------------------------------------------------

  // Shows `message` (a server sentence) or the translated string `key`.
  function showNotice({ message, key, args, offerNew }) {
    if (key) window.I18n.bind(ui.alert, key, args);
    else {
      delete ui.alert.dataset.i18n;
      delete ui.alert.dataset.i18nArgs;
      ui.alert.textContent = message;
    }
    ui.noticeNew.hidden = !offerNew;
    ui.notice.classList.toggle('offer-new', !!offerNew);
    ui.notice.hidden = false;
  }

  function hideNotice() {
    ui.notice.hidden = true;
    ui.alert.textContent = '';
    delete ui.alert.dataset.i18n;
    ui.noticeNew.hidden = true;
  }

  // ---- one question and its answer ------------------------------------------

  class Turn {
    constructor(question) {
      this.reasoning = '';
      this.answer = '';
      this.answerStarted = false;
      this.renderQueued = false;

      this.root = el('article', 'turn');
      const user = el('div', 'msg msg-user');
      user.appendChild(window.I18n.bind(el('div', 'who'), 'conv.you'));
      user.appendChild(el('div', 'bubble bubble-user', question));
      this.root.appendChild(user);

      const model = el('div', 'msg msg-model');
      model.appendChild(window.I18n.bind(el('div', 'who'), 'conv.model'));
      const bubble = el('div', 'bubble bubble-model');

      this.details = el('details', 'reasoning');
      this.details.hidden = true;
      this.details.open = true;
      const summary = el('summary');
      summary.appendChild(window.I18n.bind(el('span', 'reasoning-label'), 'reasoning.label'));
      this.reasoningState = window.I18n.bind(el('span', 'reasoning-state'), 'reasoning.streaming');
      summary.appendChild(this.reasoningState);
      this.details.appendChild(summary);
      this.reasoningBody = el('div', 'reasoning-body');
      this.details.appendChild(this.reasoningBody);
      bubble.appendChild(this.details);

      this.pending = window.I18n.bind(el('p', 'pending'), 'answer.waiting');
      bubble.appendChild(this.pending);

      this.answerEl = el('div', 'answer md');
      this.answerEl.setAttribute('aria-live', 'polite');
      this.answerEl.setAttribute('aria-busy', 'true'); // announce once complete, not per token
      bubble.appendChild(this.answerEl);

      this.notes = el('div', 'turn-notes');
      bubble.appendChild(this.notes);

      const footer = el('div', 'turn-footer');
      this.meta = el('span', 'meta');
      footer.appendChild(this.meta);
      this.copyBtn = window.I18n.bind(el('button', 'btn btn-small copy'), 'answer.copy');
      this.copyBtn.type = 'button';
      this.copyBtn.hidden = true;
      this.copyBtn.addEventListener('click', () => this.copy());
      footer.appendChild(this.copyBtn);
      bubble.appendChild(footer);

      model.appendChild(bubble);
      this.root.appendChild(model);
    }

    get hasOutput() {
      return this.reasoning.length > 0 || this.answer.length > 0;
    }

    addReasoning(delta) {
      this.reasoning += delta;
      this.details.hidden = false;
      this.pending.hidden = true;
      this.queueRender();
    }

    addAnswer(delta) {
      this.answer += delta;
      this.pending.hidden = true;
      if (!this.answerStarted && delta.length > 0) {
        this.answerStarted = true;
        this.details.open = false; // fold the reasoning once the answer starts
        this.reasoningState.hidden = true;
      }
      this.queueRender();
    }

    queueRender() {
      if (this.renderQueued) return;
      this.renderQueued = true;
      window.requestAnimationFrame(() => this.render());
    }

    render() {
      this.renderQueued = false;
      keepScrolled(() => {
        const rb = this.reasoningBody;
        if (rb.textContent !== this.reasoning) {
          const follow = rb.scrollHeight - rb.scrollTop - rb.clientHeight < 24;
          rb.textContent = this.reasoning;
          if (follow) rb.scrollTop = rb.scrollHeight;
        }
        patchChildren(this.answerEl, window.MedMarkdown.render(this.answer));
      });
    }

    note(key, args, tone) {
      const p = window.I18n.bind(el('p', 'turn-note' + (tone ? ' ' + tone : '')), key, args);
      this.notes.appendChild(p);
    }

    noteText(text, tone) {
      this.notes.appendChild(el('p', 'turn-note' + (tone ? ' ' + tone : ''), text));
    }

    finish() {
      this.answerEl.setAttribute('aria-busy', 'false');
      this.pending.hidden = true;
      this.reasoningState.hidden = true;
      this.render();
      this.copyBtn.hidden = this.answer.trim().length === 0;
    }

    done(d) {
      if (d.thinking_unterminated === true) {
        this.details.hidden = false;
        this.note('reasoning.unterminated', null, 'warn');
      }
      if (d.finish_reason === 'length' || d.finish_reason === 'max_tokens') this.note('answer.length', null, 'warn');
      if (d.finish_reason === 'cancelled') this.note('answer.stopped');
      if (!this.answer.trim() && d.thinking_unterminated !== true && d.finish_reason !== 'cancelled') {
        this.note('answer.empty');
      }
      if (isNum(d.completion_tokens) && isNum(d.tokens_per_s) && isNum(d.time_to_first_token_ms)) {
        window.I18n.bind(this.meta, 'answer.meta', {
          tokens: d.completion_tokens,
          rate: d.tokens_per_s.toFixed(1),
          ttft: Math.round(d.time_to_first_token_ms),
        });
      }
      this.finish();
    }

    async copy() {
      const ok = await copyText(this.answer);
      window.I18n.bind(this.copyBtn, ok ? 'answer.copied' : 'answer.copyFailed');
      clearTimeout(this.copyTimer);
      this.copyTimer = setTimeout(() => window.I18n.bind(this.copyBtn, 'answer.copy'), 2000);
    }
  }

  // Replaces only the top-level blocks that changed, so that a streaming
  // answer does not rebuild (and re-announce) the blocks already shown.
  function patchChildren(target, frag) {
    const next = Array.from(frag.childNodes);
    const cur = target.childNodes;
    let i = 0;
    while (i < next.length && i < cur.length && cur[i].isEqualNode(next[i])) i++;
    while (cur.length > i) target.removeChild(target.lastChild);
    for (let k = i; k < next.length; k++) target.appendChild(next[k]);
  }

  async function copyText(text) {
    if (navigator.clipboard && window.isSecureContext) {
      try {
        await navigator.clipboard.writeText(text);
        return true;
      } catch (_) { /* fall back below */ }
    }
    const ta = el('textarea', 'offscreen');
    ta.value = text;
    ta.setAttribute('readonly', '');
    document.body.appendChild(ta);
    ta.select();
    let ok = false;
    try { ok = document.execCommand('copy'); } catch (_) { ok = false; }
    ta.remove();
    return ok;
  }

  // Runs `fn`, then keeps the pane scrolled to the bottom if it was there.
  function keepScrolled(fn) {
    const p = ui.pane;
    const atBottom = p.scrollHeight - p.scrollTop - p.clientHeight < 80;
    fn();
    if (atBottom) p.scrollTop = p.scrollHeight;
  }

  // ---- SSE over fetch -------------------------------------------------------

  // Feeds text chunks; calls onEvent(name, data) for each complete event.
  function sseParser(onEvent) {
    let buf = '';
    let name = '';
    let data = [];
    const line = (l) => {
      if (l === '') {
        if (data.length) onEvent(name || 'message', data.join('\n'));
        name = '';
        data = [];
        return;
      }
      if (l[0] === ':') return;
      const c = l.indexOf(':');
      const field = c === -1 ? l : l.slice(0, c);
      let value = c === -1 ? '' : l.slice(c + 1);
      if (value[0] === ' ') value = value.slice(1);
      if (field === 'event') name = value;
      else if (field === 'data') data.push(value);
    };
    return (chunk) => {
      buf += chunk;
      const re = /\r\n|\r|\n/g;
      let start = 0;
      let m;
      while ((m = re.exec(buf)) !== null) {
        if (m[0] === '\r' && m.index === buf.length - 1) break; // "\n" may follow
        line(buf.slice(start, m.index));
        start = re.lastIndex;
      }
      buf = buf.slice(start);
    };
  }

  function setBusy(busy) {
    state.busy = busy;
    ui.send.disabled = busy;
    const stopHadFocus = document.activeElement === ui.stop;
    ui.stop.disabled = !busy;
    ui.html.dataset.busy = busy ? '1' : '0';
    if (!busy && stopHadFocus) ui.input.focus();
  }

  function updateEmpty() {
    ui.empty.hidden = ui.turns.childElementCount > 0;
  }

  async function send() {
    const question = ui.input.value;
    if (state.busy || !question.trim()) return;
    hideNotice();
    const gen = ++state.generation;
    const turn = new Turn(question);
    keepScrolled(() => {
      ui.turns.appendChild(turn.root);
      updateEmpty();
    });
    ui.pane.scrollTop = ui.pane.scrollHeight;
    ui.input.value = '';
    const controller = new AbortController();
    state.controller = controller;
    setBusy(true);

    const current = () => gen === state.generation;
    // Nothing came back: drop the turn and give the question back.
    const giveBack = () => {
      turn.root.remove();
      updateEmpty();
      if (!ui.input.value) ui.input.value = question;
    };
    let finished = false;

    const onEvent = (name, text) => {
      let d = null;
      try { d = JSON.parse(text); } catch (_) { d = null; }
      if (!isObj(d)) d = {};
      switch (name) {
        case 'conversation':
          if (current() && str(d.conversation_id)) state.conversationId = d.conversation_id;
          break;
        case 'reasoning':
          if (typeof d.delta === 'string') turn.addReasoning(d.delta);
          break;
        case 'answer':
          if (typeof d.delta === 'string') turn.addAnswer(d.delta);
          break;
        case 'done':
          finished = true;
          turn.done(d);
          if (current()) {
            if (isNum(d.context_used)) state.contextUsed = d.context_used;
            if (isNum(d.context_limit)) state.contextLimit = d.context_limit;
            renderContext();
          }
          break;
        case 'error': {
          finished = true;
          const message = str(d.message) || t('error.http', { status: 200 });
          if (turn.hasOutput) {
            turn.noteText(message, 'error');
            turn.finish();
          } else {
            giveBack();
          }
          if (current()) showNotice({ message, offerNew: d.code === 'context_full' });
          break;
        }
        default:
          break; // unknown events are ignored
      }
    };

    try {
      const res = await fetch('/api/chat', {
        method: 'POST',
        headers: { 'Content-Type': 'application/json', Accept: 'text/event-stream' },
        body: JSON.stringify({ conversation_id: state.conversationId, message: question }),
        cache: 'no-store',
        signal: controller.signal,
      });
      if (!res.ok) {
        await failedResponse(res, giveBack, current);
        return;
      }
      const reader = res.body.getReader();
      const decoder = new TextDecoder();
      const feed = sseParser(onEvent);
      for (;;) {
        const { value, done } = await reader.read();
        if (done) break;
        feed(decoder.decode(value, { stream: true }));
        if (finished) break;
      }
      if (finished) {
        reader.cancel().catch(() => {});
      } else {
        feed(decoder.decode() + '\n\n');
        if (!finished) {
          turn.note('answer.interrupted', null, 'warn');
          turn.finish();
        }
      }
    } catch (err) {
      if (controller.signal.aborted) {
        if (turn.hasOutput || current()) {
          turn.note('answer.stopped');
          turn.finish();
        }
      } else if (!finished) {
        if (turn.hasOutput) {
          turn.note('answer.interrupted', null, 'warn');
          turn.finish();
        } else {
          giveBack();
        }
        if (current()) showNotice({ key: 'error.network' });
      }
    } finally {
      if (state.controller === controller) {
        state.controller = null;
        setBusy(false);
      }
    }
  }

  async function failedResponse(res, giveBack, current) {
    let body = null;
    try { body = await res.json(); } catch (_) { body = null; }
    const err = isObj(body) && isObj(body.error) ? body.error : {};
    giveBack();
    if (!current()) return;
    if (err.code === 'queue_full' || res.status === 429 || (res.status === 503 && !str(err.message))) {
      const retry = parseInt(res.headers.get('Retry-After') || '', 10);
      if (Number.isFinite(retry) && retry >= 0) showNotice({ key: 'error.busy', args: { seconds: retry } });
      else showNotice({ key: 'error.busy.noretry' });
      return;
    }
    const message = str(err.message);
    if (message) showNotice({ message, offerNew: err.code === 'context_full' });
    else showNotice({ key: 'error.http', args: { status: res.status } });
  }

  function stop() {
    if (!state.busy || !state.controller) return;
    const id = state.conversationId;
    if (id) {
      fetch('/api/chat/cancel', {
        method: 'POST',
        headers: { 'Content-Type': 'application/json' },
        body: JSON.stringify({ conversation_id: id }),
        cache: 'no-store',
      }).catch(() => {});
    }
    state.controller.abort();
  }

  async function newConversation() {
    if (state.busy) stop();
    state.generation++;
    const id = state.conversationId;
    state.conversationId = null;
    state.contextUsed = null;
    state.contextLimit = null;
    ui.turns.replaceChildren();
    updateEmpty();
    hideNotice();
    renderContext();
    ui.input.focus();
    if (id) {
      try {
        await fetch('/api/conversations/' + encodeURIComponent(id), { method: 'DELETE', cache: 'no-store' });
      } catch (_) { /* the daemon expires it anyway */ }
    }
  }

  // ---- language ---------------------------------------------------------------

  function renderLangToggle() {
    const other = window.I18n.lang === 'zh' ? 'en' : 'zh';
    ui.langToggle.lang = other === 'zh' ? 'zh-CN' : 'en';
  }

  function setLang(lang) {
    window.I18n.setLang(lang, true);
    renderLangToggle();
    renderStatus();
    renderContext();
  }

  // ---- wiring -----------------------------------------------------------------

  ui.form.addEventListener('submit', (e) => {
    e.preventDefault();
    send();
  });
  ui.input.addEventListener('keydown', (e) => {
    if (e.key !== 'Enter' || e.shiftKey || e.ctrlKey || e.altKey || e.metaKey) return;
    if (e.isComposing || e.keyCode === 229) return; // an IME is confirming a candidate
    e.preventDefault();
    send();
  });
  ui.stop.addEventListener('click', stop);
  ui.newConv.addEventListener('click', newConversation);
  ui.noticeNew.addEventListener('click', newConversation);
  ui.noticeDismiss.addEventListener('click', hideNotice);
  ui.langToggle.addEventListener('click', () => setLang(window.I18n.lang === 'zh' ? 'en' : 'zh'));
  document.addEventListener('visibilitychange', () => {
    if (document.visibilityState === 'visible') pollStatus();
  });

  state.status = undefined; // "loading" until the first poll answers
  window.I18n.setLang(window.I18n.lang, false);
  renderLangToggle();
  renderStatus();
  renderContext();
  setBusy(false);
  updateEmpty();
  pollStatus().then(() => { ui.html.dataset.ready = '1'; });
  setInterval(pollStatus, STATUS_POLL_MS);
  ui.input.focus();
})();
