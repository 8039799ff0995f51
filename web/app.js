// kvlm serve's page: a chat over /v1/chat/completions (streamed) and a live view of the KV cache
// (/v1/kv). Plain JavaScript, no library; every URL is relative, so the page also works behind a
// reverse proxy under a path prefix. Text from the model or from local storage never goes through
// an HTML parser: the Markdown renderer builds DOM nodes and puts all text in text nodes.
'use strict';
(function () {
  const LS = { convs: 'kvlm.conversations', current: 'kvlm.current', key: 'kvlm.apiKey', settings: 'kvlm.settings' };
  const $ = (id) => document.getElementById(id);
  const el = (tag, cls, text) => {
    const e = document.createElement(tag);
    if (cls) e.className = cls;
    if (text !== undefined) e.textContent = text;
    return e;
  };

  // ---------------------------------------------------------------- storage
  function load(k, def) {
    try {
      const v = localStorage.getItem(k);
      return v === null ? def : JSON.parse(v);
    } catch (e) {
      return def;
    }
  }
  function save(k, v) {
    try {
      localStorage.setItem(k, JSON.stringify(v));
    } catch (e) { /* full or disabled: the page still works, without memory */ }
  }
  // what local storage holds is only trusted to be JSON: keep the fields of the right types
  function cleanConv(c) {
    if (!c || typeof c !== 'object' || typeof c.id !== 'string') return null;
    const msgs = Array.isArray(c.messages) ? c.messages : [];
    return {
      id: c.id,
      title: typeof c.title === 'string' ? c.title : 'Conversation',
      system: typeof c.system === 'string' ? c.system : '',
      created: Number(c.created) || 0,
      messages: msgs.filter((m) => m && (m.role === 'user' || m.role === 'assistant') && typeof m.content === 'string')
        .map((m) => ({
          role: m.role, content: m.content,
          usage: m.usage && typeof m.usage === 'object' ? m.usage : undefined,
          finish: typeof m.finish === 'string' ? m.finish : undefined,
          error: typeof m.error === 'string' ? m.error : undefined,
          stopped: m.stopped === true || undefined,
          tps: typeof m.tps === 'number' ? m.tps : undefined,
          ttft: typeof m.ttft === 'number' ? m.ttft : undefined,
        })),
    };
  }
  let convs = (Array.isArray(load(LS.convs, [])) ? load(LS.convs, []) : []).map(cleanConv).filter(Boolean);
  let currentId = load(LS.current, null);
  const settings = Object.assign({ temperature: 0.8, top_p: 0.95, max_tokens: 256 }, load(LS.settings, {}));
  let apiKey = localStorage.getItem(LS.key) || '';
  let busy = null; // the running generation: {controller, conv, msg, bodyEl}

  function persist() {
    save(LS.convs, convs);
    save(LS.current, currentId);
  }
  function uid() {
    return Date.now().toString(36) + Math.random().toString(36).slice(2, 8);
  }
  function current() {
    return convs.find((c) => c.id === currentId) || null;
  }
  function newConv(system) {
    const c = { id: uid(), title: 'New conversation', system: system || '', messages: [], created: Date.now() };
    convs.unshift(c);
    currentId = c.id;
    persist();
    return c;
  }

  // ---------------------------------------------------------------- Markdown (a safe subset)
  // Inline: `code`, **bold**, *italic*, _italic_. Text becomes text nodes, never markup.
  const INLINE = /`([^`\n]+)`|\*\*([^*\n]+)\*\*|\*([^*\s][^*\n]*)\*|(?<!\w)_([^_\n]+)_(?!\w)/g;
  function inline(text, parent) {
    let last = 0;
    let m;
    const re = new RegExp(INLINE.source, 'g');
    while ((m = re.exec(text))) {
      if (m.index > last) parent.appendChild(document.createTextNode(text.slice(last, m.index)));
      let e;
      if (m[1] !== undefined) e = el('code', null, m[1]);
      else if (m[2] !== undefined) {
        e = el('strong');
        inline(m[2], e);
      } else e = el('em', null, m[3] !== undefined ? m[3] : m[4]);
      parent.appendChild(e);
      last = re.lastIndex;
    }
    if (last < text.length) parent.appendChild(document.createTextNode(text.slice(last)));
  }
  // Blocks: ``` fenced code, lists (- * + or 1.), paragraphs separated by blank lines.
  function renderMarkdown(src) {
    const frag = document.createDocumentFragment();
    const lines = src.replace(/\r\n?/g, '\n').split('\n');
    let para = [];
    const flush = () => {
      if (!para.length) return;
      const p = el('p');
      para.forEach((l, k) => {
        if (k) p.appendChild(el('br'));
        inline(l, p);
      });
      frag.appendChild(p);
      para = [];
    };
    const UL = /^\s*[-*+]\s+(.*)$/, OL = /^\s*\d+[.)]\s+(.*)$/;
    let i = 0;
    while (i < lines.length) {
      const line = lines[i];
      const fence = /^\s*```\s*([\w+-]*)\s*$/.exec(line);
      if (fence) {
        flush();
        const code = [];
        i++;
        while (i < lines.length && !/^\s*```\s*$/.test(lines[i])) code.push(lines[i++]);
        i++; // the closing fence (or the end: an answer still streaming)
        const pre = el('pre'), c = el('code', fence[1] ? 'lang-' + fence[1] : null, code.join('\n'));
        pre.appendChild(c);
        frag.appendChild(pre);
        continue;
      }
      const re = UL.test(line) ? UL : OL.test(line) ? OL : null;
      if (re) {
        flush();
        const list = el(re === UL ? 'ul' : 'ol');
        let m;
        while (i < lines.length && (m = re.exec(lines[i]))) {
          const li = el('li');
          inline(m[1], li);
          list.appendChild(li);
          i++;
        }
        frag.appendChild(list);
        continue;
      }
      if (/^\s*$/.test(line)) flush();
      else para.push(line);
      i++;
    }
    flush();
    return frag;
  }

  // ---------------------------------------------------------------- HTTP
  let keyPromise = null;
  function askKey() {
    if (keyPromise) return keyPromise;
    const dlg = $('key-dialog');
    keyPromise = new Promise((resolve) => {
      const done = (ok) => {
        dlg.close();
        $('key-form').onsubmit = null;
        $('key-cancel').onclick = null;
        keyPromise = null;
        resolve(ok);
      };
      $('key-input').value = apiKey;
      $('key-form').onsubmit = (ev) => {
        ev.preventDefault();
        apiKey = $('key-input').value.trim();
        if (apiKey) localStorage.setItem(LS.key, apiKey);
        else localStorage.removeItem(LS.key);
        done(!!apiKey);
      };
      $('key-cancel').onclick = () => done(false);
      if (!dlg.open) dlg.showModal();
      $('key-input').focus();
    });
    return keyPromise;
  }
  // fetch with the API key; a 401 asks for the key (up to 3 times) and tries again
  async function api(path, opts, interactive) {
    for (let attempt = 0; ; attempt++) {
      const headers = {};
      if (opts && opts.body) headers['Content-Type'] = 'application/json';
      if (apiKey) headers.Authorization = 'Bearer ' + apiKey;
      const resp = await fetch(path, Object.assign({ cache: 'no-store' }, opts || {}, { headers }));
      if (resp.status !== 401 || !interactive || attempt >= 3) return resp;
      if (!(await askKey())) return resp;
    }
  }
  async function errorText(resp) {
    try {
      const j = await resp.json();
      if (j && j.error && j.error.message) return resp.status + ': ' + j.error.message;
    } catch (e) { /* not JSON */ }
    return 'HTTP ' + resp.status;
  }

  // ---------------------------------------------------------------- rendering
  function metaText(m) {
    const parts = [];
    if (m.usage) {
      const u = m.usage;
      const cached = u.prompt_tokens_details ? u.prompt_tokens_details.cached_tokens : 0;
      parts.push('prompt ' + u.prompt_tokens + ' (' + cached + ' cached), completion ' + u.completion_tokens);
    }
    if (m.ttft) parts.push('first token ' + m.ttft.toFixed(0) + ' ms');
    if (m.tps) parts.push(m.tps.toFixed(1) + ' tokens/s');
    if (m.stopped) parts.push('stopped');
    else if (m.finish && m.finish !== 'stop') parts.push('finish: ' + m.finish);
    if (m.error) parts.push('error: ' + m.error);
    return parts.join(' · ');
  }
  function messageEl(m) {
    const d = el('div', 'msg ' + m.role + (m.error ? ' error' : ''));
    d.appendChild(el('div', 'role', m.role));
    const body = el('div', 'body');
    if (m.role === 'assistant') body.appendChild(renderMarkdown(m.content));
    else {
      body.textContent = m.content;
      body.classList.add('plain');
    }
    d.appendChild(body);
    d.appendChild(el('div', 'meta', metaText(m)));
    return d;
  }
  function renderList() {
    const ul = $('conversations');
    ul.replaceChildren();
    for (const c of convs) {
      const li = el('li', c.id === currentId ? 'current' : null);
      li.dataset.id = c.id;
      li.appendChild(el('span', 'title', c.title));
      const del = el('button', 'delete', '×');
      del.type = 'button';
      del.title = 'delete';
      del.onclick = (ev) => {
        ev.stopPropagation();
        if (busy && busy.conv === c) return;
        convs = convs.filter((x) => x !== c);
        if (currentId === c.id) currentId = convs.length ? convs[0].id : null;
        persist();
        renderAll();
      };
      li.appendChild(del);
      li.onclick = () => {
        if (busy) return;
        currentId = c.id;
        persist();
        renderAll();
      };
      ul.appendChild(li);
    }
  }
  function renderMessages() {
    const box = $('messages');
    box.replaceChildren();
    const c = current();
    if (!c) return;
    c.messages.forEach((m) => {
      const e = messageEl(m);
      box.appendChild(e);
      if (busy && busy.msg === m) busy.bodyEl = e.querySelector('.body');
    });
    box.scrollTop = box.scrollHeight;
  }
  function renderLastTurn() {
    const c = current();
    const last = c ? [...c.messages].reverse().find((m) => m.role === 'assistant' && m.usage) : null;
    const out = $('last-cached');
    if (!last) {
      out.textContent = '–';
      delete out.dataset.cached;
      return;
    }
    const u = last.usage, cached = u.prompt_tokens_details ? u.prompt_tokens_details.cached_tokens : 0;
    out.textContent = cached + ' of ' + u.prompt_tokens + ' prompt tokens from the cache';
    out.dataset.cached = String(cached);
    out.dataset.prompt = String(u.prompt_tokens);
  }
  function renderControls() {
    const c = current();
    const last = c && c.messages.length ? c.messages[c.messages.length - 1] : null;
    $('send').disabled = !!busy;
    $('stop').disabled = !busy;
    $('regenerate').disabled = !!busy || !last;
    $('system').value = c ? c.system : $('system').value;
  }
  function renderAll() {
    renderList();
    renderMessages();
    renderLastTurn();
    renderControls();
  }

  // ---------------------------------------------------------------- chat
  function settingsFromInputs() {
    const num = (id, lo, hi) => {
      const v = parseFloat($(id).value);
      return Number.isFinite(v) ? Math.min(hi, Math.max(lo, v)) : undefined;
    };
    settings.temperature = num('temperature', 0, 2);
    settings.top_p = num('top_p', 0, 1);
    settings.max_tokens = num('max_tokens', 1, 1 << 24);
    if (settings.max_tokens !== undefined) settings.max_tokens = Math.round(settings.max_tokens);
    save(LS.settings, settings);
  }
  function handleEvent(text, st) {
    const data = text.split('\n').filter((l) => l.startsWith('data:')).map((l) => l.slice(5).trimStart()).join('\n');
    if (!data || data === '[DONE]') return;
    let j;
    try {
      j = JSON.parse(data);
    } catch (e) {
      return;
    }
    const m = st.msg;
    if (j.error) {
      m.error = j.error.message || 'error';
      return;
    }
    if (j.usage) m.usage = j.usage;
    const ch = j.choices && j.choices[0];
    if (!ch) return;
    if (ch.delta && typeof ch.delta.content === 'string' && ch.delta.content) {
      if (!st.tFirst) {
        st.tFirst = performance.now();
        m.ttft = st.tFirst - st.t0;
      }
      st.nDeltas++;
      m.content += ch.delta.content;
      if (st.bodyEl) st.bodyEl.replaceChildren(renderMarkdown(m.content));
      const box = $('messages');
      box.scrollTop = box.scrollHeight;
    }
    if (ch.finish_reason) m.finish = ch.finish_reason;
  }
  async function generate(c) {
    settingsFromInputs();
    const history = c.messages.map((m) => ({ role: m.role, content: m.content }));
    const msg = { role: 'assistant', content: '' };
    c.messages.push(msg);
    const controller = new AbortController();
    const st = { controller, conv: c, msg, bodyEl: null, t0: performance.now(), tFirst: 0, nDeltas: 0 };
    busy = st;
    persist();
    renderAll();
    const body = {
      messages: (c.system ? [{ role: 'system', content: c.system }] : []).concat(history),
      stream: true,
      stream_options: { include_usage: true },
    };
    for (const k of ['temperature', 'top_p', 'max_tokens']) if (settings[k] !== undefined) body[k] = settings[k];
    try {
      const resp = await api('v1/chat/completions', { method: 'POST', body: JSON.stringify(body),
                                                        signal: controller.signal }, true);
      if (!resp.ok) throw new Error(await errorText(resp));
      const reader = resp.body.getReader();
      const dec = new TextDecoder();
      let buf = '';
      for (;;) {
        const { value, done } = await reader.read();
        if (done) break;
        buf += dec.decode(value, { stream: true }).replace(/\r\n/g, '\n');
        let k;
        while ((k = buf.indexOf('\n\n')) >= 0) {
          handleEvent(buf.slice(0, k), st);
          buf = buf.slice(k + 2);
        }
      }
      if (buf.trim()) handleEvent(buf, st);
      if (msg.usage && st.tFirst && msg.usage.completion_tokens > 1) {
        const s = (performance.now() - st.tFirst) / 1000;
        if (s > 0) msg.tps = (msg.usage.completion_tokens - 1) / s;
      }
    } catch (e) {
      if (e && e.name === 'AbortError') msg.stopped = true;
      else msg.error = String((e && e.message) || e);
    } finally {
      busy = null;
      persist();
      renderAll();
    }
  }
  function send() {
    const text = $('input').value;
    if (busy || !text.trim()) return;
    const c = current() || newConv($('system').value);
    c.system = $('system').value;
    c.messages.push({ role: 'user', content: text });
    if (c.title === 'New conversation') c.title = text.trim().slice(0, 48);
    $('input').value = '';
    generate(c);
  }
  function regenerate() {
    const c = current();
    if (busy || !c || !c.messages.length) return;
    if (c.messages[c.messages.length - 1].role === 'assistant') c.messages.pop();
    if (!c.messages.length) return;
    generate(c);
  }

  // ---------------------------------------------------------------- KV panel
  const history = []; // {rate: cumulative hit rate, step: hit rate of the lookups since the last poll}
  let prev = null;
  const fmtBytes = (n) => (n >= 1 << 20 ? (n / (1 << 20)).toFixed(1) + ' MiB' : n >= 1024 ? (n / 1024).toFixed(1) + ' KiB'
                                                                                          : n + ' B');
  function setStat(id, text, value) {
    const e = $(id);
    e.textContent = text;
    if (value !== undefined) e.dataset.value = String(value);
  }
  function updatePanel(k) {
    const step = prev && k.prefix_lookups > prev.prefix_lookups
      ? (k.prefix_hits - prev.prefix_hits) / (k.prefix_lookups - prev.prefix_lookups) : null;
    prev = k;
    history.push({ rate: k.prefix_hit_rate, step });
    if (history.length > 120) history.shift();
    setStat('kv-hit-rate', (100 * k.prefix_hit_rate).toFixed(1) + '%', k.prefix_hit_rate);
    setStat('kv-hits', k.prefix_hits + ' / ' + k.prefix_lookups, k.prefix_hits);
    setStat('kv-tokens', k.tokens + ' / ' + k.capacity, k.tokens);
    const by = k.bytes_by_type || {};
    const types = Object.keys(by).filter((t) => by[t] > 0).map((t) => t + ' ' + fmtBytes(by[t]));
    setStat('kv-bytes', fmtBytes(k.bytes) + (types.length ? ' (' + types.join(', ') + ')' : ''), k.bytes);
    setStat('kv-pages', k.pages_shared + ' / ' + k.pages_cached, k.pages_shared);
    setStat('kv-evictions', String(k.evictions), k.evictions);
    setStat('kv-compressions', String(k.compressions), k.compressions);
    setStat('kv-growth', String(k.growth_events), k.growth_events);
    setStat('kv-requests', k.requests_running + ' / ' + k.requests_waiting, k.requests_running);
    setStat('kv-tps', k.tokens_per_second.toFixed(1), k.tokens_per_second);
    setStat('kv-cancelled', String(k.cancelled), k.cancelled);
    setStat('kv-ttft', k.ttft_requests ? (1000 * k.ttft_mean_s).toFixed(1) + ' ms' : '–', k.ttft_mean_s);
    drawChart();
  }
  function drawChart() {
    const cv = $('hit-chart');
    const dpr = window.devicePixelRatio || 1;
    const w = cv.clientWidth || cv.width, h = cv.clientHeight || cv.height;
    if (cv.width !== Math.round(w * dpr)) cv.width = Math.round(w * dpr);
    if (cv.height !== Math.round(h * dpr)) cv.height = Math.round(h * dpr);
    const g = cv.getContext('2d');
    g.setTransform(dpr, 0, 0, dpr, 0, 0);
    g.clearRect(0, 0, w, h);
    const style = getComputedStyle(document.body);
    const fg = style.color, accent = style.getPropertyValue('--accent').trim() || '#2457c5';
    g.strokeStyle = style.getPropertyValue('--line').trim() || '#ccc';
    g.lineWidth = 1;
    for (const f of [0.25, 0.5, 0.75]) {
      g.beginPath();
      g.moveTo(0, h - f * h + 0.5);
      g.lineTo(w, h - f * h + 0.5);
      g.stroke();
    }
    const n = Math.max(30, history.length), dx = w / (n - 1), x0 = w - (history.length - 1) * dx;
    g.fillStyle = accent;
    g.globalAlpha = 0.3;
    history.forEach((p, i) => {
      if (p.step !== null) g.fillRect(x0 + i * dx - dx / 2, h - p.step * h, Math.max(1, dx - 1), p.step * h);
    });
    g.globalAlpha = 1;
    g.strokeStyle = accent;
    g.lineWidth = 2;
    g.beginPath();
    history.forEach((p, i) => {
      const x = x0 + i * dx, y = h - p.rate * (h - 2) - 1;
      if (i) g.lineTo(x, y);
      else g.moveTo(x, y);
    });
    g.stroke();
    g.fillStyle = fg;
    g.font = '11px system-ui, sans-serif';
    g.fillText('prefix hit rate', 4, 12);
  }
  let pollAsked = false;
  async function poll() {
    try {
      const r = await api('v1/kv', {}, false);
      if (r.ok) {
        updatePanel(await r.json());
        $('status').textContent = 'ready';
        const rep = r.headers.get('X-Kvlm-Replica'); // behind a balancer: whose cache the panel shows
        $('replica').textContent = rep ? 'replica ' + rep : '';
      } else if (r.status === 401) {
        if (!pollAsked) {
          pollAsked = true;
          askKey();
        }
      } else if (r.status === 503) $('status').textContent = 'loading…';
    } catch (e) {
      $('status').textContent = 'offline';
    }
    setTimeout(poll, 1000);
  }
  async function loadModel() {
    try {
      const r = await api('v1/models', {}, false);
      if (r.ok) {
        const j = await r.json();
        if (j.data && j.data[0]) {
          $('model').textContent = String(j.data[0].id);
          return;
        }
      }
    } catch (e) { /* offline: tried again below */ }
    setTimeout(loadModel, 2000);
  }

  // ---------------------------------------------------------------- wiring
  function init() {
    for (const k of ['temperature', 'top_p', 'max_tokens']) {
      if (settings[k] !== undefined) $(k).value = settings[k];
      $(k).addEventListener('change', settingsFromInputs);
    }
    if (!current()) currentId = convs.length ? convs[0].id : null;
    $('composer').addEventListener('submit', (ev) => {
      ev.preventDefault();
      send();
    });
    $('input').addEventListener('keydown', (ev) => {
      if (ev.key === 'Enter' && !ev.shiftKey && !ev.isComposing) {
        ev.preventDefault();
        send();
      }
    });
    $('stop').addEventListener('click', () => busy && busy.controller.abort());
    $('regenerate').addEventListener('click', regenerate);
    $('new-chat').addEventListener('click', () => {
      if (busy) return;
      newConv($('system').value);
      renderAll();
      $('input').focus();
    });
    $('system').addEventListener('input', () => {
      const c = current();
      if (c) {
        c.system = $('system').value;
        persist();
      }
    });
    $('key-button').addEventListener('click', () => askKey());
    renderAll();
    loadModel();
    poll();
  }
  init();
})();
