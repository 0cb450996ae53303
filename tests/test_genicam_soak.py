"""scripts/genicam_soak.py's short version (CI): the station against Aravis' camera emulator with a
camera restart. Skipped (saying why) without Aravis or the emulator; fails instead with
CLIPAD_REQUIRE_ARAVIS=1 (tests.test_genicam raises on import then)."""

from __future__ import annotations

import subprocess
import sys

from tests.test_genicam import ADDRESS, GVCP_PORT, _port_taken, needs_aravis


@needs_aravis
def test_soak_script_short(art, tmp_path):
    """scripts/genicam_soak.py, short: 200 software triggers through the station with one camera
    kill and restart, then 2 s of free-run at the emulator's maximum rate; the script's own checks
    (one result per trigger, frame ids, zero stale frames, errors only in the outage, every frame
    accounted for) must all pass."""
    from tests.test_station_core import make_recipes

    assert not _port_taken(), f"something else serves GigE Vision on {ADDRESS}:{GVCP_PORT}"
    root = make_recipes(art, tmp_path)
    cmd = [sys.executable, "scripts/genicam_soak.py", "--artifacts", str(root / "a"), "--triggers", "120"]
    cmd += ["--restarts", "1", "--roi", "0,0,128,96", "--free-run-s", "2"]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=240)
    assert out.returncode == 0, out.stdout + out.stderr[-2000:]
    assert "software trigger: 120 triggers" in out.stdout and "all checks passed" in out.stdout
    results = next(line for line in out.stdout.splitlines() if line.strip().startswith("results "))
    assert "results 120: inspected" in results and "stale frames inspected 0" in results
    assert "reconnects 1" in results and "(all in outages: True)" in results
