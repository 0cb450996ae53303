"""The operator's page of the station's HTTP server: the HTML (plain HTML, JavaScript and SVG; the
plot is ``clipad.runtime.score_plot``) and the typed state it polls at ``/api/state``.

The page shows the station's state, run id, active recipe and recipe list; per camera the latest
overlay (``/live/<camera index>.jpg``); the counters table per recipe (since start, rolling last
hour); the last NG parts (thumbnails ``/ng/<key>/thumb.jpg``; a click opens the full-size overlay
``/ng/<key>/full.jpg`` with its part id, job id, score and time); and the score over time on the
fixed [0, 1] axis with the threshold line. Text from triggers (part ids, recipe names) is only
ever set as text, never as HTML. For tests it keeps its last state in ``window.pageState``, the
polls answered in ``window.stateUpdates`` and the plot's geometry in ``window.plotInfo``.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any

from clipad.runtime.station.records import StationState
from clipad.runtime.station.views import StationViews, ViewsState

if TYPE_CHECKING:
    from clipad.runtime.station.station import Station


@dataclass(frozen=True)
class StationStatus:
    """The station as the page's header shows it."""

    run: str
    state: StationState
    active_recipe: str
    recipes: tuple[str, ...]
    queue_depth: int
    problems: tuple[str, ...]


@dataclass(frozen=True)
class PageState:
    """What ``/api/state`` answers."""

    station: StationStatus
    views: ViewsState

    def to_json(self) -> dict[str, Any]:
        return {"station": asdict(self.station), "views": self.views.to_json()}


def page_state(station: Station, views: StationViews) -> PageState:
    status = StationStatus(station.run, station.state, station.active_recipe, tuple(station.recipes),
                           station.queue_depth, tuple(station.problems()))  # fmt: skip
    return PageState(status, views.state())


