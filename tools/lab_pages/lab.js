// The lab's shared helpers (put inline into every page by tools/lab.py): the navigation bar, the
// JSON calls to /lab/api, error display, token chips and the checkpoint picker. Text from the
// model or the user only ever reaches the page through textContent, never innerHTML.
const VIEWS = [['tokens', 'Tokens'], ['training', 'Training'], ['forward', 'Forward pass'],
               ['generation', 'Generation'], ['checkpoints', 'Checkpoints']];
window.labState = {};  // the last data each view drew (a test reads it back)

function el(tag, attrs = {}, ...children) {
  const e = document.createElement(tag);
  for (const k in attrs) { if (k === 'text') e.textContent = attrs[k]; else if (k === 'class') e.className = attrs[k];
                           else e.setAttribute(k, attrs[k]); }
  for (const c of children) e.append(c);
  return e;
}

function nav(here) {
  const links = VIEWS.map(([page, title]) => el('a', {href: '/lab/' + page, class: page === here ? 'here' : '', text: title}));
  document.body.prepend(el('header', {}, el('h1', {}, el('a', {href: '/lab', text: 'nanochat lab'})), el('nav', {}, ...links)));
}

async function api(path, body) {
  const opts = body === undefined ? {} : {method: 'POST', headers: {'Content-Type': 'application/json'}, body: JSON.stringify(body)};
  const r = await fetch('/lab/api/' + path, opts);
  const data = await r.json().catch(() => ({error: {message: `HTTP ${r.status}`}}));
  if (!r.ok) { const e = new Error(data.error ? data.error.message : `HTTP ${r.status}`); e.param = data.error && data.error.param; throw e; }
  return data;
}

function showError(box, e) { box.replaceChildren(el('span', {class: 'error', text: e ? (e.message || String(e)) : ''})); }

// a token as a chip: whitespace made visible, id/bytes/type on hover
function chip(t, i, extra = '') {
  const cls = `tok c${i % 6}` + (t.type === 'special' ? ' special' : '') + (extra ? ' ' + extra : '');
  return el('span', {class: cls, title: `#${t.index !== undefined ? t.index : i}  id ${t.id}  ${t.bytes !== undefined ? t.bytes + ' bytes  ' : ''}${t.type || ''}`,
                     'data-id': t.id, text: t.shown !== undefined ? t.shown : t.text});
}

// fills a <select> with the checkpoints under the base dir (newest step of the first run chosen)
async function checkpointPicker(select, status) {
  const data = await api('checkpoints');
  select.replaceChildren(...data.checkpoints.map(c => el('option', {value: c.name, text: `${c.name}${c.val_bpb ? '  (val bpb ' + c.val_bpb.toFixed(3) + ')' : ''}`})));
  if (!data.checkpoints.length && status) status.textContent = `no checkpoints under ${data.base_dir} yet: train one with python -m scripts.base_train`;
  if (data.checkpoints.length) select.value = data.checkpoints[data.checkpoints.length - 1].name;
  return data.checkpoints;
}

function debounce(fn, ms) { let t; return (...a) => { clearTimeout(t); t = setTimeout(() => fn(...a), ms); }; }

// Answers can come back out of order (a slow first request, a fast second one). Wrapped in
// newestOnly, an API call resolves to null when a newer call was made meanwhile, so an old answer
// never overwrites what a newer one showed; its errors are dropped the same way.
function newestOnly(call) {
  let latest = 0;
  return async (...args) => {
    const mine = ++latest;
    try {
      const data = await call(...args);
      return mine === latest ? data : null;
    } catch (e) {
      if (mine !== latest) return null;
      throw e;
    }
  };
}
