"""The live viewer (`clipad run --serve`) in a real headless Chromium: the page loads, the MJPEG
image updates, the score plot moves on its fixed [0, 1] axis; and a port already in use is one
clear line."""

from __future__ import annotations

import json
import os
import shutil
import socket
import threading
import time

import pytest

from clipad.core.errors import ClipadError
from clipad.runtime.backends import open_backend
from clipad.runtime.pipeline import Pipeline
from clipad.runtime.server import ServeSink
from clipad.runtime.sources import LiveSource
from tests.helpers import assert_one_line_error, closed_port, run, write_video

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


# The score plot's geometry (``clipad.runtime.score_plot``, the same in the viewer and the station's page)
PLOT_GEOMETRY = """() => {
  const q = s => document.querySelector('#plot ' + s), box = e => e.getBoundingClientRect();
  const line = q('line.threshold');
  return {info: window.plotInfo,
          tick0: +q('line.ytick[data-v="0"]').getAttribute('y1'),
          tick1: +q('line.ytick[data-v="1"]').getAttribute('y1'),
          ylabels: [...document.querySelectorAll('#plot text.ylabel')].map(e => e.textContent),
          axisLabels: [...document.querySelectorAll('#plot text.axis-label')].map(e => e.textContent),
          xlabels: [...document.querySelectorAll('#plot text.xlabel')].map(e => e.textContent),
          px0: box(q('line.ytick[data-v="0"]')).top, px1: box(q('line.ytick[data-v="1"]')).top,
          threshold: line && +line.getAttribute('y1'),
          thresholdLabel: line && q('text.threshold-label').textContent,
          pxThreshold: line && box(line).top + box(line).height / 2,
          pxLeft: line && box(line).left, pxRight: line && box(line).right,
          series: q('polyline.series') && q('polyline.series').getAttribute('points'),
          dots: [...document.querySelectorAll('#plot circle.pt')].map(e => [+e.getAttribute('data-v'),
                                                                          +e.getAttribute('cy')])};
}"""


def check_fixed_axis(geo: dict, threshold: bool) -> None:
    """The plot's y axis is [0, 1] whatever the values (ticks 0 to 1 labelled, every dot at its
    value's place on that axis, never rescaled to the values' own range), time ticks, labelled
    axes; the threshold line half way (in drawing units and on screen), or none."""
    y0, y1 = geo["info"]["y0"], geo["info"]["y1"]
    assert geo["tick0"] == y0 and geo["tick1"] == y1 and y0 > y1
    assert geo["ylabels"] == ["0", "0.25", "0.5", "0.75", "1"] and len(geo["xlabels"]) >= 2
    assert len(geo["axisLabels"]) == 2 and geo["axisLabels"][1] == "time (local)"
    assert geo["dots"] and all(abs(cy - (y0 - min(max(v, 0), 1) * (y0 - y1))) < 0.01 for v, cy in geo["dots"])
    if threshold:
        assert geo["threshold"] == geo["info"]["thresholdY"] == (y0 + y1) / 2
        assert geo["thresholdLabel"] == "threshold 0.5"
        assert abs(geo["pxThreshold"] - (geo["px0"] + geo["px1"]) / 2) < 1.0
    else:
        assert geo["threshold"] is None and geo["info"]["thresholdY"] is None


