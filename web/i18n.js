// Every visible string of the web UI, in English and Simplified Chinese.
// Placeholders are written {name} and filled by I18n.t(key, {name: value}).
'use strict';

(function () {
  const STRINGS = {
    en: {
      'app.title': 'MedGemma',
      'app.subtitle': 'Local clinical assistant',
      'lang.switch': '中文',
      'lang.switch.label': 'Switch the interface to Chinese',
      'status.label': 'System status',
      'status.loading': 'Checking status…',
      'status.unreachable': 'Status unavailable: the daemon did not answer',
      'status.gpu': 'GPU: {name} · {used} / {total} GiB',
      'status.gpu.nomem': 'GPU: {name}',
      'status.cpu': 'CPU',
      'status.cpu.reason': 'CPU — {reason}',
      'status.backend.unknown': 'Compute: unknown',
      'status.model': 'Model: {label}',
      'status.model.unknown': 'Model: unknown',
      'status.demo': 'Demo model — not a medical model',
      'status.sandbox.on': 'Local only · sandbox enforced',
      'status.sandbox.off': 'Sandbox OFF (development)',
      'status.sandbox.unknown': 'Local only · sandbox state unknown',
      'status.queue': 'Queue: {active} of {max} answering at once, {length} waiting of {capacity}',
      'status.version': 'Version {version}',
      'status.unknown': 'unknown',
      'conv.label': 'Conversation',
      'conv.empty.title': 'Ask a clinical question',
      'conv.empty.body': 'Answers stream here. The model’s reasoning is shown separately and folds away once the answer starts.',
      'conv.empty.keys': 'Enter sends · Shift+Enter starts a new line',
      'conv.you': 'You',
      'conv.model': 'MedGemma',
      'conv.new': 'New conversation',
      'conv.new.offer': 'Start a new conversation',
      'reasoning.label': 'Reasoning',
      'reasoning.streaming': 'thinking…',
      'reasoning.unterminated': 'The reasoning trace was cut off before it ended.',
      'answer.waiting': 'Waiting for the model…',
      'answer.empty': 'The model gave no answer.',
      'answer.copy': 'Copy answer',
      'answer.copied': 'Copied',
      'answer.copyFailed': 'Copy failed',
      'answer.stopped': 'Stopped.',
      'answer.length': 'The answer reached the length limit and may be incomplete.',
      'answer.interrupted': 'The connection closed before the answer was complete.',
      'answer.meta': '{tokens} tokens · {rate} tokens/s · first token after {ttft} ms',
      'input.label': 'Your question',
      'input.placeholder': 'Type a question… (Enter sends, Shift+Enter for a new line)',
      'input.send': 'Send',
      'input.stop': 'Stop',
      'context.value': 'Context: {used} / {limit} tokens',
      'context.value.nolimit': 'Context: {used} tokens',
      'context.empty': 'Context: empty',
      'context.warn': 'The conversation is nearly full. Start a new conversation soon.',
      'error.busy': 'The model is busy, try again in {seconds} s.',
      'error.busy.noretry': 'The model is busy, try again shortly.',
      'error.http': 'The request failed (HTTP {status}).',
      'error.network': 'The daemon could not be reached. Check that the MedGemma service is running.',
      'error.dismiss': 'Dismiss',
      'note.disclaimer': 'MedGemma output supports and does not replace clinical judgement.',
    },
    zh: {
      'app.title': 'MedGemma',
      'app.subtitle': '本地临床助手',
      'lang.switch': 'English',
      'lang.switch.label': '将界面切换为英文',
      'status.label': '系统状态',
      'status.loading': '正在检查状态…',
      'status.unreachable': '无法获取状态：服务未响应',
      'status.gpu': 'GPU：{name} · {used} / {total} GiB',
      'status.gpu.nomem': 'GPU：{name}',
      'status.cpu': 'CPU',
      'status.cpu.reason': 'CPU — {reason}',
      'status.backend.unknown': '计算设备：未知',
      'status.model': '模型：{label}',
      'status.model.unknown': '模型：未知',
      'status.demo': '演示模型——非医疗模型',
      'status.sandbox.on': '仅本地 · 沙箱已启用',
      'status.sandbox.off': '沙箱已关闭（开发模式）',
      'status.sandbox.unknown': '仅本地 · 沙箱状态未知',
      'status.queue': '队列：{active} 个进行中（最多同时 {max} 个），{length} 个等待，容量 {capacity}',
      'status.version': '版本 {version}',
      'status.unknown': '未知',
      'conv.label': '对话',
      'conv.empty.title': '请输入临床问题',
      'conv.empty.body': '回答会在此逐步显示。模型的推理过程单独显示，回答开始后自动折叠。',
      'conv.empty.keys': 'Enter 发送 · Shift+Enter 换行',
      'conv.you': '您',
      'conv.model': 'MedGemma',
      'conv.new': '新建对话',
      'conv.new.offer': '开始新对话',
      'reasoning.label': '推理过程',
      'reasoning.streaming': '思考中…',
      'reasoning.unterminated': '推理过程在结束前被截断。',
      'answer.waiting': '正在等待模型…',
      'answer.empty': '模型没有给出回答。',
      'answer.copy': '复制回答',
      'answer.copied': '已复制',
      'answer.copyFailed': '复制失败',
      'answer.stopped': '已停止。',
      'answer.length': '回答已达到长度上限，可能不完整。',
      'answer.interrupted': '回答完成前连接已关闭。',
      'answer.meta': '{tokens} 个词元 · 每秒 {rate} 个词元 · 首个词元用时 {ttft} 毫秒',
      'input.label': '您的问题',
      'input.placeholder': '输入问题…（Enter 发送，Shift+Enter 换行）',
      'input.send': '发送',
      'input.stop': '停止',
      'context.value': '上下文：{used} / {limit} 个词元',
      'context.value.nolimit': '上下文：{used} 个词元',
      'context.empty': '上下文：空',
      'context.warn': '对话即将占满上下文，请尽快开始新对话。',
      'error.busy': '模型正忙，请在 {seconds} 秒后重试。',
      'error.busy.noretry': '模型正忙，请稍后重试。',
      'error.http': '请求失败（HTTP {status}）。',
      'error.network': '无法连接服务。请确认 MedGemma 服务正在运行。',
      'error.dismiss': '关闭',
      'note.disclaimer': 'MedGemma 的输出仅供辅助，不能替代临床判断。',
    },
  };

  const HTML_LANG = { en: 'en', zh: 'zh-CN' };
  const STORAGE_KEY = 'medgemma.lang';

  function storedLang() {
    try {
      const v = window.localStorage.getItem(STORAGE_KEY);
      return v === 'en' || v === 'zh' ? v : null;
    } catch (_) {
      return null; // storage may be disabled by policy
    }
  }

  function browserLang() {
    const langs = navigator.languages && navigator.languages.length
      ? navigator.languages : [navigator.language || 'en'];
    for (const l of langs) {
      const low = String(l).toLowerCase();
      if (low.startsWith('zh')) return 'zh';
      if (low.startsWith('en')) return 'en';
    }
    return 'en';
  }

  let current = storedLang() || browserLang();

  function t(key, args) {
    const table = STRINGS[current] || STRINGS.en;
    let s = Object.prototype.hasOwnProperty.call(table, key) ? table[key] : STRINGS.en[key];
    if (s === undefined) return key;
    if (args) {
      s = s.replace(/\{(\w+)\}/g, (m, name) =>
        Object.prototype.hasOwnProperty.call(args, name) ? String(args[name]) : m);
    }
    return s;
  }

  // Fills every element carrying data-i18n (textContent), data-i18n-placeholder,
  // data-i18n-aria-label or data-i18n-title; arguments come from data-i18n-args (JSON).
  function apply(root) {
    const scope = root || document;
    const argsOf = (el) => {
      if (!el.dataset.i18nArgs) return undefined;
      try { return JSON.parse(el.dataset.i18nArgs); } catch (_) { return undefined; }
    };
    scope.querySelectorAll('[data-i18n]').forEach((el) => {
      el.textContent = t(el.dataset.i18n, argsOf(el));
    });
    scope.querySelectorAll('[data-i18n-placeholder]').forEach((el) => {
      el.placeholder = t(el.dataset.i18nPlaceholder);
    });
    scope.querySelectorAll('[data-i18n-aria-label]').forEach((el) => {
      el.setAttribute('aria-label', t(el.dataset.i18nAriaLabel));
    });
    scope.querySelectorAll('[data-i18n-title]').forEach((el) => {
      el.title = t(el.dataset.i18nTitle);
    });
  }

  // Marks an element as showing the translated string `key`, and fills it now.
  function bind(el, key, args) {
    el.dataset.i18n = key;
    if (args) el.dataset.i18nArgs = JSON.stringify(args);
    else delete el.dataset.i18nArgs;
    el.textContent = t(key, args);
    return el;
  }

  // Switches the language; `remember` stores the choice for the next visit.
  function setLang(lang, remember) {
    if (!STRINGS[lang]) return;
    current = lang;
    if (remember) {
      try { window.localStorage.setItem(STORAGE_KEY, lang); } catch (_) { /* not remembered */ }
    }
    document.documentElement.lang = HTML_LANG[lang];
    apply(document);
  }

  window.I18n = {
    t, apply, bind, setLang,
    get lang() { return current; },
    htmlLang: () => HTML_LANG[current],
  };
})();
