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
      'status.queue': 'Queue: {active} of {max} answering at once, {waiting} waiting of {capacity}',
      'status.version': 'Version {version}',
      'status.unknown': 'unknown',
      'conv.label': 'Conversation',
      'conv.empty.title': 'Ask a clinical question',
      'conv.empty.body': 'Answers stream here. The model’s reasoning is shown separately and folds away once the answer starts.',
      'conv.empty.keys': 'Enter sends · Shift+Enter starts a new line · Esc stops the answer',
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
      'theme.dark': 'Dark mode',
      'auth.title': 'Log in',
      'auth.sub': 'Use the account your administrator gave you.',
      'auth.user': 'User name',
      'auth.password': 'Password',
      'auth.submit': 'Log in',
      'auth.missing': 'Enter your user name and password.',
      'auth.logout': 'Log out',
      'auth.signedIn': 'Signed in as {user}',
      'list.label': 'Conversations',
      'list.title': 'Conversations',
      'list.empty': 'No conversations yet.',
      'list.untitled': 'Untitled conversation',
      'list.meta': '{turns} questions · {time}',
      'list.meta.one': '1 question · {time}',
      'list.delete': 'Delete',
      'list.delete.confirm': 'Confirm delete',
      'list.delete.label': 'Delete the conversation “{title}”',
      'export.markdown': 'Download Markdown',
      'export.print': 'Print view',
      'print.label': 'Print view',
      'print.print': 'Print',
      'print.close': 'Close',
      'print.head': 'MedGemma conversation · exported {time}',
      'style.label': 'Answer style',
      'style.structured': 'Structured',
      'style.brief': 'Brief',
      'reasoning.show': 'Show reasoning',
      'edit.button': 'Edit',
      'edit.active': 'Editing your last question: Send replaces it and its answer.',
      'edit.cancel': 'Cancel editing',
      'answer.regenerate': 'Regenerate',
      'copy.reasoning': 'Copy reasoning',
      'copy.code': 'Copy code',
      'terms.title': 'Terms',
      'input.stop.title': 'Stop generating (Esc)',
      'context.unknown': 'Context: counted after the next answer',
      'loading.model': 'Loading the model…',
      'loading.stage': 'Loading the model: {stage}',
      'loading.percent': 'Loading the model… {percent} %',
      'loading.stage.percent': 'Loading the model: {stage} · {percent} %',
      'loading.failed': 'The model could not be loaded. Tell the administrator (medgemmactl status shows why).',
      'note.device': 'Not a medical device.',
      'err.loading': 'The model is still loading; try again in {seconds} s.',
      'err.model_failed': 'The model could not be loaded, so the appliance cannot answer. Tell the administrator.',
      'err.loading.noretry': 'The model is still loading; try again shortly.',
      'err.locked_out': 'Too many failed attempts. Try again in {seconds} s.',
      'err.locked_out.noretry': 'Too many failed attempts. Try again later.',
      'err.login_failed': 'Wrong user name or password.',
      'err.login_required': 'Your session has ended. Log in again.',
      'err.context_full': 'This conversation has reached the model’s context limit. Start a new conversation to continue.',
      'err.conversation_not_found': 'This conversation is no longer on the server (it expired or was deleted). Start a new conversation.',
      'err.conversation_busy': 'This conversation is still answering. Wait for it to finish or press Stop.',
      'err.too_many_conversations': 'Too many conversations are open on the server. Delete some, or try again later.',
      'err.client_limit': 'You have too many conversations or answers at once. Delete old conversations, or wait for an answer to finish.',
      'err.invalid_conversation': 'This conversation cannot be continued. Start a new conversation.',
      'err.shutting_down': 'The service is restarting. Try again in a minute.',
      'err.audit_failed': 'The audit log cannot be written, so the appliance cannot answer. Tell the administrator.',
      'err.engine_error': 'The model failed while answering. Send the question again.',
      'err.engine_panic': 'The model failed while answering. Send the question again.',
      'err.engine_stopped': 'The model stopped before answering. Send the question again.',
      'err.random_source_failed': 'The server could not start a conversation. Tell the administrator.',
      'err.invalid_request': 'The server refused the request as invalid. Reload the page and try again.',
      'err.invalid_json': 'The server refused the request as invalid. Reload the page and try again.',
      'err.unsupported_media_type': 'The server refused the request as invalid. Reload the page and try again.',
      'err.body_too_large': 'The message is too long. Shorten it or start a new conversation.',
      'err.body_too_large.images': 'The question and its images are too large together for the server. Send fewer or smaller images.',
      'err.body_timeout': 'The request arrived too slowly. Try again.',
      'err.origin_not_allowed': 'The appliance refused this page’s address. Open MedGemma at the address your administrator gave.',
      'err.host_not_allowed': 'The appliance refused this page’s address. Open MedGemma at the address your administrator gave.',
      'err.not_found': 'The service does not know this request. Reload the page (the appliance may have been upgraded).',
      'err.method_not_allowed': 'The service does not know this request. Reload the page (the appliance may have been upgraded).',
      'attach.button': 'Attach image',
      'attach.title': 'Attach PNG, JPEG or DICOM images (or paste them, or drop them on the question box)',
      'attach.label': 'Attached images',
      'attach.remove': 'Remove',
      'attach.drop': 'Drop PNG, JPEG or DICOM images here',
      'attach.dicom': 'DICOM',
      'attach.noPreview': 'no preview',
      'attach.tooMany': 'Not attached: {names}. At most {max} images can go with one message.',
      'attach.tooLarge': 'Not attached: {name} is larger than {max} MiB. Send a smaller image (one slice, or a lower resolution).',
      'attach.type': 'Not attached: {name} is not a PNG, JPEG or DICOM file.',
      'attach.unreadable': 'Not attached: {name} could not be read as an image.',
      'attach.off': 'The model loaded now does not read images, so nothing was attached.',
      'attach.removed': 'The model loaded now does not read images; the attached images were removed.',
      'attach.needText': 'Type a question to send with the images.',
      'conv.images': 'Images sent with this question',
      'err.image_invalid': 'The server could not use an image: {detail}',
      'err.image_invalid.nodetail': 'The server could not use an image. Attach a PNG, JPEG or single-frame DICOM file.',
      'err.too_many_images': 'Too many images for one message: {detail}',
      'err.too_many_images.nodetail': 'Too many images for one message. Remove some and send again.',
      'err.image_too_large': 'An image is too large: {detail}',
      'err.image_too_large.nodetail': 'An image is too large. Send a smaller image.',
      'err.role_not_allowed': 'This is an auditor account: it can export and verify the audit log, not ask questions.',
      'err.sso_only': 'This appliance logs you in through the hospital’s single sign-on. Open it at the address your administrator gave.',
      'err.daemon_unreachable': 'The MedGemma service is not running or is still starting. Wait a moment and reload.',
      'err.invalid_token': 'The API token is missing or no longer valid. Ask the administrator for a new one.',
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
      'status.queue': '队列：{active} 个进行中（最多同时 {max} 个），{waiting} 个等待，容量 {capacity}',
      'status.version': '版本 {version}',
      'status.unknown': '未知',
      'conv.label': '对话',
      'conv.empty.title': '请输入临床问题',
      'conv.empty.body': '回答会在此逐步显示。模型的推理过程单独显示，回答开始后自动折叠。',
      'conv.empty.keys': 'Enter 发送 · Shift+Enter 换行 · Esc 停止回答',
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
      'theme.dark': '深色模式',
      'auth.title': '登录',
      'auth.sub': '请使用管理员为您分配的账户。',
      'auth.user': '用户名',
      'auth.password': '密码',
      'auth.submit': '登录',
      'auth.missing': '请输入用户名和密码。',
      'auth.logout': '退出登录',
      'auth.signedIn': '当前用户：{user}',
      'list.label': '对话列表',
      'list.title': '对话',
      'list.empty': '暂无对话。',
      'list.untitled': '未命名对话',
      'list.meta': '{turns} 个问题 · {time}',
      'list.meta.one': '1 个问题 · {time}',
      'list.delete': '删除',
      'list.delete.confirm': '确认删除',
      'list.delete.label': '删除对话“{title}”',
      'export.markdown': '下载 Markdown',
      'export.print': '打印视图',
      'print.label': '打印视图',
      'print.print': '打印',
      'print.close': '关闭',
      'print.head': 'MedGemma 对话 · 导出于 {time}',
      'style.label': '回答风格',
      'style.structured': '结构化',
      'style.brief': '简要',
      'reasoning.show': '显示推理过程',
      'edit.button': '编辑',
      'edit.active': '正在编辑上一个问题：发送后将替换该问题及其回答。',
      'edit.cancel': '取消编辑',
      'answer.regenerate': '重新生成',
      'copy.reasoning': '复制推理过程',
      'copy.code': '复制代码',
      'terms.title': '术语',
      'input.stop.title': '停止生成（Esc）',
      'context.unknown': '上下文：下次回答后统计',
      'loading.model': '正在加载模型…',
      'loading.stage': '正在加载模型：{stage}',
      'loading.percent': '正在加载模型… {percent}%',
      'loading.stage.percent': '正在加载模型：{stage} · {percent}%',
      'loading.failed': '模型加载失败。请联系管理员（medgemmactl status 可查看原因）。',
      'note.device': '本系统不是医疗器械。',
      'err.loading': '模型仍在加载，请在 {seconds} 秒后重试。',
      'err.model_failed': '模型未能加载，系统无法回答。请联系管理员。',
      'err.loading.noretry': '模型仍在加载，请稍后重试。',
      'err.locked_out': '失败次数过多，请在 {seconds} 秒后重试。',
      'err.locked_out.noretry': '失败次数过多，请稍后重试。',
      'err.login_failed': '用户名或密码错误。',
      'err.login_required': '会话已结束，请重新登录。',
      'err.context_full': '本对话已达到模型的上下文上限，请开始新对话以继续。',
      'err.conversation_not_found': '服务器上已没有此对话（已过期或已删除），请开始新对话。',
      'err.conversation_busy': '本对话仍在回答中，请等待完成或点击“停止”。',
      'err.too_many_conversations': '服务器上打开的对话过多，请删除部分对话或稍后重试。',
      'err.client_limit': '您同时打开的对话或正在生成的回答过多。请删除旧对话，或等待回答完成。',
      'err.invalid_conversation': '本对话无法继续，请开始新对话。',
      'err.shutting_down': '服务正在重启，请一分钟后重试。',
      'err.audit_failed': '无法写入审计日志，因此系统无法回答。请联系管理员。',
      'err.engine_error': '模型回答时出错，请重新发送问题。',
      'err.engine_panic': '模型回答时出错，请重新发送问题。',
      'err.engine_stopped': '模型在回答前已停止，请重新发送问题。',
      'err.random_source_failed': '服务器无法创建对话，请联系管理员。',
      'err.invalid_request': '服务器认为请求无效。请刷新页面后重试。',
      'err.invalid_json': '服务器认为请求无效。请刷新页面后重试。',
      'err.unsupported_media_type': '服务器认为请求无效。请刷新页面后重试。',
      'err.body_too_large': '消息过长，请缩短后重试或开始新对话。',
      'err.body_too_large.images': '问题与图像合计超出服务器的上限。请减少图像数量或发送更小的图像。',
      'err.body_timeout': '请求传输过慢，请重试。',
      'err.origin_not_allowed': '系统拒绝了此页面的地址。请使用管理员提供的地址打开 MedGemma。',
      'err.host_not_allowed': '系统拒绝了此页面的地址。请使用管理员提供的地址打开 MedGemma。',
      'err.not_found': '服务无法识别此请求。请刷新页面（系统可能已升级）。',
      'err.method_not_allowed': '服务无法识别此请求。请刷新页面（系统可能已升级）。',
      'attach.button': '附加图像',
      'attach.title': '附加 PNG、JPEG 或 DICOM 图像（也可粘贴，或拖放到问题输入框）',
      'attach.label': '已附加的图像',
      'attach.remove': '移除',
      'attach.drop': '将 PNG、JPEG 或 DICOM 图像拖放到此处',
      'attach.dicom': 'DICOM',
      'attach.noPreview': '无预览',
      'attach.tooMany': '未附加：{names}。每条消息最多可附带 {max} 张图像。',
      'attach.tooLarge': '未附加：{name} 超过 {max} MiB。请发送更小的图像（单个切片或较低分辨率）。',
      'attach.type': '未附加：{name} 不是 PNG、JPEG 或 DICOM 文件。',
      'attach.unreadable': '未附加：无法将 {name} 读取为图像。',
      'attach.off': '当前加载的模型不能读取图像，因此未附加任何文件。',
      'attach.removed': '当前加载的模型不能读取图像，已移除附加的图像。',
      'attach.needText': '请输入与图像一起发送的问题。',
      'conv.images': '随此问题发送的图像',
      'err.image_invalid': '服务器无法使用其中一张图像：{detail}',
      'err.image_invalid.nodetail': '服务器无法使用其中一张图像。请附加 PNG、JPEG 或单帧 DICOM 文件。',
      'err.too_many_images': '单条消息附带的图像过多：{detail}',
      'err.too_many_images.nodetail': '单条消息附带的图像过多。请移除部分图像后重新发送。',
      'err.image_too_large': '图像过大：{detail}',
      'err.image_too_large.nodetail': '图像过大，请发送更小的图像。',
      'err.role_not_allowed': '这是审计员账户：只能导出和校验审计日志，不能提问。',
      'err.sso_only': '本系统通过医院的统一身份认证登录。请使用管理员提供的地址打开。',
      'err.daemon_unreachable': 'MedGemma 服务未运行或仍在启动。请稍候并刷新页面。',
      'err.invalid_token': 'API 令牌缺失或已失效。请向管理员申请新的令牌。',
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

  // Whether `key` has a string (in English at least).
  const has = (key) => Object.prototype.hasOwnProperty.call(STRINGS.en, key);

  window.I18n = {
    t, apply, bind, setLang, has,
    get lang() { return current; },
    htmlLang: () => HTML_LANG[current],
  };
})();