def test_viewer_page_stream_and_plot_in_chromium(art, tmp_path):  # noqa: F811
    if CHROMIUM is None:
        # .ci/run installs Debian's chromium and sets CLIPAD_REQUIRE_BROWSER, so CI fails here instead of skipping
        if os.environ.get("CLIPAD_REQUIRE_BROWSER"):
            pytest.fail("CLIPAD_REQUIRE_BROWSER is set but Debian's chromium is not installed")
        pytest.skip("Debian's chromium is not installed (.ci/run installs it: apt-get install chromium)")
    from playwright import sync_api as playwright

    write_video(tmp_path / "v.avi", 24)
    port = closed_port()
    sink = ServeSink(f"127.0.0.1:{port}", calibrated=False)
    source = LiveSource(str(tmp_path / "v.avi"), name="loop")  # loops: a live camera stand-in
    pipe = Pipeline(
        open_backend(art, "onnxruntime", "fp32", "cpu"),
        [source],
        art.manifest.image_size,
        None,
        [sink],
        status_every=1e9,
        log=lambda s: None,
        needs_view=True,
    )
    worker = threading.Thread(target=pipe.run, daemon=True)
    worker.start()
    try:
        with playwright.sync_playwright() as p:
            browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
            page = browser.new_page()
            page.goto(f"http://127.0.0.1:{port}/")
            assert page.title() == "clipad live"
            page.wait_for_function("window.plotPoints >= 2", timeout=30000)

            grab = """() => { const img = document.getElementById('live');
                const c = document.createElement('canvas'); c.width = img.naturalWidth; c.height = img.naturalHeight;
                const g = c.getContext('2d'); g.drawImage(img, 0, 0);
                const d = g.getImageData(0, 0, c.width, c.height).data; let h = 0;
                for (let i = 0; i < d.length; i += 97) h = (h * 31 + d[i]) >>> 0; return [c.width, h]; }"""
            page.wait_for_function("document.getElementById('live').naturalWidth > 0", timeout=30000)
            w1, h1 = page.evaluate(grab)
            frames1, points1 = page.evaluate("[window.lastFrame, window.plotPoints]")
            changed = False
            for _ in range(40):
                time.sleep(0.25)
                w2, h2 = page.evaluate(grab)
                if h2 != h1:
                    changed = True
                    break
            assert w1 == 160 and changed, "the MJPEG image did not update"
            plot1 = page.evaluate(PLOT_GEOMETRY)["series"]
            page.wait_for_function(f"window.lastFrame > {frames1}", timeout=30000)
            # the plot moves: new points are drawn (its line changes and it has more points,
            # unless the history already holds its maximum of 600)
            page.wait_for_function(f"({PLOT_GEOMETRY})().series !== {json.dumps(plot1)}", timeout=30000)
            points2 = page.evaluate("window.plotPoints")
            assert points2 > points1 or points2 == 600
            assert "uncalibrated" in page.inner_text("#score")
            # uncalibrated: the model's image_prob on the fixed [0, 1] axis, no threshold line
            geo = page.evaluate(PLOT_GEOMETRY)
            check_fixed_axis(geo, threshold=False)
            assert geo["axisLabels"][0] == "image_prob (uncalibrated)"
            status = page.evaluate("fetch('/status.json').then(r => r.json())")
            assert {round(v, 6) for v, _ in geo["dots"]} <= {round(h["image_prob"], 6) for h in status["history"]}
            page.screenshot(path=str(tmp_path / "viewer.png"))
            browser.close()
    finally:
        pipe.stop.set()
        worker.join(timeout=30)
    assert not worker.is_alive()


def test_port_in_use_is_one_line(art, tmp_path, capsys):  # noqa: F811
    blocker = socket.socket()
    blocker.bind(("127.0.0.1", 0))
    blocker.listen(1)
    port = blocker.getsockname()[1]
    try:
        with pytest.raises(ClipadError, match=f"cannot serve on 127.0.0.1:{port}"):
            ServeSink(f"127.0.0.1:{port}", calibrated=False)
        write_video(tmp_path / "v.avi", 2)
        code, _, err = run(
            capsys,
            "run",
            "--source",
            tmp_path / "v.avi",
            "--artifacts",
            art.root,
            "--serve",
            f"127.0.0.1:{port}",
            "--events",
            tmp_path / "ev.jsonl",
        )
        assert_one_line_error(code, err, f"cannot serve on 127.0.0.1:{port}")
    finally:
        blocker.close()