PAGE = """<!doctype html>
<html><head><meta charset="utf-8"><title>clipad station</title>
<style>
body{font-family:sans-serif;margin:16px;background:#111;color:#eee}
h2,h3{margin:8px 0}.muted{color:#999}
.badge{padding:2px 10px;border-radius:10px;font-weight:bold;color:#111;background:#888}
.badge.ready{background:#3c3}.badge.busy{background:#fc3}.badge.error{background:#f44}.badge.halted{background:#888}
.recipe{margin-right:8px;padding:1px 6px;border:1px solid #555;border-radius:4px}
.recipe.active{border-color:#4cf;color:#4cf}
#wrap{display:flex;gap:16px;flex-wrap:wrap;align-items:flex-start}
figure{margin:0}
img.live{width:420px;max-width:100%;height:auto;border:1px solid #444;background:#000;min-height:100px}
#plot{width:560px;height:240px;background:#1b1b1b;border:1px solid #444}
table{border-collapse:collapse}td,th{border:1px solid #444;padding:3px 8px;text-align:right}
th{background:#222}td.name{text-align:left}
.c-ng{color:#f66}.c-ok{color:#6d6}
#gallery{display:flex;gap:10px;flex-wrap:wrap}
#gallery figure{cursor:pointer;border:1px solid #633;padding:4px;background:#1b1b1b}
#gallery img{width:200px;height:auto;display:block}
figcaption{font-size:12px;margin-top:3px}
dialog{background:#111;color:#eee;border:1px solid #666;max-width:95vw}
dialog img{min-width:480px;max-width:90vw;max-height:80vh;object-fit:contain}
</style></head>
<body>
<h2>clipad station <span class="muted" id="run"></span></h2>
<div>state <span class="badge" id="state">?</span>
 &nbsp; active recipe <b id="active">?</b> &nbsp; recipes <span id="recipes"></span>
 <span class="muted" id="problems"></span></div>
<div id="wrap">
 <section><h3>Live overlay</h3><div id="cameras"></div></section>
 <section><h3>Score over time</h3><svg id="plot" width="560" height="240"></svg>
  <div class="muted">normalised score of each inspected part (0.5 at the calibrated threshold; green OK, red NG)</div>
 </section>
</div>
<h3>Counters</h3>
<table id="counters"><thead>
<tr><th rowspan="2">recipe</th><th colspan="4">since start</th><th colspan="4">last hour (rolling, by minute)</th></tr>
<tr><th>OK</th><th>NG</th><th>error</th><th>timeout</th><th>OK</th><th>NG</th><th>error</th><th>timeout</th></tr>
</thead><tbody></tbody></table>
<h3>Last NG parts</h3><div id="gallery"><span class="muted">none yet</span></div>
<dialog id="snap"><img id="snap-img" alt="NG part overlay"><p id="snap-info"></p>
<form method="dialog"><button>close</button></form></dialog>
<script src="/score_plot.js"></script>
<script>
'use strict';
window.stateUpdates = 0; window.pageState = null; window.plotInfo = null;
const $ = id => document.getElementById(id);
const clock = t => new Date(t * 1000).toLocaleTimeString([], {hour12: false});
const score = v => v === null ? '-' : v.toFixed(3);
function make(tag, attrs, text) {
  const e = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) e.setAttribute(k, v);
  if (text !== undefined) e.textContent = text;
  return e;
}
function header(st) {
  $('run').textContent = st.run;
  $('state').textContent = st.state; $('state').className = 'badge ' + st.state;
  $('active').textContent = st.active_recipe || '(none)';
  $('recipes').replaceChildren(...st.recipes.map(r => make('span', {class: 'recipe' + (r === st.active_recipe ?
    ' active' : '')}, r)));
  $('problems').textContent = st.problems.join('; ');
}
function cameras(v) {
  const box = $('cameras');
  if (box.children.length !== v.cameras.length) {
    box.replaceChildren(...v.cameras.map((name, i) => {
      const f = make('figure', {class: 'camera', 'data-camera': i});
      f.append(make('img', {class: 'live', alt: 'live overlay of ' + name}),
               make('figcaption', {}, name + ': waiting'));
      return f;
    }));
  }
  v.cameras.forEach((name, i) => {
    const f = box.children[i], job = v.live[i];
    if (!job) return;
    const img = f.querySelector('img');
    if (img.dataset.key !== String(job.key)) { img.dataset.key = job.key; img.src = `/live/${i}.jpg?key=${job.key}`; }
    f.querySelector('figcaption').textContent =
      `${name}: part ${job.part_id}, ${job.verdict} ${score(job.score)}, ${job.recipe}, ${clock(job.time)}`;
  });
}
function counters(v) {
  const row = (rc, cls) => {
    const tr = make('tr', {class: cls});
    tr.append(make('td', {class: 'name'}, rc.recipe));
    for (const [period, counts] of [['since', rc.since_start], ['hour', rc.last_hour]])
      for (const k of ['ok', 'ng', 'error', 'timeout'])
        tr.append(make('td', {class: 'c-' + k, 'data-cell': `${rc.recipe}/${period}/${k}`}, counts[k]));
    return tr;
  };
  $('counters').tBodies[0].replaceChildren(...v.counters.map(rc => row(rc, '')), row(v.total, 'total'));
}
function gallery(v) {
  const box = $('gallery'), keys = v.gallery.map(g => g.key).join(',');
  if (box.dataset.keys === keys) return;
  box.dataset.keys = keys;
  if (!v.gallery.length) { box.replaceChildren(make('span', {class: 'muted'}, 'none yet')); return; }
  box.replaceChildren(...v.gallery.map(g => {
    const f = make('figure', {class: 'ng', 'data-key': g.key, 'data-part': g.part_id});
    f.append(make('img', {src: `/ng/${g.key}/thumb.jpg`, alt: 'NG part ' + g.part_id}),
             make('figcaption', {}, `part ${g.part_id} · ${score(g.score)} · ${clock(g.time)}`));
    f.addEventListener('click', () => {
      $('snap-img').src = `/ng/${g.key}/full.jpg`;
      $('snap-info').textContent =
        `part ${g.part_id}, job ${g.job_id}, recipe ${g.recipe}, NG, score ${score(g.score)}, ${clock(g.time)}`;
      $('snap').showModal();
    });
    return f;
  }));
}
async function poll() {
  try {
    const s = await (await fetch('/api/state', {cache: 'no-store'})).json();
    header(s.station); cameras(s.views); counters(s.views); gallery(s.views);
    const pts = s.views.history.map(p => ({t: p.time, v: p.score,
      ok: p.verdict === 'OK' ? true : p.verdict === 'NG' ? false : null}));
    window.plotInfo = clipadPlot($('plot'), pts, {threshold: s.views.threshold, yLabel: 'score (normalised)'});
    window.pageState = s; window.stateUpdates += 1;
  } catch (e) { window.lastError = String(e); }
  setTimeout(poll, 1000);
}
poll();
</script></body></html>
"""
