// A small, safe Markdown renderer for the model's answers.
//
// Model text only ever reaches the page through createTextNode/textContent:
// no innerHTML, no attributes taken from the text, no links, no images. Raw
// HTML in an answer is therefore shown as the characters it is made of.
//
// Blocks: paragraphs (a single newline is a line break), ATX headings, fenced
// code blocks, bulleted and numbered lists (nested by indentation), block
// quotes, horizontal rules and pipe tables. Inline: `code`, **bold**,
// *italic*, ~~strikethrough~~, backslash escapes; [text](url) becomes
// "text (url)" as plain text.
'use strict';

(function () {
  const RE = {
    blank: /^\s*$/,
    fence: /^ {0,3}(`{3,}|~{3,})(.*)$/,
    heading: /^ {0,3}(#{1,6})(?:[ \t]+(.*?))?(?:[ \t]+#+)?[ \t]*$/,
    hr: /^ {0,3}([-*_])(?:[ \t]*\1){2,}[ \t]*$/,
    bullet: /^( *)([-*+])(?:[ \t]+(.*))?$/,
    ordered: /^( *)(\d{1,9})([.)])(?:[ \t]+(.*))?$/,
    quote: /^ {0,3}>[ ]?(.*)$/,
    tableSep: /^ *\|? *:?-+:? *(?:\| *:?-+:? *)*\|? *$/,
  };
  const ESCAPABLE = '\\`*_{}[]()#+-.!|~<>';

  function el(tag, className) {
    const node = document.createElement(tag);
    if (className) node.className = className;
    return node;
  }

  function indentOf(line) {
    const m = /^ */.exec(line);
    return m[0].length;
  }

  function listItem(line) {
    let m = RE.bullet.exec(line);
    // "---" or "* * *" is a rule, not a list item.
    if (m && !RE.hr.test(line)) {
      return { ordered: false, indent: m[1].length, marker: m[2], text: m[3] || '',
        contentIndent: m[1].length + m[2].length + 1 };
    }
    m = RE.ordered.exec(line);
    if (m) {
      return { ordered: true, indent: m[1].length, start: parseInt(m[2], 10), text: m[4] || '',
        contentIndent: m[1].length + m[2].length + m[3].length + 1 };
    }
    return null;
  }

  function isTableStart(lines, i) {
    return i + 1 < lines.length && lines[i].includes('|') &&
      lines[i + 1].includes('|') && lines[i + 1].includes('-') && RE.tableSep.test(lines[i + 1]);
  }

  function startsBlock(lines, i) {
    const line = lines[i];
    return RE.fence.test(line) || RE.heading.test(line) || RE.hr.test(line) ||
      RE.quote.test(line) || listItem(line) !== null || isTableStart(lines, i);
  }

  // ---- inline -------------------------------------------------------------

  const isSpace = (c) => c === undefined || /\s/.test(c);
  const isWordChar = (c) => c !== undefined && /[\p{L}\p{N}]/u.test(c);

  // Index of a closing delimiter run `delim` (e.g. "**") at or after `from`,
  // not preceded by whitespace, not part of a longer run; -1 if none.
  function findClose(text, from, delim) {
    const ch = delim[0];
    let j = text.indexOf(delim, from);
    while (j !== -1) {
      const before = text[j - 1];
      const after = text[j + delim.length];
      const runOk = after !== ch && before !== ch;
      const flankOk = !isSpace(before) && !(ch === '_' && isWordChar(after));
      if (runOk && flankOk) return j;
      j = text.indexOf(delim, j + 1);
    }
    return -1;
  }

  function renderInline(text, parent) {
    let buf = '';
    const flush = () => {
      if (buf) {
        parent.appendChild(document.createTextNode(buf));
        buf = '';
      }
    };
    const n = text.length;
    let i = 0;
    while (i < n) {
      const c = text[i];

      if (c === '\\' && i + 1 < n && ESCAPABLE.includes(text[i + 1])) {
        buf += text[i + 1];
        i += 2;
        continue;
      }

      if (c === '`') {
        let run = 1;
        while (text[i + run] === '`') run++;
        const re = /`+/g;
        re.lastIndex = i + run;
        let m;
        let close = -1;
        while ((m = re.exec(text)) !== null) {
          if (m[0].length === run) {
            close = m.index;
            break;
          }
        }
        if (close !== -1) {
          flush();
          let content = text.slice(i + run, close);
          if (content.length > 2 && content[0] === ' ' && content[content.length - 1] === ' ') {
            content = content.slice(1, -1);
          }
          const code = el('code');
          code.textContent = content;
          parent.appendChild(code);
          i = close + run;
          continue;
        }
        buf += text.slice(i, i + run);
        i += run;
        continue;
      }

      if (c === '*' || c === '_') {
        let run = 1;
        while (text[i + run] === c) run++;
        const prev = text[i - 1];
        const next = text[i + run];
        const canOpen = !isSpace(next) && !(c === '_' && isWordChar(prev));
        if (canOpen) {
          const tries = run >= 3 ? [3, 2, 1] : run === 2 ? [2, 1] : [1];
          let done = false;
          for (const k of tries) {
            const delim = c.repeat(k);
            const start = i + run;
            const close = findClose(text, start + 1, delim);
            if (close === -1) continue;
            flush();
            // Delimiters of the opening run not used by this pair stay literal.
            if (run > k) parent.appendChild(document.createTextNode(c.repeat(run - k)));
            const inner = text.slice(start, close);
            let node;
            if (k === 3) {
              node = el('strong');
              const em = el('em');
              renderInline(inner, em);
              node.appendChild(em);
            } else {
              node = el(k === 2 ? 'strong' : 'em');
              renderInline(inner, node);
            }
            parent.appendChild(node);
            i = close + k;
            done = true;
            break;
          }
          if (done) continue;
        }
        buf += c.repeat(run);
        i += run;
        continue;
      }

      if (c === '~' && text[i + 1] === '~' && !isSpace(text[i + 2])) {
        const close = findClose(text, i + 3, '~~');
        if (close !== -1) {
          flush();
          const del = el('del');
          renderInline(text.slice(i + 2, close), del);
          parent.appendChild(del);
          i = close + 2;
          continue;
        }
      }

      if (c === '[' || (c === '!' && text[i + 1] === '[')) {
        const at = c === '!' ? i + 1 : i;
        const m = /^\[((?:[^\[\]\\]|\\.)*)\]\(\s*<?([^\s<>()]*)>?(?:\s+(?:"[^"]*"|'[^']*'))?\s*\)/
          .exec(text.slice(at));
        if (m) {
          flush();
          const span = el('span', 'md-link');
          renderInline(m[1], span);
          parent.appendChild(span);
          if (m[2] && m[2] !== m[1]) {
            const url = el('span', 'md-url');
            url.textContent = ' (' + m[2] + ')';
            parent.appendChild(url);
          }
          i = at + m[0].length;
          continue;
        }
      }

      buf += c;
      i++;
    }
    flush();
  }

  // Renders lines as inline text with <br> between them.
  function renderLines(lines, parent) {
    lines.forEach((line, k) => {
      if (k > 0) parent.appendChild(el('br'));
      renderInline(line.replace(/^\s+/, '').replace(/(?:\s{2,}|\\)$/, '').replace(/\s+$/, ''), parent);
    });
  }

  // ---- blocks -------------------------------------------------------------

  function splitRow(line) {
    let s = line.trim();
    if (s.startsWith('|')) s = s.slice(1);
    if (s.endsWith('|') && !s.endsWith('\\|')) s = s.slice(0, -1);
    const cells = [];
    let cur = '';
    let inCode = false;
    for (let k = 0; k < s.length; k++) {
      const ch = s[k];
      if (ch === '\\' && s[k + 1] === '|') {
        cur += '\\|';
        k++;
      } else if (ch === '`') {
        inCode = !inCode;
        cur += ch;
      } else if (ch === '|' && !inCode) {
        cells.push(cur.trim());
        cur = '';
      } else {
        cur += ch;
      }
    }
    cells.push(cur.trim());
    return cells;
  }

  function renderTable(lines, i, parent) {
    const head = splitRow(lines[i]);
    const aligns = splitRow(lines[i + 1]).map((c) => {
      const left = c.startsWith(':');
      const right = c.endsWith(':');
      if (left && right) return 'md-align-center';
      if (right) return 'md-align-right';
      return '';
    });
    const wrap = el('div', 'md-table-wrap');
    const table = el('table', 'md-table');
    const thead = el('thead');
    const hr = el('tr');
    head.forEach((cell, k) => {
      const th = el('th', aligns[k] || '');
      th.scope = 'col';
      renderInline(cell, th);
      hr.appendChild(th);
    });
    thead.appendChild(hr);
    table.appendChild(thead);
    const tbody = el('tbody');
    let j = i + 2;
    while (j < lines.length && !RE.blank.test(lines[j]) && lines[j].includes('|')) {
      const cells = splitRow(lines[j]);
      const tr = el('tr');
      for (let k = 0; k < head.length; k++) {
        const td = el('td', aligns[k] || '');
        renderInline(cells[k] || '', td);
        tr.appendChild(td);
      }
      tbody.appendChild(tr);
      j++;
    }
    table.appendChild(tbody);
    wrap.appendChild(table);
    parent.appendChild(wrap);
    return j;
  }

  function renderList(lines, i, parent) {
    const first = listItem(lines[i]);
    const list = el(first.ordered ? 'ol' : 'ul');
    if (first.ordered && first.start !== 1) list.start = first.start;
    const indent = first.indent;
    let j = i;
    while (j < lines.length) {
      const item = listItem(lines[j]);
      if (!item || item.indent !== indent || item.ordered !== first.ordered) break;
      const body = [item.text];
      j++;
      let sawBlank = false;
      while (j < lines.length) {
        const line = lines[j];
        if (RE.blank.test(line)) {
          let k = j;
          while (k < lines.length && RE.blank.test(lines[k])) k++;
          if (k < lines.length && indentOf(lines[k]) > indent && !RE.fence.test(lines[k])) {
            for (; j < k; j++) body.push('');
            sawBlank = true;
            continue;
          }
          break;
        }
        const ind = indentOf(line);
        if (ind > indent) {
          // Nested content: strip the item's content indentation.
          body.push(line.slice(Math.min(ind, item.contentIndent)));
          j++;
          continue;
        }
        if (sawBlank || startsBlock(lines, j)) break;
        body.push(line); // lazy continuation of the item's paragraph
        j++;
      }
      const li = el('li');
      renderBlocks(body, li);
      list.appendChild(li);
      // Skip blank lines between sibling items.
      let k = j;
      while (k < lines.length && RE.blank.test(lines[k])) k++;
      const nextItem = k < lines.length ? listItem(lines[k]) : null;
      if (nextItem && nextItem.indent === indent && nextItem.ordered === first.ordered) j = k;
      else break;
    }
    parent.appendChild(list);
    return j;
  }

  function renderBlocks(lines, parent) {
    let i = 0;
    while (i < lines.length) {
      const line = lines[i];
      if (RE.blank.test(line)) {
        i++;
        continue;
      }

      let m = RE.fence.exec(line);
      if (m) {
        const fence = m[1];
        const pre = el('pre', 'md-code');
        const code = el('code');
        const body = [];
        i++;
        while (i < lines.length) {
          const close = new RegExp('^ {0,3}' + fence[0] + '{' + fence.length + ',}\\s*$');
          if (close.test(lines[i])) {
            i++;
            break;
          }
          body.push(lines[i]);
          i++;
        }
        code.textContent = body.join('\n');
        pre.appendChild(code);
        parent.appendChild(pre);
        continue;
      }

      m = RE.heading.exec(line);
      if (m) {
        const level = m[1].length;
        const h = el('h' + Math.min(6, level + 2), 'md-h md-h' + level);
        renderInline(m[2] || '', h);
        parent.appendChild(h);
        i++;
        continue;
      }

      if (RE.hr.test(line)) {
        parent.appendChild(el('hr'));
        i++;
        continue;
      }

      if (isTableStart(lines, i)) {
        i = renderTable(lines, i, parent);
        continue;
      }

      if (RE.quote.test(line)) {
        const inner = [];
        while (i < lines.length && RE.quote.test(lines[i])) {
          inner.push(RE.quote.exec(lines[i])[1]);
          i++;
        }
        const bq = el('blockquote');
        renderBlocks(inner, bq);
        parent.appendChild(bq);
        continue;
      }

      if (listItem(line)) {
        i = renderList(lines, i, parent);
        continue;
      }

      const para = [line];
      i++;
      while (i < lines.length && !RE.blank.test(lines[i]) && !startsBlock(lines, i)) {
        para.push(lines[i]);
        i++;
      }
      const p = el('p');
      renderLines(para, p);
      parent.appendChild(p);
    }
  }

  // Returns a DocumentFragment holding the rendered Markdown `text`.
  function render(text) {
    const frag = document.createDocumentFragment();
    const lines = String(text).replace(/\r\n?/g, '\n').replace(/\t/g, '    ').split('\n');
    renderBlocks(lines, frag);
    return frag;
  }

  window.MedMarkdown = { render };
})();
