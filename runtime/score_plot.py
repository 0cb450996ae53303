"""The one score-over-time plot of the browser pages (the live viewer of `clipad run --serve` and
the station's operator page), as a small JavaScript file both servers send at ``/score_plot.js``.

``clipadPlot(svg, points, opts)`` draws into an ``<svg>`` element (drawing units: a viewBox of
560 x 240, scaled to the element's size):

- the y axis is fixed at [0, 1] (ticks every 0.25, labelled, with ``opts.yLabel``), whatever the
  values: a constant score of 1.000 is drawn along the top, readable against its ticks, never
  rescaled to the plot's own min and max; values outside [0, 1] are drawn clamped to the edge;
- ``opts.threshold`` (a number, or null for none): a dashed horizontal line labelled
  ``threshold 0.5`` in the right margin (the calibrated normalised score is 0.5 at the threshold);
- the x axis is wall-clock time (``t``: Unix seconds) from the first point to the last (at least
  ``opts.minSpan`` seconds from the first, default 10), with ticks at round steps (1 s ... 6 h) labelled in the
  browser's local time, and the label ``time (local)``;
- ``points``: ``[{t, v, ok}]``; a point whose ``t`` or ``v`` is null is skipped; ``ok`` colours
  the dot (true green, false red, null grey).

Elements carry classes for tests and styling: ``axis``, ``ytick`` (with ``data-v``), ``xtick``,
``threshold``, ``series`` (the polyline), ``pt`` (the dots, with ``data-v``). It returns
``{points, y0, y1, thresholdY}``: the number drawn, the drawing y of 0 and of 1, and of the
threshold (null without one).
"""

from __future__ import annotations

SCORE_PLOT_JS = """\
'use strict';
function clipadPlot(svg, points, opts) {
  const NS = 'http://www.w3.org/2000/svg';
  const W = 560, H = 240, L = 52, R = 84, T = 12, B = 40;  // R: room for the threshold's label
  const x0 = L, x1 = W - R, y0 = H - B, y1 = T;  // y0: value 0 (bottom), y1: value 1 (top)
  opts = opts || {};
  svg.setAttribute('viewBox', `0 0 ${W} ${H}`);
  while (svg.firstChild) svg.removeChild(svg.firstChild);
  const el = (name, attrs, text) => {
    const e = document.createElementNS(NS, name);
    for (const [k, v] of Object.entries(attrs)) e.setAttribute(k, v);
    if (text !== undefined) e.textContent = text;
    svg.appendChild(e);
    return e;
  };
  const yOf = v => y0 - Math.min(Math.max(v, 0), 1) * (y0 - y1);
  for (const v of [0, 0.25, 0.5, 0.75, 1]) {
    el('line', {class: 'ytick', 'data-v': v, x1: x0 - 4, x2: x1, y1: yOf(v), y2: yOf(v),
                stroke: v === 0 ? '#999' : '#333'});
    el('text', {class: 'ylabel', 'data-v': v, x: x0 - 7, y: yOf(v) + 4, 'text-anchor': 'end',
                fill: '#bbb', 'font-size': 11}, String(v));
  }
  el('line', {class: 'axis', x1: x0, x2: x0, y1: y1, y2: y0, stroke: '#999'});
  el('text', {class: 'axis-label', x: 12, y: (y0 + y1) / 2, fill: '#ccc', 'font-size': 11, 'text-anchor': 'middle',
              transform: `rotate(-90 12 ${(y0 + y1) / 2})`}, opts.yLabel || 'score');
  el('text', {class: 'axis-label', x: (x0 + x1) / 2, y: H - 4, fill: '#ccc', 'font-size': 11,
              'text-anchor': 'middle'}, 'time (local)');
  const shown = points.filter(p => Number.isFinite(p.v) && Number.isFinite(p.t));
  const minSpan = opts.minSpan || 10;
  const tmin = shown.length ? Math.min(...shown.map(p => p.t)) : Date.now() / 1000 - minSpan;
  const tmax = Math.max(shown.length ? Math.max(...shown.map(p => p.t)) : 0, tmin + minSpan);
  const xOf = t => x0 + (t - tmin) / (tmax - tmin) * (x1 - x0);
  const steps = [1, 2, 5, 10, 15, 30, 60, 120, 300, 600, 900, 1800, 3600, 7200, 10800, 21600];
  const step = steps.find(s => (tmax - tmin) / s <= 6) || 21600;
  const two = n => String(n).padStart(2, '0');
  for (let t = Math.ceil(tmin / step) * step; t <= tmax; t += step) {
    const d = new Date(t * 1000), x = xOf(t);
    const label = two(d.getHours()) + ':' + two(d.getMinutes()) + (step < 60 ? ':' + two(d.getSeconds()) : '');
    el('line', {class: 'xtick', x1: x, x2: x, y1: y0, y2: y0 + 4, stroke: '#999'});
    const anchor = x > x1 - 24 ? 'end' : x < x0 + 24 ? 'start' : 'middle';  // the edge labels stay inside
    el('text', {class: 'xlabel', x: x, y: y0 + 16, fill: '#bbb', 'font-size': 11, 'text-anchor': anchor}, label);
  }
  let thresholdY = null;
  if (opts.threshold !== null && opts.threshold !== undefined) {
    thresholdY = yOf(opts.threshold);
    el('line', {class: 'threshold', x1: x0, x2: x1, y1: thresholdY, y2: thresholdY, stroke: '#f90',
                'stroke-dasharray': '6 4', 'stroke-width': 1.5});
    el('text', {class: 'threshold-label', x: x1 + 4, y: thresholdY + 4, fill: '#f90', 'font-size': 11},
       `threshold ${opts.threshold}`);
  }
  if (shown.length) {
    el('polyline', {class: 'series', fill: 'none', stroke: '#4cf', 'stroke-width': 1.2,
                    points: shown.map(p => `${xOf(p.t).toFixed(2)},${yOf(p.v).toFixed(2)}`).join(' ')});
    if (shown.length <= 1000) {
      for (const p of shown) {
        el('circle', {class: 'pt', 'data-v': p.v, cx: xOf(p.t), cy: yOf(p.v), r: 2.5,
                      fill: p.ok === true ? '#3c3' : p.ok === false ? '#f44' : '#aaa'});
      }
    }
  }
  return {points: shown.length, y0: y0, y1: y1, thresholdY: thresholdY};
}
"""
