// The lab's plotter: small hand-written SVG charts (lines, a heatmap, horizontal bars). No library:
// each chart is a few dozen lines a reader can follow. Every chart keeps the data it drew on its
// element (el.plotData), so a test can read back exactly what is shown.
const Plot = (() => {
  const NS = 'http://www.w3.org/2000/svg';
  const COLORS = ['#2563eb', '#dc2626', '#16a34a', '#d97706', '#7c3aed', '#0891b2', '#db2777', '#4b5563'];
  function svg(w, h) { const s = document.createElementNS(NS, 'svg'); s.setAttribute('viewBox', `0 0 ${w} ${h}`);
    s.setAttribute('width', w); s.setAttribute('height', h); return s; }
  function add(parent, tag, attrs, text) { const e = document.createElementNS(NS, tag);
    for (const k in attrs) e.setAttribute(k, attrs[k]); if (text !== undefined) e.textContent = text;
    parent.appendChild(e); return e; }
  function fmt(v) { const a = Math.abs(v); if (a === 0) return '0';
    if (a >= 1e4 || a < 1e-3) return v.toExponential(1); return +v.toPrecision(3) + ''; }
  // about n round ticks between lo and hi
  function ticks(lo, hi, n) { const span = hi - lo || 1, raw = span / n, mag = Math.pow(10, Math.floor(Math.log10(raw)));
    const step = [1, 2, 5, 10].map(m => m * mag).find(s => span / s <= n) || mag * 10; const out = [];
    for (let v = Math.ceil(lo / step) * step; v <= hi + step * 1e-9; v += step) out.push(+v.toPrecision(12)); return out; }

  // lines(el, [{name, points: [[x, y], ...], color?, dash?}], {title, xlabel, logy})
  function lines(el, series, opts = {}) {
    const W = 520, H = 260, L = 56, R = 10, T = 22, B = 34;
    el.replaceChildren(); el.plotData = series;
    const s = svg(W, H); el.appendChild(s);
    add(s, 'text', {x: L, y: 14, 'font-weight': 600}, opts.title || '');
    const tf = v => opts.logy ? Math.log10(v) : v;
    const pts = series.flatMap(ser => ser.points.filter(p => p[1] !== null && isFinite(p[1]) && (!opts.logy || p[1] > 0)));
    if (!pts.length) { add(s, 'text', {x: W / 2, y: H / 2, 'text-anchor': 'middle'}, opts.empty || 'no data yet'); return; }
    let [x0, x1] = [Math.min(...pts.map(p => p[0])), Math.max(...pts.map(p => p[0]))];
    let [y0, y1] = [Math.min(...pts.map(p => tf(p[1]))), Math.max(...pts.map(p => tf(p[1])))];
    if (x0 === x1) { x0 -= 1; x1 += 1; } if (y0 === y1) { y0 -= Math.abs(y0) * 0.1 || 1; y1 += Math.abs(y1) * 0.1 || 1; }
    const pad = (y1 - y0) * 0.05; y0 -= pad; y1 += pad;
    const X = x => L + (x - x0) / (x1 - x0) * (W - L - R), Y = y => H - B - (tf(y) - y0) / (y1 - y0) * (H - T - B);
    for (const v of ticks(y0, y1, 5)) { const y = H - B - (v - y0) / (y1 - y0) * (H - T - B);
      add(s, 'line', {class: 'grid', x1: L, x2: W - R, y1: y, y2: y});
      add(s, 'text', {x: L - 4, y: y + 4, 'text-anchor': 'end'}, fmt(opts.logy ? Math.pow(10, v) : v)); }
    for (const v of ticks(x0, x1, 6)) { const x = X(v);
      add(s, 'line', {class: 'axis', x1: x, x2: x, y1: H - B, y2: H - B + 4});
      add(s, 'text', {x, y: H - B + 15, 'text-anchor': 'middle'}, fmt(v)); }
    add(s, 'line', {class: 'axis', x1: L, x2: W - R, y1: H - B, y2: H - B});
    add(s, 'line', {class: 'axis', x1: L, x2: L, y1: T, y2: H - B});
    add(s, 'text', {x: (L + W - R) / 2, y: H - 4, 'text-anchor': 'middle'}, opts.xlabel || 'step');
    series.forEach((ser, i) => {
      const good = ser.points.filter(p => p[1] !== null && isFinite(p[1]) && (!opts.logy || p[1] > 0));
      const color = ser.color || COLORS[i % COLORS.length];
      const line = add(s, 'polyline', {fill: 'none', stroke: color, 'stroke-width': ser.width || 1.6,
        points: good.map(p => `${X(p[0]).toFixed(1)},${Y(p[1]).toFixed(1)}`).join(' '), 'data-name': ser.name,
        'data-points': good.length});
      if (ser.dash) line.setAttribute('stroke-dasharray', ser.dash);
      if (good.length <= 40) for (const p of good) add(s, 'circle', {cx: X(p[0]), cy: Y(p[1]), r: 2.2, fill: color});
    });
  }

  // a colour for a weight in [0, 1]: white -> blue (light) on a fixed scale, so heads compare
  function heat(v) { const t = Math.max(0, Math.min(1, v)); const c = a => Math.round(a).toString();
    return `rgb(${c(255 - 218 * t)},${c(255 - 156 * t)},${c(255 - 20 * t)})`; }

  // heatmap(el, T x T weights (null above the diagonal), labels): rows attend to columns
  function heatmap(el, weights, labels, onCell) {
    const n = weights.length, cell = Math.max(8, Math.min(28, Math.floor(420 / n))), L = 90, T = 90;
    el.replaceChildren(); el.plotData = weights;
    const s = svg(L + n * cell + 4, T + n * cell + 4); el.appendChild(s);
    labels.forEach((lab, i) => {
      add(s, 'text', {x: L - 4, y: T + i * cell + cell * 0.7, 'text-anchor': 'end'}, lab);
      add(s, 'text', {x: 0, y: 0, transform: `translate(${L + i * cell + cell * 0.7},${T - 4}) rotate(-60)`}, lab);
    });
    weights.forEach((row, q) => row.forEach((w, k) => {
      if (k > q) return;  // the future: a causal model never looks there
      const r = add(s, 'rect', {x: L + k * cell, y: T + q * cell, width: cell - 1, height: cell - 1, fill: heat(w),
        'data-q': q, 'data-k': k, 'data-value': w});
      add(r, 'title', {}, `${labels[q]} → ${labels[k]}: ${w.toFixed(3)}`);
      if (onCell) r.addEventListener('click', () => onCell(q, k));
    }));
  }

  // bars(el, [{label, value, mark?}], {max, onClick}): horizontal bars, value in [0, max]
  function bars(el, items, opts = {}) {
    const W = 420, rowH = 20, L = 120, H = items.length * rowH + 6, max = opts.max || Math.max(...items.map(i => i.value), 1e-9);
    el.replaceChildren(); el.plotData = items;
    const s = svg(W, H); el.appendChild(s);
    items.forEach((it, i) => {
      const y = 3 + i * rowH, w = (W - L - 60) * it.value / max;
      add(s, 'text', {x: L - 6, y: y + 14, 'text-anchor': 'end'}, it.label);
      const r = add(s, 'rect', {class: 'bar', x: L, y: y + 3, width: Math.max(1, w), height: rowH - 6,
        fill: it.mark ? '#dc2626' : COLORS[0], 'data-index': i, 'data-value': it.value});
      add(s, 'text', {x: L + w + 4, y: y + 14}, fmt(it.value));
      if (opts.onClick) r.addEventListener('click', () => opts.onClick(it, i));
    });
  }
  return {lines, heatmap, bars, COLORS, fmt};
})();
