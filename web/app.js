// MedGemma web UI: login, status bar and model loading, conversation list,
// streaming chat (reasoning, answer, terms), images with a question (button,
// drop, paste; thumbnails), regenerate, edit-and-resend, copy buttons, export
// (Markdown download, print view), theme and language.
//
// Talks only to its own origin: /api/status, /api/login, /api/logout,
// /api/chat (SSE over fetch), /api/chat/cancel and /api/conversations[/{id}
// [/export]]. Model text reaches the page only through textContent and
// MedMarkdown.render (which never creates markup from text). Must never: put
// patient text or images in storage, URLs or logs (localStorage holds only the
// language, theme and reasoning switch; images live in this page's memory as
// data URLs, never in localStorage, sessionStorage, IndexedDB or caches).
'use strict';

(function () {
  const { t } = window.I18n;
  const STATUS_POLL_MS = 10000;
  const LOADING_POLL_MS = 1000; // while the model loads, the progress bar follows closely
  const STATUS_TIMEOUT_MS = 5000;
  const CONTEXT_WARN_RATIO = 0.8;
  const COPY_FEEDBACK_MS = 2000;
  const DELETE_CONFIRM_MS = 4000;
  const MAX_IMAGES = 4; // per message, as the daemon enforces (too_many_images)
  const MAX_IMAGE_MIB = 20; // per file, as the daemon enforces (image_too_large)
  const THUMB_PX = 192; // longest side of a thumbnail (shown at half that or less)
  // What each accepted kind of file is sent as.
  const IMAGE_KINDS = {
    png: { mime: 'image/png', label: 'PNG' },
    jpeg: { mime: 'image/jpeg', label: 'JPEG' },
    dicom: { mime: 'application/dicom', label: 'DICOM' },
  };
  // Server codes about images: the UI's sentence leads, the server's says which image and why.
  const IMAGE_CODES = new Set(['image_invalid', 'too_many_images', 'image_too_large']);
  const REASONING_KEY = 'medgemma.reasoning';
  // Codes whose notice offers a fresh conversation: this one cannot go on.
  const OFFER_NEW = new Set(['context_full', 'conversation_not_found', 'invalid_conversation']);

  const $ = (id) => document.getElementById(id);
  const ui = {
    html: document.documentElement,
    langToggle: $('lang-toggle'),
    themeToggle: $('theme-toggle'),
    newConv: $('new-conversation'),
    userBox: $('user-box'),
    userName: $('user-name'),
    logout: $('logout'),
    stBackend: $('st-backend'),
    stModel: $('st-model'),
    stDemo: $('st-demo'),
    stSandbox: $('st-sandbox'),
    loading: $('loading'),
    loadingText: $('loading-text'),
    loadingBar: $('loading-progress'),
    login: $('login'),
    loginForm: $('login-form'),
    loginMsg: $('login-msg'),
    loginUser: $('login-user'),
    loginPassword: $('login-password'),
    loginSubmit: $('login-submit'),
    workspace: $('workspace'),
    sidebar: $('sidebar'),
    convList: $('conv-list'),
    convEmpty: $('conv-empty'),
    convBar: $('conv-bar'),
    convTitle: $('conv-title'),
    exportMd: $('export-md'),
    exportPrint: $('export-print'),
    pane: $('conversation'),
    empty: $('empty-state'),
    turns: $('turns'),
    notice: $('notice'),
    alert: $('alert'),
    noticeNew: $('notice-new'),
    noticeDismiss: $('notice-dismiss'),
    ctxWarn: $('ctx-warn'),
    stylePicker: $('style-picker'),
    styleOptions: $('style-options'),
    showReasoning: $('show-reasoning'),
    editBar: $('edit-bar'),
    editCancel: $('edit-cancel'),
    form: $('composer'),
    input: $('input'),
    attach: $('attach'),
    attachInput: $('attach-input'),
    attachMsg: $('attach-msg'),
    attachments: $('attachments'),
    dropHint: $('drop-hint'),
    send: $('send'),
    stop: $('stop'),
    ctxText: $('ctx-text'),
    ctxBar: $('ctx-progress'),
    printView: $('print-view'),
    printHead: $('print-head'),
    printBody: $('print-body'),
    printNow: $('print-now'),
    printClose: $('print-close'),
  };

  const state = {
    conversationId: null,
    style: null, // the answer style of this conversation (null: the server has no styles)
    busy: false,
    controller: null,
    generation: 0, // bumped by each send and by each switch of conversation
    status: undefined, // last /api/status body; undefined until the first poll, null when it failed
    statusOk: false,
    pollTimer: null,
    contextUsed: null, // null: empty; undefined: not known (a conversation loaded from the list)
    contextLimit: null,
    editing: false,
    conversations: [], // the last GET /api/conversations
    listSupported: true,
    loginShown: false,
    user: null, // the account whose conversations are shown (null without accounts)
    initialized: false,
    loginTimer: null,
    listSig: '',
    listSeq: 0,
    // Images waiting in the composer, in the order attached: {kind, name, dataUrl, thumb}.
    // Page memory only.
    attachments: [],
    attachPending: 0, // files being read
    attachQueue: Promise.resolve(), // batches are read one after another, in order
    attachEpoch: 0, // bumped when the view is reset: a read still running is dropped
    attachDone: 0, // batches handled (<html data-attach-done>, which tests wait on)
    imagesOk: false, // the loaded model reads images (status model.images === true)
    dragDepth: 0,
  };
  const turnOf = new WeakMap(); // article.turn -> Turn

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
  const bind = (node, key, args) => window.I18n.bind(node, key, args);
  const currentStatus = () => (state.statusOk && isObj(state.status) ? state.status : null);

  // A daemon from before the conversation API (no `state` in /api/status)
  // refuses unknown fields in a chat body and has no conversation list,
  // export, regenerate, edit or styles: it is sent only what it knows, and
  // the UI hides what it lacks. Until a status is known, the current API is assumed.
  function modern() {
    const s = currentStatus();
    return !s || typeof s.state === 'string';
  }

  // Whether questions can be sent: not while the model loads or after it failed to.
  function modelReady() {
    const s = currentStatus();
    return !s || s.state === undefined || s.state === 'ready';
  }

  // ---- errors -----------------------------------------------------------------

  const errorOf = (body) => (isObj(body) && isObj(body.error) ? body.error : {});

  // The notice for an API error: the UI's own sentence for a known code in the
  // chosen language, else the server's sentence, else the HTTP status.
  function errorNotice(err, httpStatus, headers) {
    const code = str(err.code);
    const header = headers ? parseInt(headers.get('Retry-After') || '', 10) : NaN;
    const retry = isNum(err.retry_after_s) ? err.retry_after_s : header;
    const withRetry = (key) => (Number.isFinite(retry) && retry >= 0
      ? { key, args: { seconds: Math.ceil(retry) } } : { key: key + '.noretry' });
    if (code === 'queue_full' || (!code && (httpStatus === 429 || httpStatus === 503))) return withRetry('error.busy');
    if (code === 'loading' || code === 'locked_out') return withRetry('err.' + code);
    if (IMAGE_CODES.has(code)) {
      const detail = str(err.message);
      return detail ? { key: 'err.' + code, args: { detail } } : { key: 'err.' + code + '.nodetail' };
    }
    if (code && window.I18n.has('err.' + code)) return { key: 'err.' + code, offerNew: OFFER_NEW.has(code) };
    const message = str(err.message);
    if (message) return { message, offerNew: OFFER_NEW.has(code) };
    return { key: 'error.http', args: { status: httpStatus } };
  }

  // Raised by api() after a 401 `login_required`: the login screen is already up.
  class AuthLost extends Error {}

  class ApiFailure extends Error {
    constructor(status, body, headers) {
      super('HTTP ' + status);
      this.status = status;
      this.body = errorOf(body);
      this.headers = headers;
    }
  }

  function noticeFor(e) {
    if (e instanceof AuthLost) return null;
    if (e instanceof ApiFailure) return errorNotice(e.body, e.status, e.headers);
    return { key: 'error.network' };
  }

  // A JSON API call; resolves to the parsed body (null for 204).
  async function api(path, { method = 'GET', body } = {}) {
    const init = { method, cache: 'no-store', headers: {} };
    if (body !== undefined) {
      init.headers['Content-Type'] = 'application/json';
      init.body = JSON.stringify(body);
    }
    const res = await fetch(path, init);
    let data = null;
    if (res.status !== 204) {
      try { data = await res.json(); } catch (_) { data = null; }
    }
    if (!res.ok) {
      if (res.status === 401 && errorOf(data).code === 'login_required') {
        sessionEnded();
        throw new AuthLost();
      }
      throw new ApiFailure(res.status, data, res.headers);
    }
    return data;
  }

  // Shows a notice (`{key, args}` or `{message}`) in `node`, bound to the language.
  function setMessage(node, n) {
    if (n.key) bind(node, n.key, n.args);
    else {
      delete node.dataset.i18n;
      delete node.dataset.i18nArgs;
      node.textContent = n.message;
    }
  }

  // ---- status bar and model loading -------------------------------------------

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

  function renderChips() {
    const s = currentStatus();

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
      // `waiting` (before the conversation API: `length`).
      const waiting = isNum(q.waiting) ? q.waiting : q.length;
      details.push(t('status.queue', { active: n(q.active), max: n(q.max_concurrent), waiting: n(waiting), capacity: n(q.capacity) }));
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
  }

  function renderLoading() {
    const s = currentStatus();
    const st = s ? s.state : undefined;
    ui.loading.classList.toggle('failed', st === 'failed');
    if (st === 'loading') {
      const l = isObj(s.loading) ? s.loading : {};
      const stage = str(l.stage);
      const pct = isNum(l.progress) ? Math.round(Math.min(1, Math.max(0, l.progress)) * 100) : null;
      let text;
      if (pct === null) text = stage ? t('loading.stage', { stage }) : t('loading.model');
      else text = stage ? t('loading.stage.percent', { stage, percent: pct }) : t('loading.percent', { percent: pct });
      ui.loadingText.textContent = text;
      ui.loadingBar.hidden = false;
      if (pct === null) ui.loadingBar.removeAttribute('value'); // indeterminate
      else ui.loadingBar.value = pct;
      ui.loading.hidden = false;
    } else if (st === 'failed') {
      ui.loadingText.textContent = t('loading.failed');
      ui.loadingBar.hidden = true;
      ui.loading.hidden = false;
    } else {
      ui.loading.hidden = true;
    }
    ui.html.dataset.model = st === 'loading' || st === 'failed' ? st : 'ready';
  }

  function renderStatus() {
    renderChips();
    renderLoading();
    renderAuth();
    renderAttach();
    renderStyle();
    renderList();
    renderConvBar();
    updateTurnActions();
    updateSend();
    const s = currentStatus();
    if (state.contextLimit === null && s && isNum(s.context_limit)) renderContext();
  }

  function schedulePoll() {
    clearTimeout(state.pollTimer);
    const s = currentStatus();
    const delay = s && s.state === 'loading' ? LOADING_POLL_MS : STATUS_POLL_MS;
    state.pollTimer = setTimeout(pollStatus, delay);
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
    schedulePoll();
  }

  // ---- accounts ---------------------------------------------------------------

  function renderAuth() {
    const s = currentStatus();
    if (!s) return; // unknown: keep the current screen
    // A daemon without accounts (or before them) has no `auth`: nobody logs in.
    const auth = isObj(s.auth) ? s.auth : { required: false, user: null };
    const user = str(auth.user);
    if (auth.required === true && !user) {
      if (!state.loginShown) showLogin(state.user ? 'err.login_required' : null);
      return;
    }
    const wasLogin = state.loginShown;
    if (wasLogin) hideLogin(); // accounts were turned off, or a login happened in another tab
    if (user !== state.user || wasLogin) {
      const had = state.user;
      state.user = user;
      if (had && had !== user) resetView(); // another account now holds this browser
      if (state.initialized) loadList();
    }
    renderUser();
  }

  function renderUser() {
    const user = state.user;
    ui.userBox.hidden = !user || state.loginShown;
    ui.userName.textContent = user || '';
    ui.userName.title = user ? t('auth.signedIn', { user }) : '';
  }

  function showLogin(reasonKey) {
    if (state.controller) state.controller.abort();
    resetView();
    state.user = null;
    state.loginShown = true;
    ui.workspace.hidden = true;
    ui.newConv.hidden = true;
    ui.userBox.hidden = true;
    ui.login.hidden = false;
    ui.loginPassword.value = '';
    if (reasonKey) {
      setMessage(ui.loginMsg, { key: reasonKey });
      ui.loginMsg.hidden = false;
    } else {
      ui.loginMsg.hidden = true;
    }
    ui.loginUser.focus();
  }

  function hideLogin() {
    state.loginShown = false;
    ui.login.hidden = true;
    ui.workspace.hidden = false;
    ui.newConv.hidden = false;
    ui.loginMsg.hidden = true;
    ui.loginPassword.value = '';
  }

  // A request was refused for want of a session (idle logout, or logged out elsewhere).
  function sessionEnded() {
    if (!state.loginShown) showLogin('err.login_required');
  }

  async function login(e) {
    e.preventDefault();
    const user = ui.loginUser.value.trim();
    const password = ui.loginPassword.value;
    const say = (n) => {
      setMessage(ui.loginMsg, n);
      ui.loginMsg.hidden = false;
    };
    if (!user || !password) {
      say({ key: 'auth.missing' });
      return;
    }
    ui.loginSubmit.disabled = true;
    let lockedFor = 0;
    try {
      const res = await fetch('/api/login', {
        method: 'POST',
        headers: { 'Content-Type': 'application/json' },
        body: JSON.stringify({ user, password }),
        cache: 'no-store',
      });
      let body = null;
      try { body = await res.json(); } catch (_) { body = null; }
      ui.loginPassword.value = '';
      if (res.ok) {
        state.user = (isObj(body) && str(body.user)) || user;
        hideLogin();
        renderUser();
        await pollStatus();
        await loadList();
        ui.input.focus();
        return;
      }
      const err = errorOf(body);
      say(errorNotice(err, res.status, res.headers));
      if (err.code === 'locked_out') {
        const retry = isNum(err.retry_after_s) ? err.retry_after_s : parseInt(res.headers.get('Retry-After') || '', 10);
        lockedFor = Number.isFinite(retry) && retry > 0 ? retry : 0;
      }
      ui.loginPassword.focus();
    } catch (_) {
      say({ key: 'error.network' });
    } finally {
      clearTimeout(state.loginTimer);
      if (lockedFor > 0) {
        state.loginTimer = setTimeout(() => { ui.loginSubmit.disabled = false; }, lockedFor * 1000);
      } else {
        ui.loginSubmit.disabled = false;
      }
    }
  }

  async function logout() {
    try {
      await fetch('/api/logout', { method: 'POST', cache: 'no-store' });
    } catch (_) { /* the session ends at the idle timeout anyway */ }
    showLogin(null);
    pollStatus();
  }

  // ---- context meter ----------------------------------------------------------

  function renderContext() {
    const used = state.contextUsed;
    let limit = state.contextLimit;
    const s = currentStatus();
    if (limit === null && s && isNum(s.context_limit)) limit = s.context_limit;
    let ratio = 0;
    if (used === undefined) {
      ui.ctxText.textContent = t('context.unknown');
    } else if (used === null) {
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

  // ---- notices (role="alert") ---------------------------------------------------

  function showNotice(n) {
    if (!n) return;
    setMessage(ui.alert, n);
    ui.noticeNew.hidden = !n.offerNew;
    ui.notice.classList.toggle('offer-new', !!n.offerNew);
    ui.notice.hidden = false;
  }

  function hideNotice() {
    ui.notice.hidden = true;
    ui.alert.textContent = '';
    delete ui.alert.dataset.i18n;
    ui.noticeNew.hidden = true;
  }

  // ---- copy -------------------------------------------------------------------

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

  // A small button that copies getText() and says so for a moment.
  function copyButton(key, className, getText) {
    const b = bind(el('button', 'btn btn-small ' + className), key);
    b.type = 'button';
    let timer = null;
    b.addEventListener('click', async () => {
      const ok = await copyText(getText());
      bind(b, ok ? 'answer.copied' : 'answer.copyFailed');
      clearTimeout(timer);
      timer = setTimeout(() => bind(b, key), COPY_FEEDBACK_MS);
    });
    return b;
  }

  // Gives every rendered code block of `container` its own copy button.
  function addCodeCopy(container) {
    container.querySelectorAll('pre.md-code').forEach((pre) => {
      if (pre.parentElement.classList.contains('code-block')) return;
      const wrap = el('div', 'code-block');
      pre.replaceWith(wrap);
      wrap.appendChild(pre);
      wrap.appendChild(copyButton('copy.code', 'copy-code', () => pre.textContent));
    });
  }

  // ---- images attached to a question ----------------------------------------------
  //
  // Attached by the button (a file input), dropped on the composer, or pasted.
  // Each is read into a data URL (sent in the chat body, as the daemon
  // expects) and, for PNG and JPEG, a small thumbnail drawn on a canvas; a
  // DICOM file gets a labelled tile instead (the daemon decodes it, the page
  // never renders one). Everything stays in this page's memory.

  const imagesAvailable = () => state.imagesOk && !state.loginShown;

  // Shown when the daemon says the loaded model reads images (model.images).
  function renderAttach() {
    const s = currentStatus();
    if (s) { // unknown (a failed poll): keep what was shown
      const ok = isObj(s.model) && s.model.images === true;
      if (!ok && state.imagesOk && state.attachments.length) {
        setAttachments([]);
        showAttachMsg([{ key: 'attach.removed' }]);
      }
      state.imagesOk = ok;
    }
    ui.attach.hidden = !state.imagesOk;
  }

  // The picture of an attachment: its thumbnail, or a labelled tile (DICOM).
  function imagePreview(a) {
    if (a.thumb) {
      const img = el('img', 'att-thumb');
      img.alt = a.name;
      img.draggable = false;
      img.src = a.thumb;
      return img;
    }
    const tile = el('div', 'att-tile');
    tile.appendChild(el('span', 'att-kind', IMAGE_KINDS[a.kind].label));
    tile.appendChild(bind(el('span', 'att-note'), 'attach.noPreview'));
    return tile;
  }

  function renderAttachments() {
    ui.attachments.replaceChildren();
    state.attachments.forEach((a, i) => {
      const li = el('li', 'attachment');
      li.dataset.kind = a.kind;
      li.appendChild(imagePreview(a));
      const side = el('div', 'att-side');
      const name = el('span', 'att-name', a.name);
      name.id = 'att-name-' + i;
      name.title = a.name;
      side.appendChild(name);
      const rm = bind(el('button', 'btn btn-small att-remove'), 'attach.remove');
      rm.type = 'button';
      rm.setAttribute('aria-describedby', name.id);
      rm.addEventListener('click', () => removeAttachment(a));
      side.appendChild(rm);
      li.appendChild(side);
      ui.attachments.appendChild(li);
    });
    ui.attachments.hidden = state.attachments.length === 0;
    updateSend();
  }

  function setAttachments(list) {
    state.attachments = list.slice();
    renderAttachments();
  }

  function removeAttachment(a) {
    const i = state.attachments.indexOf(a);
    if (i === -1) return;
    state.attachments.splice(i, 1);
    clearAttachMsg();
    renderAttachments();
    const buttons = ui.attachments.querySelectorAll('.att-remove');
    (buttons[Math.min(i, buttons.length - 1)] || ui.input).focus();
  }

  // Why files were not attached: one sentence each, in the chosen language.
  function showAttachMsg(items) {
    ui.attachMsg.replaceChildren(...items.map((n) => bind(el('p'), n.key, n.args)));
    ui.attachMsg.hidden = items.length === 0;
  }

  function clearAttachMsg() {
    showAttachMsg([]);
  }

  // The kind a file says it is (its type, else its name), or null.
  function kindByName(file) {
    const type = String(file.type || '').toLowerCase();
    if (type === 'image/png') return 'png';
    if (type === 'image/jpeg' || type === 'image/pjpeg') return 'jpeg';
    if (type === 'application/dicom') return 'dicom';
    const m = /\.([a-z0-9]+)$/i.exec(String(file.name || ''));
    const ext = m ? m[1].toLowerCase() : '';
    if (ext === 'png') return 'png';
    if (ext === 'jpg' || ext === 'jpeg') return 'jpeg';
    if (ext === 'dcm' || ext === 'dicom') return 'dicom';
    return null;
  }

  // The kind its first bytes show (PNG signature, JPEG SOI, DICOM's "DICM" at 128), or null.
  async function sniffKind(file) {
    const b = new Uint8Array(await file.slice(0, 132).arrayBuffer());
    const at = (offset, bytes) => bytes.every((v, i) => b[offset + i] === v);
    if (at(0, [0x89, 0x50, 0x4e, 0x47, 0x0d, 0x0a, 0x1a, 0x0a])) return 'png';
    if (at(0, [0xff, 0xd8, 0xff])) return 'jpeg';
    if (b.length >= 132 && at(128, [0x44, 0x49, 0x43, 0x4d])) return 'dicom';
    return null;
  }

  function readDataUrl(file, mime) {
    return new Promise((resolve, reject) => {
      const r = new FileReader();
      r.onload = () => {
        const s = String(r.result);
        const comma = s.indexOf(',');
        if (comma === -1) reject(new Error('not a data URL'));
        else resolve('data:' + mime + ';base64,' + s.slice(comma + 1));
      };
      r.onerror = () => reject(r.error);
      r.readAsDataURL(file);
    });
  }

  // A small JPEG of a PNG or JPEG file; rejects when the browser cannot decode it.
  async function thumbnail(file) {
    const bmp = await createImageBitmap(file);
    try {
      const scale = Math.min(1, THUMB_PX / Math.max(bmp.width, bmp.height));
      const canvas = el('canvas');
      canvas.width = Math.max(1, Math.round(bmp.width * scale));
      canvas.height = Math.max(1, Math.round(bmp.height * scale));
      const g = canvas.getContext('2d');
      g.fillStyle = '#ffffff'; // transparent PNG pixels on white, as a viewer shows them
      g.fillRect(0, 0, canvas.width, canvas.height);
      g.drawImage(bmp, 0, 0, canvas.width, canvas.height);
      return canvas.toDataURL('image/jpeg', 0.85);
    } finally {
      bmp.close();
    }
  }

  // Attaches `files` in order; what does not fit is refused with a sentence.
  function addFiles(files) {
    const list = Array.from(files || []);
    if (!list.length) return;
    if (!imagesAvailable()) {
      showAttachMsg([{ key: 'attach.off' }]);
      attachDone();
      return;
    }
    state.attachPending += list.length;
    updateSend();
    const epoch = state.attachEpoch;
    state.attachQueue = state.attachQueue.then(() => readBatch(list, epoch)).catch(() => {});
  }

  async function readBatch(list, epoch) {
    const refused = [];
    const overflow = [];
    const live = () => epoch === state.attachEpoch; // false once the view was reset (logout)
    for (const file of list) {
      const name = String(file.name || '') || 'image';
      try {
        if (!live()) continue;
        if (state.attachments.length >= MAX_IMAGES) {
          overflow.push(name);
          continue;
        }
        if (file.size > MAX_IMAGE_MIB * 1024 * 1024) {
          refused.push({ key: 'attach.tooLarge', args: { name, max: MAX_IMAGE_MIB } });
          continue;
        }
        const sniffed = file.size ? await sniffKind(file) : null;
        const kind = sniffed || kindByName(file);
        if (!kind) {
          refused.push({ key: 'attach.type', args: { name } });
          continue;
        }
        // A DICOM file is checked by the daemon; a PNG or JPEG must decode here.
        const thumb = kind === 'dicom' ? null : (sniffed ? await thumbnail(file) : null);
        if (!file.size || (kind !== 'dicom' && !thumb)) {
          refused.push({ key: 'attach.unreadable', args: { name } });
          continue;
        }
        const dataUrl = await readDataUrl(file, IMAGE_KINDS[kind].mime);
        if (!live()) continue;
        if (state.attachments.length >= MAX_IMAGES) {
          overflow.push(name);
          continue;
        }
        state.attachments.push({ kind, name, dataUrl, thumb });
        renderAttachments();
      } catch (_) {
        refused.push({ key: 'attach.unreadable', args: { name } });
      } finally {
        state.attachPending--;
      }
    }
    if (overflow.length) refused.push({ key: 'attach.tooMany', args: { names: overflow.join(', '), max: MAX_IMAGES } });
    if (live()) showAttachMsg(refused);
    updateSend();
    attachDone();
  }

  function attachDone() {
    ui.html.dataset.attachDone = String(++state.attachDone);
  }

  // Only the last question keeps its images whole (edit-and-resend sends
  // them again); the questions before it keep their thumbnails.
  function dropOldImageData() {
    const last = lastTurn();
    for (const root of ui.turns.children) {
      const turn = turnOf.get(root);
      if (turn && turn !== last && turn.images.some((a) => a.dataUrl)) {
        turn.images = turn.images.map((a) => ({ kind: a.kind, name: a.name, thumb: a.thumb }));
      }
    }
  }

  function setDropping(on) {
    ui.form.classList.toggle('dropping', on);
    ui.dropHint.hidden = !on;
  }

  const draggingFiles = (e) => !!e.dataTransfer && Array.from(e.dataTransfer.types || []).includes('Files');

  // ---- one question and its answer --------------------------------------------

  class Turn {
    // `images`: the attachments sent with the question (see state.attachments).
    constructor(question, { reasoningOpen = true, images = [] } = {}) {
      this.question = question;
      this.images = images;
      this.reasoning = '';
      this.answer = '';
      this.answerStarted = false;
      this.renderQueued = false;
      this.finished = false;

      this.root = el('article', 'turn');
      turnOf.set(this.root, this);
      const user = el('div', 'msg msg-user');
      user.appendChild(bind(el('div', 'who'), 'conv.you'));
      user.appendChild(el('div', 'bubble bubble-user', question));
      if (images.length) {
        const row = el('ul', 'turn-images');
        row.setAttribute('aria-label', t('conv.images'));
        row.dataset.i18nAriaLabel = 'conv.images';
        for (const a of images) {
          const li = el('li', 'turn-image');
          li.appendChild(imagePreview(a));
          const name = el('span', 'att-name', a.name);
          name.title = a.name;
          li.appendChild(name);
          row.appendChild(li);
        }
        user.appendChild(row);
      }
      const userTools = el('div', 'user-tools');
      this.editBtn = bind(el('button', 'btn btn-small edit'), 'edit.button');
      this.editBtn.type = 'button';
      this.editBtn.hidden = true;
      this.editBtn.addEventListener('click', startEdit);
      userTools.appendChild(this.editBtn);
      user.appendChild(userTools);
      this.root.appendChild(user);

      const model = el('div', 'msg msg-model');
      model.appendChild(bind(el('div', 'who'), 'conv.model'));
      this.row = el('div', 'model-row');
      const bubble = el('div', 'bubble bubble-model');

      this.details = el('details', 'reasoning');
      this.details.hidden = true;
      this.details.open = reasoningOpen;
      const summary = el('summary');
      summary.appendChild(bind(el('span', 'reasoning-label'), 'reasoning.label'));
      this.reasoningState = bind(el('span', 'reasoning-state'), 'reasoning.streaming');
      summary.appendChild(this.reasoningState);
      this.details.appendChild(summary);
      this.reasoningBody = el('div', 'reasoning-body');
      this.details.appendChild(this.reasoningBody);
      const reasoningTools = el('div', 'reasoning-tools');
      this.copyReasoningBtn = copyButton('copy.reasoning', 'copy-reasoning', () => this.reasoning);
      this.copyReasoningBtn.hidden = true;
      reasoningTools.appendChild(this.copyReasoningBtn);
      this.details.appendChild(reasoningTools);
      bubble.appendChild(this.details);

      this.pending = bind(el('p', 'pending'), 'answer.waiting');
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
      this.copyBtn = copyButton('answer.copy', 'copy', () => this.answer);
      this.copyBtn.hidden = true;
      footer.appendChild(this.copyBtn);
      this.regenBtn = bind(el('button', 'btn btn-small regenerate'), 'answer.regenerate');
      this.regenBtn.type = 'button';
      this.regenBtn.hidden = true;
      this.regenBtn.addEventListener('click', () => send('regenerate'));
      footer.appendChild(this.regenBtn);
      bubble.appendChild(footer);
      this.row.appendChild(bubble);

      // Terms found in the question and the answer: plain text, linked to nothing.
      this.terms = el('aside', 'terms');
      this.terms.hidden = true;
      this.terms.appendChild(bind(el('h3', 'terms-title'), 'terms.title'));
      this.termsList = el('ul', 'terms-list');
      this.terms.appendChild(this.termsList);
      this.row.appendChild(this.terms);

      model.appendChild(this.row);
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
      window.requestAnimationFrame(() => {
        if (this.renderQueued) this.render(); // finish() may have rendered already
      });
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
      this.notes.appendChild(bind(el('p', 'turn-note' + (tone ? ' ' + tone : '')), key, args));
    }

    noteNotice(n, tone) {
      const p = el('p', 'turn-note' + (tone ? ' ' + tone : ''));
      setMessage(p, n);
      this.notes.appendChild(p);
    }

    setTerms(terms) {
      const list = Array.isArray(terms)
        ? terms.filter((x) => isObj(x) && (str(x.phrase) || str(x.preferred))) : [];
      this.termsList.replaceChildren();
      for (const term of list) {
        const li = el('li', 'term');
        const head = el('div', 'term-head');
        head.appendChild(el('span', 'term-phrase', String(term.phrase || '')));
        const arrow = el('span', 'term-arrow', ' → ');
        arrow.setAttribute('aria-hidden', 'true');
        head.appendChild(arrow);
        head.appendChild(el('span', 'term-preferred', String(term.preferred || '')));
        li.appendChild(head);
        const code = [str(term.code), str(term.system)].filter(Boolean).join(' · ');
        if (code) li.appendChild(el('div', 'term-code', code));
        this.termsList.appendChild(li);
      }
      this.terms.hidden = list.length === 0;
      this.row.classList.toggle('has-terms', list.length > 0);
    }

    finish() {
      this.finished = true;
      this.answerEl.setAttribute('aria-busy', 'false');
      this.pending.hidden = true;
      this.reasoningState.hidden = true;
      this.render();
      addCodeCopy(this.answerEl);
      this.copyBtn.hidden = this.answer.trim().length === 0;
      this.copyReasoningBtn.hidden = this.reasoning.trim().length === 0;
    }

    done(d) {
      if (d.thinking_unterminated === true) {
        this.details.hidden = false;
        this.details.open = true;
        this.note('reasoning.unterminated', null, 'warn');
      }
      if (d.finish_reason === 'length' || d.finish_reason === 'max_tokens') this.note('answer.length', null, 'warn');
      if (d.finish_reason === 'cancelled') this.note('answer.stopped');
      if (!this.answer.trim() && d.thinking_unterminated !== true && d.finish_reason !== 'cancelled') {
        this.note('answer.empty');
      }
      if (isNum(d.completion_tokens) && isNum(d.tokens_per_s) && isNum(d.time_to_first_token_ms)) {
        bind(this.meta, 'answer.meta', {
          tokens: d.completion_tokens,
          rate: d.tokens_per_s.toFixed(1),
          ttft: Math.round(d.time_to_first_token_ms),
        });
      }
      this.setTerms(d.terms);
      this.finish();
    }

    // Fills the turn from a stored assistant message (the conversation list).
    load(m) {
      this.reasoning = typeof m.reasoning === 'string' ? m.reasoning : '';
      this.answer = typeof m.content === 'string' ? m.content : '';
      this.answerStarted = true;
      if (this.reasoning) {
        this.details.hidden = false;
        this.details.open = false;
      }
      if (!this.answer.trim()) this.note('answer.empty');
      this.setTerms(m.terms);
      this.finish();
    }

    setActions(enabled) {
      this.editBtn.hidden = !enabled;
      this.regenBtn.hidden = !enabled;
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

  // Runs `fn`, then keeps the pane scrolled to the bottom if it was there.
  function keepScrolled(fn) {
    const p = ui.pane;
    const atBottom = p.scrollHeight - p.scrollTop - p.clientHeight < 80;
    fn();
    if (atBottom) p.scrollTop = p.scrollHeight;
  }

  const lastTurn = () => (ui.turns.lastElementChild ? turnOf.get(ui.turns.lastElementChild) : null);

  // Regenerate and edit act on the last turn only, once it has finished.
  function updateTurnActions() {
    const last = lastTurn();
    const can = modern() && !!state.conversationId && !state.busy && !state.loginShown;
    for (const root of ui.turns.children) {
      const turn = turnOf.get(root);
      if (turn) turn.setActions(can && turn === last && turn.finished && !state.editing);
    }
  }

  // ---- SSE over fetch -----------------------------------------------------------

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

  function updateSend() {
    ui.send.disabled = state.busy || !modelReady() || state.attachPending > 0;
  }

  function setBusy(busy) {
    state.busy = busy;
    const stopHadFocus = document.activeElement === ui.stop;
    ui.stop.disabled = !busy;
    ui.html.dataset.busy = busy ? '1' : '0';
    updateSend();
    updateTurnActions();
    renderConvBar();
    if (!busy && stopHadFocus) ui.input.focus();
  }

  function updateEmpty() {
    ui.empty.hidden = ui.turns.childElementCount > 0;
  }

  // The chat request body. `thinking` is understood by every daemon; the rest
  // only by one with the conversation API (see modern()).
  function chatBody(mode, message, images) {
    const body = { conversation_id: state.conversationId, message, thinking: ui.showReasoning.checked };
    if (modern()) {
      body.style = state.style;
      body.language = window.I18n.lang;
      if (mode === 'regenerate') body.regenerate = true;
      if (mode === 'edit') body.replace_last = true;
      // Data URLs in the order attached; no field without images.
      if (images.length) body.images = images.map((a) => a.dataUrl);
    }
    return body;
  }

  // mode: 'new' (the input as a new question), 'regenerate' (the last
  // question again), or 'new' while editing, which becomes 'edit' (the input
  // replaces the last question and its answer).
  async function send(mode = 'new') {
    if (state.busy || state.loginShown || !modelReady()) return;
    let question;
    let replaced = null; // the turn this request replaces in the view
    if (mode === 'regenerate') {
      replaced = lastTurn();
      if (!replaced || !state.conversationId || !modern()) return;
      question = replaced.question;
    } else {
      question = ui.input.value;
      if (!question.trim()) {
        if (state.attachments.length) showAttachMsg([{ key: 'attach.needText' }]);
        return;
      }
      if (state.attachPending) return; // the Send button is disabled meanwhile
      if (state.editing) {
        replaced = lastTurn();
        if (replaced && state.conversationId) mode = 'edit';
        else {
          replaced = null;
          cancelEdit(true);
        }
      }
    }
    hideNotice();
    const gen = ++state.generation;
    // A regenerated answer is to the same question and images (the daemon has them).
    const images = mode === 'regenerate' ? [] : state.attachments.slice();
    const turn = new Turn(question, { reasoningOpen: ui.showReasoning.checked,
      images: mode === 'regenerate' ? replaced.images : images });
    keepScrolled(() => {
      if (replaced) replaced.root.replaceWith(turn.root);
      else ui.turns.appendChild(turn.root);
      updateEmpty();
    });
    ui.pane.scrollTop = ui.pane.scrollHeight;
    if (mode !== 'regenerate') {
      ui.input.value = '';
      setAttachments([]);
      clearAttachMsg();
    }
    const controller = new AbortController();
    state.controller = controller;
    setBusy(true);

    const current = () => gen === state.generation;
    // Nothing came back: put the view back as it was, and the question and
    // its images in the composer.
    const giveBack = () => {
      if (replaced) turn.root.replaceWith(replaced.root);
      else turn.root.remove();
      updateEmpty();
      if (mode === 'regenerate' || state.loginShown) return;
      if (!ui.input.value) ui.input.value = question;
      if (images.length && !state.attachments.length && !state.attachPending) setAttachments(images);
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
          const n = errorNotice(d, 200, null);
          // A replaced turn is gone on the server once the stream started: keep the question shown.
          if (turn.hasOutput || replaced) {
            turn.noteNotice(n, 'error');
            turn.finish();
          } else {
            giveBack();
          }
          if (current()) showNotice(n);
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
        body: JSON.stringify(chatBody(mode, mode === 'regenerate' ? '' : question, images)),
        cache: 'no-store',
        signal: controller.signal,
      });
      if (!res.ok) {
        await failedResponse(res, giveBack, current, images.length > 0);
        return;
      }
      if (mode === 'edit' && current()) endEdit();
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
      dropOldImageData();
      if (current() && !state.loginShown) loadList();
    }
  }

  // `withImages`: the refused request carried images.
  async function failedResponse(res, giveBack, current, withImages) {
    let body = null;
    try { body = await res.json(); } catch (_) { body = null; }
    const err = errorOf(body);
    if (res.status === 401 && err.code === 'login_required') {
      sessionEnded(); // clears the view and the input: the next person must not see them
      return;
    }
    giveBack();
    if (!current()) return;
    if (err.code === 'loading') pollStatus(); // show the progress now, not at the next poll
    // Too large with images: the images, not the text, are what to cut.
    const tooLarge = err.code === 'body_too_large' || (!str(err.code) && res.status === 413);
    showNotice(tooLarge && withImages ? { key: 'err.body_too_large.images' } : errorNotice(err, res.status, res.headers));
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

  // ---- edit-and-resend of the last question ---------------------------------------

  function startEdit() {
    const last = lastTurn();
    if (!last || state.busy) return;
    state.editing = true;
    ui.editBar.hidden = false;
    last.root.classList.add('editing');
    last.root.querySelector('.bubble-user').scrollIntoView({ block: 'nearest' });
    ui.input.value = last.question;
    // Its images come back too: Send replaces the question and them.
    setAttachments(imagesAvailable() ? last.images.filter((a) => a.dataUrl) : []);
    clearAttachMsg();
    ui.input.focus();
    ui.input.setSelectionRange(ui.input.value.length, ui.input.value.length);
    updateTurnActions();
  }

  function endEdit() {
    state.editing = false;
    ui.editBar.hidden = true;
    for (const root of ui.turns.children) root.classList.remove('editing');
    updateTurnActions();
  }

  // Leaves edit mode; the input held the old question, so it is cleared unless `keepText`.
  function cancelEdit(keepText) {
    if (!state.editing) return;
    endEdit();
    if (!keepText) {
      ui.input.value = '';
      setAttachments([]);
    }
    ui.input.focus();
  }

  // ---- answer styles ----------------------------------------------------------------

  function availableStyles() {
    const s = currentStatus();
    if (!s || !Array.isArray(s.styles) || !modern()) return [];
    return s.styles.filter((x) => typeof x === 'string' && /^[a-z0-9_-]{1,32}$/.test(x));
  }

  function defaultStyle() {
    const styles = availableStyles();
    if (!styles.length) return null;
    const s = currentStatus();
    const d = s && str(s.default_style);
    return d && styles.includes(d) ? d : styles[0];
  }

  function renderStyle() {
    const styles = availableStyles();
    if (!styles.includes(state.style)) state.style = defaultStyle();
    ui.stylePicker.hidden = styles.length === 0;
    const have = Array.from(ui.styleOptions.querySelectorAll('input')).map((i) => i.value);
    if (have.join() !== styles.join()) {
      ui.styleOptions.replaceChildren();
      for (const name of styles) {
        const label = el('label', 'style-option');
        const input = el('input');
        input.type = 'radio';
        input.name = 'style';
        input.value = name;
        input.addEventListener('change', () => { if (input.checked) state.style = name; });
        label.appendChild(input);
        const span = el('span');
        if (window.I18n.has('style.' + name)) bind(span, 'style.' + name);
        else span.textContent = name;
        label.appendChild(span);
        ui.styleOptions.appendChild(label);
      }
    }
    for (const input of ui.styleOptions.querySelectorAll('input')) input.checked = input.value === state.style;
  }

  // ---- conversations ------------------------------------------------------------------

  function fmtTime(unix) {
    if (!isNum(unix)) return '';
    const d = new Date(unix * 1000);
    const lang = window.I18n.htmlLang();
    if (d.toDateString() === new Date().toDateString()) {
      return d.toLocaleTimeString(lang, { hour: '2-digit', minute: '2-digit' });
    }
    return d.toLocaleDateString(lang, { month: 'short', day: 'numeric' });
  }

  async function loadList() {
    if (!modern() || state.loginShown) {
      renderList();
      return;
    }
    const seq = ++state.listSeq; // an older answer must not overwrite a newer one
    try {
      const data = await api('/api/conversations');
      if (seq !== state.listSeq) return;
      state.conversations = isObj(data) && Array.isArray(data.conversations)
        ? data.conversations.filter((c) => isObj(c) && str(c.id)) : [];
      state.listSupported = true;
    } catch (e) {
      if (e instanceof AuthLost) return;
      if (e instanceof ApiFailure && (e.status === 404 || e.status === 405)) state.listSupported = false;
    }
    renderList();
    renderConvBar();
  }

  function renderList() {
    const show = modern() && state.listSupported;
    ui.sidebar.hidden = !show;
    ui.workspace.classList.toggle('no-sidebar', !show);
    if (!show) return;
    // Rebuilt only when something shown changed (a status poll must not undo a pending delete).
    const sig = JSON.stringify([window.I18n.lang, state.conversationId,
      state.conversations.map((c) => [c.id, c.title, c.turns, c.updated_unix])]);
    if (sig === state.listSig) return;
    state.listSig = sig;
    ui.convList.replaceChildren();
    for (const c of state.conversations) {
      const li = el('li', 'conv-item');
      const current = c.id === state.conversationId;
      li.classList.toggle('current', current);
      li.dataset.id = c.id;
      const open = el('button', 'conv-open');
      open.type = 'button';
      if (current) open.setAttribute('aria-current', 'true');
      const title = str(c.title);
      open.appendChild(title ? el('span', 'conv-item-title', title) : bind(el('span', 'conv-item-title'), 'list.untitled'));
      const turns = isNum(c.turns) ? c.turns : 0;
      open.appendChild(el('span', 'conv-item-meta',
        t(turns === 1 ? 'list.meta.one' : 'list.meta', { turns, time: fmtTime(c.updated_unix) })));
      open.addEventListener('click', () => openConversation(c.id));
      li.appendChild(open);
      const del = bind(el('button', 'btn btn-small conv-delete'), 'list.delete');
      del.type = 'button';
      del.title = t('list.delete.label', { title: title || t('list.untitled') });
      del.addEventListener('click', () => deleteConversation(c.id, li, del));
      li.appendChild(del);
      ui.convList.appendChild(li);
    }
    ui.convEmpty.hidden = state.conversations.length > 0;
  }

  function renderConvBar() {
    const id = state.conversationId;
    ui.convBar.hidden = !(modern() && id && !state.loginShown);
    if (ui.convBar.hidden) return;
    const entry = state.conversations.find((c) => c.id === id);
    const first = ui.turns.firstElementChild ? turnOf.get(ui.turns.firstElementChild) : null;
    // The whole first question (cut by CSS) where the view has it; the list's 60 characters otherwise.
    const title = (first && str(first.question)) || (entry && str(entry.title)) || '';
    ui.convTitle.textContent = title;
    ui.exportMd.disabled = state.busy;
    ui.exportPrint.disabled = state.busy;
  }

  // Empties the view for a fresh conversation (the old one stays on the server).
  function clearConversation() {
    state.generation++;
    state.conversationId = null;
    state.style = defaultStyle();
    state.contextUsed = null;
    state.contextLimit = null;
    if (state.editing) cancelEdit(false);
    ui.turns.replaceChildren();
    updateEmpty();
    hideNotice();
    renderContext();
    renderStyle();
    renderList();
    renderConvBar();
  }

  // Forgets everything shown (logout, another account): nothing of the last person stays.
  function resetView() {
    clearConversation();
    state.conversations = [];
    ui.input.value = '';
    state.attachEpoch++;
    setAttachments([]);
    clearAttachMsg();
    closePrintView();
    renderList();
  }

  async function newConversation() {
    if (state.busy) stop();
    const id = state.conversationId;
    clearConversation();
    ui.input.focus();
    // Without a conversation list the old one could never be reached again: forget it.
    if (id && !modern()) {
      try {
        await fetch('/api/conversations/' + encodeURIComponent(id), { method: 'DELETE', cache: 'no-store' });
      } catch (_) { /* the daemon expires it anyway */ }
    }
  }

  async function openConversation(id) {
    if (state.busy) stop();
    const gen = ++state.generation;
    let data;
    try {
      data = await api('/api/conversations/' + encodeURIComponent(id));
    } catch (e) {
      if (gen === state.generation) showNotice(noticeFor(e));
      if (e instanceof ApiFailure && e.status === 404) loadList();
      return;
    }
    if (gen !== state.generation || !isObj(data)) return;
    clearConversation();
    state.conversationId = id;
    const styles = availableStyles();
    state.style = styles.includes(data.style) ? data.style : defaultStyle();
    state.contextUsed = undefined; // counted again by the next answer
    let turn = null;
    const messages = Array.isArray(data.messages) ? data.messages.filter(isObj) : [];
    for (const m of messages) {
      if (m.role === 'user') {
        if (turn) turn.load({});
        turn = new Turn(typeof m.content === 'string' ? m.content : '');
        ui.turns.appendChild(turn.root);
      } else if (m.role === 'assistant' && turn) {
        turn.load(m);
        turn = null;
      }
    }
    if (turn) turn.load({});
    updateEmpty();
    renderContext();
    renderStyle();
    renderList();
    renderConvBar();
    updateTurnActions();
    ui.pane.scrollTop = ui.pane.scrollHeight;
  }

  async function deleteConversation(id, li, btn) {
    if (btn.dataset.confirm !== '1') {
      // Two steps: a stray click must not delete a conversation.
      btn.dataset.confirm = '1';
      li.classList.add('confirming');
      bind(btn, 'list.delete.confirm');
      setTimeout(() => {
        if (!btn.isConnected) return;
        delete btn.dataset.confirm;
        li.classList.remove('confirming');
        bind(btn, 'list.delete');
      }, DELETE_CONFIRM_MS);
      return;
    }
    try {
      await api('/api/conversations/' + encodeURIComponent(id), { method: 'DELETE' });
    } catch (e) {
      // Already gone (expired) is what was asked for.
      if (!(e instanceof ApiFailure && e.status === 404)) {
        showNotice(noticeFor(e));
        return;
      }
    }
    if (id === state.conversationId) {
      if (state.busy) stop();
      clearConversation();
    }
    state.conversations = state.conversations.filter((c) => c.id !== id);
    renderList();
    loadList();
  }

  // ---- export -----------------------------------------------------------------------

  function exportFileName() {
    const d = new Date();
    const p = (n) => String(n).padStart(2, '0');
    return `medgemma-conversation-${d.getFullYear()}${p(d.getMonth() + 1)}${p(d.getDate())}-${p(d.getHours())}${p(d.getMinutes())}.md`;
  }

  async function exportConversation(format) {
    const id = state.conversationId;
    if (!id || state.busy) return;
    let data;
    try {
      data = await api('/api/conversations/' + encodeURIComponent(id) + '/export', { method: 'POST', body: { format } });
    } catch (e) {
      showNotice(noticeFor(e));
      return;
    }
    const markdown = isObj(data) && typeof data.markdown === 'string' ? data.markdown : null;
    if (markdown === null) {
      showNotice({ key: 'error.http', args: { status: 200 } });
      return;
    }
    if (format === 'markdown') download(markdown, exportFileName());
    else openPrintView(markdown);
  }

  function download(text, name) {
    const url = URL.createObjectURL(new Blob([text], { type: 'text/markdown;charset=utf-8' }));
    const a = el('a');
    a.href = url;
    a.download = name;
    a.hidden = true;
    document.body.appendChild(a);
    a.click();
    a.remove();
    setTimeout(() => URL.revokeObjectURL(url), 10000);
  }

  function openPrintView(markdown) {
    ui.printBody.replaceChildren(window.MedMarkdown.render(markdown));
    bind(ui.printHead, 'print.head', { time: new Date().toLocaleString(window.I18n.htmlLang()) });
    ui.printView.hidden = false;
    ui.html.dataset.print = '1';
    ui.printNow.focus();
  }

  function closePrintView() {
    if (ui.printView.hidden) return;
    ui.printView.hidden = true;
    ui.printBody.replaceChildren(); // the text does not linger in the page
    delete ui.html.dataset.print;
    if (!ui.convBar.hidden) ui.exportPrint.focus();
  }

  // ---- language, theme, reasoning switch ------------------------------------------------

  function renderLangToggle() {
    const other = window.I18n.lang === 'zh' ? 'en' : 'zh';
    ui.langToggle.lang = other === 'zh' ? 'zh-CN' : 'en';
  }

  function setLang(lang) {
    window.I18n.setLang(lang, true);
    renderLangToggle();
    renderStatus();
    renderContext();
    renderList();
  }

  function renderTheme() {
    const dark = window.MedTheme.current === 'dark';
    ui.themeToggle.setAttribute('aria-pressed', dark ? 'true' : 'false');
  }

  function storedReasoning() {
    try {
      return window.localStorage.getItem(REASONING_KEY) !== '0';
    } catch (_) {
      return true;
    }
  }

  // ---- wiring -------------------------------------------------------------------------

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
  document.addEventListener('keydown', (e) => {
    if (e.key !== 'Escape' || e.isComposing) return;
    if (!ui.printView.hidden) closePrintView();
    else if (state.busy) stop();
    else if (state.editing) cancelEdit(false);
    else return;
    e.preventDefault();
  });
  ui.stop.addEventListener('click', stop);
  ui.attach.addEventListener('click', () => ui.attachInput.click());
  ui.attachInput.addEventListener('change', () => {
    addFiles(ui.attachInput.files);
    ui.attachInput.value = ''; // the same file can be chosen again after removing it
  });
  // Files dropped on the composer are attached; dropped anywhere else, the
  // browser must not open them in place of the page.
  document.addEventListener('dragover', (e) => {
    if (!draggingFiles(e)) return;
    e.preventDefault();
    e.dataTransfer.dropEffect = 'none';
  });
  document.addEventListener('drop', (e) => {
    if (draggingFiles(e)) e.preventDefault();
  });
  ui.form.addEventListener('dragenter', (e) => {
    if (!draggingFiles(e) || !imagesAvailable()) return;
    e.preventDefault();
    state.dragDepth++;
    setDropping(true);
  });
  ui.form.addEventListener('dragover', (e) => {
    if (!draggingFiles(e) || !imagesAvailable()) return;
    e.preventDefault();
    e.stopPropagation();
    e.dataTransfer.dropEffect = 'copy';
  });
  ui.form.addEventListener('dragleave', (e) => {
    if (!draggingFiles(e)) return;
    state.dragDepth = Math.max(0, state.dragDepth - 1);
    if (state.dragDepth === 0) setDropping(false);
  });
  ui.form.addEventListener('drop', (e) => {
    if (!draggingFiles(e)) return;
    e.preventDefault();
    e.stopPropagation();
    state.dragDepth = 0;
    setDropping(false);
    addFiles(e.dataTransfer.files);
  });
  // Pasted images (a screenshot, an image copied from a viewer). Text pasted
  // with them still goes into the input.
  document.addEventListener('paste', (e) => {
    if (state.loginShown || !e.clipboardData || ui.login.contains(e.target)) return;
    const files = Array.from(e.clipboardData.files || []);
    if (!files.length) return;
    const withText = Array.from(e.clipboardData.types || []).includes('text/plain');
    if (!withText) e.preventDefault();
    if (imagesAvailable() || !withText) addFiles(files);
  });
  ui.newConv.addEventListener('click', newConversation);
  ui.noticeNew.addEventListener('click', newConversation);
  ui.noticeDismiss.addEventListener('click', hideNotice);
  ui.editCancel.addEventListener('click', () => cancelEdit(false));
  ui.exportMd.addEventListener('click', () => exportConversation('markdown'));
  ui.exportPrint.addEventListener('click', () => exportConversation('print'));
  ui.printNow.addEventListener('click', () => window.print());
  ui.printClose.addEventListener('click', closePrintView);
  ui.loginForm.addEventListener('submit', login);
  ui.logout.addEventListener('click', logout);
  ui.langToggle.addEventListener('click', () => setLang(window.I18n.lang === 'zh' ? 'en' : 'zh'));
  ui.themeToggle.addEventListener('click', () => window.MedTheme.toggle());
  window.MedTheme.onChange(renderTheme);
  ui.showReasoning.addEventListener('change', () => {
    try {
      window.localStorage.setItem(REASONING_KEY, ui.showReasoning.checked ? '1' : '0');
    } catch (_) { /* not remembered */ }
  });
  document.addEventListener('visibilitychange', () => {
    if (document.visibilityState === 'visible') pollStatus();
  });

  window.I18n.setLang(window.I18n.lang, false);
  ui.showReasoning.checked = storedReasoning();
  renderLangToggle();
  renderTheme();
  renderStatus();
  renderContext();
  setBusy(false);
  updateEmpty();
  pollStatus()
    .then(() => (state.loginShown ? null : loadList()))
    .finally(() => {
      state.initialized = true;
      ui.html.dataset.ready = '1';
    });
  ui.input.focus();
})();
