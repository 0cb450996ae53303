"""GenICam cameras through Aravis, against Aravis' real GigE Vision camera emulator
(``arv-fake-gv-camera-0.8 -i 127.0.0.1``, Debian's aravis-tools) started by each test: free-run
frames, software-trigger accounting (every trigger one frame, frame ids strictly increasing, never
a frame from before the trigger), the camera killed and restarted mid-run with the source
reconnecting, a refused setting as one line, a camera held by another process, station jobs
capturing from the camera, and the spec's settings (query string and YAML file).

Skipped (saying why) without Aravis or the emulator; CI sets CLIPAD_REQUIRE_ARAVIS=1 so that they
fail instead."""

from __future__ import annotations

import errno
import json
import os
import shutil
import socket
import subprocess
import sys
import time

import pytest

from clipad.core.errors import ClipadError
from clipad.runtime.cameras.spec import CameraSettings, parse_camera_spec
from clipad.runtime.source_specs import open_source
from clipad.runtime.sources import Frame

FAKE = "arv-fake-gv-camera-0.8"
ADDRESS = "127.0.0.1"  # the emulator serves only on an interface's own address
GVCP_PORT = 3956
SMALL = "roi=0,0,128,96"  # small frames keep the tests light on a shared CPU
FAST = (0.1, 0.5)  # reconnect backoff for the tests


def _aravis_missing() -> str | None:
    if shutil.which(FAKE) is None:
        return f"{FAKE} not installed (Debian package aravis-tools)"
    try:
        import gi

        gi.require_version("Aravis", "0.8")
        from gi.repository import Aravis  # noqa: F401
    except (ImportError, ValueError) as err:
        return f"Aravis through PyGObject not available ({err}): gir1.2-aravis-0.8 and the genicam extra"
    return None


MISSING = _aravis_missing()
if MISSING and os.environ.get("CLIPAD_REQUIRE_ARAVIS"):
    raise RuntimeError(f"CLIPAD_REQUIRE_ARAVIS is set but {MISSING}")
needs_aravis = pytest.mark.skipif(MISSING is not None, reason=MISSING or "")


def _port_taken() -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        try:
            s.bind((ADDRESS, GVCP_PORT))
        except OSError as err:
            return err.errno == errno.EADDRINUSE
    return False


class FakeCamera:
    """The emulator as a child process, killed (SIGKILL: a pulled cable) and restarted at will."""

    def __init__(self) -> None:
        self.proc: subprocess.Popen | None = None

    def start(self) -> None:
        assert not _port_taken(), f"something else serves GigE Vision on {ADDRESS}:{GVCP_PORT}"
        self.proc = subprocess.Popen([FAKE, "-i", ADDRESS], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        end = time.monotonic() + 10
        while not _port_taken():
            assert self.proc.poll() is None, f"{FAKE} exited with {self.proc.returncode}"
            assert time.monotonic() < end, f"{FAKE} did not start serving"
            time.sleep(0.02)

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)
        self.proc = None


@pytest.fixture(scope="module")
def recipes(art, tmp_path_factory):
    """Two calibrated copies of the tiny export (tests.test_station_core.make_recipes)."""
    from tests.test_station_core import make_recipes

    return make_recipes(art, tmp_path_factory.mktemp("recipes"))


@pytest.fixture
def book(recipes):
    """The recipe "a" opened for the station tests (ONNX Runtime, CPU)."""
    from clipad.runtime.station.recipes import RecipeBook
    from tests.test_station_core import CPU

    opened = RecipeBook.load([f"a={recipes / 'a'}"], options=CPU)
    yield opened
    opened.close()


@pytest.fixture
def camera():
    fake = FakeCamera()
    fake.start()
    yield fake
    fake.kill()


def wait_for(cond, timeout: float) -> None:
    end = time.monotonic() + timeout
    while not cond():
        assert time.monotonic() < end, "timed out"
        time.sleep(0.02)


def strictly_increasing(ids: list[int]) -> bool:
    """Camera frame ids, which GigE Vision 1.x wraps at 16 bits (0 is never used), unwrapped."""
    unwrapped, offset = [], 0
    for a, b in zip(ids, ids[1:], strict=False):
        if b < a and a - b > 0x8000:
            offset += 0xFFFF
        unwrapped.append(b + offset)
    return all(x > y for x, y in zip(unwrapped, [ids[0], *unwrapped], strict=False))


def open_camera(query: str, **kw):
    from clipad.runtime.cameras.genicam import GenICamSource

    return GenICamSource(f"gige://{ADDRESS}?{query}", **kw)


def test_spec_settings_from_the_query_string_and_a_yaml_file(tmp_path):
    cam_yaml = tmp_path / "cam.yaml"
    cam_yaml.write_text("exposure_us: 2500\ngain: 3\nroi: [0, 0, 64, 48]\ntrigger: software\n")
    spec = parse_camera_spec(f"gige://Basler-123?settings={cam_yaml}&gain=6&packet_delay=1000")
    assert spec.protocol == "gige" and spec.device == "Basler-123"
    assert spec.settings == CameraSettings(
        trigger="software", exposure_us=2500.0, gain=6.0, roi=(0, 0, 64, 48), packet_delay=1000
    )  # the query string wins over the file
    assert parse_camera_spec("U3V://Allied-X").protocol == "u3v"
    with pytest.raises(ClipadError, match=r"unknown camera setting exposure \(known: trigger"):
        parse_camera_spec("gige://cam?exposure=10")
    with pytest.raises(ClipadError, match=r"roi='1,2,3' is not valid \(expected x,y,width,height"):
        parse_camera_spec("gige://cam?roi=1,2,3")
    with pytest.raises(ClipadError, match="cannot read camera settings"):
        parse_camera_spec(f"gige://cam?settings={tmp_path / 'none.yaml'}")


def test_a_camera_source_without_aravis_is_one_line():
    """In a process where PyGObject cannot be imported (a CPU-only install without the extra):
    clipad imports, and opening a gige:// source says what to install."""
    code = (
        "import sys; sys.modules['gi'] = None\n"
        "from clipad.core.errors import ClipadError\n"
        "from clipad.runtime.source_specs import open_source\n"
        "try:\n    open_source('gige://127.0.0.1')\nexcept ClipadError as e:\n    print('ERR', e)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True)
    line = out.stdout.strip()
    assert line.startswith("ERR PyGObject is not installed. GenICam cameras need Aravis") and "\n" not in line
    assert "clipad[genicam]" in line and "gir1.2-aravis-0.8" in line


@needs_aravis
def test_doctor_lists_the_camera(camera):
    from clipad.runtime.doctor.facts import Findings, GenICamFacts
    from clipad.runtime.doctor.report import _machine_lines, _probe

    facts = _probe("genicam", False, 60)
    assert isinstance(facts, GenICamFacts) and facts.aravis_error is None, facts
    rows = [v for k, v in _machine_lines(Findings(genicam=facts)) if k == "Cameras"]
    assert f"Aravis Fake, serial GV01, at {ADDRESS}: gige://Aravis-Fake-GV01" in rows


@needs_aravis
def test_free_run_delivers_frames_and_reads_its_settings_back(camera):
    src = open_camera(f"{SMALL}&frame_rate=50&exposure_us=2000", backoff=FAST)
    try:
        frames = []
        end = time.monotonic() + 1.5
        while time.monotonic() < end:
            if (f := src.read(1.0)) is not None:
                frames.append(f)
        assert len(frames) >= 20  # 50 fps asked for; loose for a shared CPU
        assert all(f.image.shape == (96, 128, 3) and f.image.dtype.name == "uint8" for f in frames)
        assert [f.index for f in frames] == sorted({f.index for f in frames})
        assert strictly_increasing([f.frame_id for f in frames])  # type: ignore[misc]
        assert src.readback.endswith(
            "Mono8, 128x96+0+0, exposure 2000 us, gain 0 dB, 50 fps, trigger Off/Line0, packet 1400 B, delay 0 ns"
        )
        assert src.readback in src.stats.events and not src.refused and src.incomplete == 0
    finally:
        src.close()


@needs_aravis
def test_software_trigger_every_trigger_one_frame_never_an_older_one(camera):
    src = open_camera(f"{SMALL}&trigger=software", backoff=FAST)
    try:
        time.sleep(0.3)
        assert not src.has_frame and src.triggers == 0  # nothing comes without a trigger
        got: list[tuple[float, Frame]] = []
        for _ in range(40):
            after = time.monotonic()
            frame = src.capture(after, 3.0)
            assert frame is not None
            got.append((after, frame))
        assert all(f.grab_began is not None and f.grab_began >= after for after, f in got)
        ids = [f.frame_id for _, f in got]
        assert strictly_increasing(ids) and len(set(ids)) == 40  # type: ignore[arg-type]
        assert src.triggers == 40 and src.stale == 0 and src.incomplete == 0 and src.stats.dropped == 0
    finally:
        src.close()


@needs_aravis
def test_a_refused_setting_is_one_line_and_the_camera_still_works(camera):
    no_such_format = "pixel_format=Mono12Packed"  # the emulator has no 12-bit format
    src = open_camera(f"{SMALL}&{no_such_format}&trigger=software", backoff=FAST)
    try:
        assert src.refused == [
            f"gige://{ADDRESS}: camera refused pixel_format=Mono12Packed ([PixelFormat] 'Mono12Packed' not an entry)"
        ]
        assert src.refused[0] in src.stats.events and "Mono8" in src.readback
        assert src.capture(time.monotonic(), 3.0) is not None
    finally:
        src.close()


@needs_aravis
def test_a_camera_held_by_another_process_is_one_line(camera):
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import gi, sys, time; gi.require_version('Aravis', '0.8'); from gi.repository import Aravis\n"
            f"cam = Aravis.Camera.new('{ADDRESS}'); print('held', flush=True); time.sleep(30)",
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "held"
        with pytest.raises(ClipadError) as err:
            open_source(f"gige://{ADDRESS}?{SMALL}")
        assert str(err.value) == (
            f"camera gige://{ADDRESS} is held by another process (it has the camera's control channel); close it first"
        )
    finally:
        holder.kill()
        holder.wait(10)


@needs_aravis
def test_the_camera_killed_and_restarted_mid_run_is_reconnected(camera):
    """Software trigger: captures fail while the camera is gone (never an old frame), the source
    reports the lost stream, reopens it when the camera is back, and its captures work again."""
    src = open_camera(f"{SMALL}&trigger=software", backoff=FAST, lost_after_s=0.5)
    try:
        for _ in range(5):
            assert src.capture(time.monotonic(), 3.0) is not None
        camera.kill()
        after = time.monotonic()
        assert src.capture(after, 1.0) is None
        wait_for(lambda: src.stats.lost >= 1, 15)
        camera.start()
        wait_for(lambda: src.stats.reconnects >= 1, 20)
        frames = []
        for _ in range(5):
            after = time.monotonic()
            frame = src.capture(after, 3.0)
            assert frame is not None and frame.grab_began is not None and frame.grab_began >= after
            frames.append(frame)
        assert strictly_increasing([f.frame_id for f in frames])  # type: ignore[misc]
        assert any("reconnected" in e for e in src.stats.events)
        assert any("camera not answering" in e or "software trigger failed" in e for e in src.stats.events), list(
            src.stats.events
        )
    finally:
        src.close()


@needs_aravis
def test_free_run_reconnects_after_the_camera_comes_back(camera):
    src = open_camera(f"{SMALL}&frame_rate=30", backoff=FAST, lost_after_s=0.5)
    try:
        assert src.read(3.0) is not None
        camera.kill()
        wait_for(lambda: src.stats.lost >= 1, 15)
        assert any("no frame for" in e for e in src.stats.events)
        camera.start()
        wait_for(lambda: src.stats.reconnects >= 1, 20)
        src.read(0.1)  # a frame from before the reconnect, if one is waiting
        assert src.read(3.0) is not None
    finally:
        src.close()


@needs_aravis
def test_station_jobs_capture_from_the_camera(camera, book):
    """Every trigger without an image is one job that fires the camera once and is inspected on
    the frame that trigger produced."""
    from clipad.runtime.cameras.genicam import GenICamSource
    from clipad.runtime.station.records import Trigger, Verdict
    from clipad.runtime.station.station import Station, StationConfig
    from tests.test_station_core import Recorder

    class Recording(GenICamSource):
        """The real source, noting each trigger's time and the frame its capture returned."""

        def __init__(self, *a, **kw):
            self.captured: list[tuple[float, Frame | None]] = []
            super().__init__(*a, **kw)

        def capture(self, after: float, timeout: float) -> Frame | None:
            frame = super().capture(after, timeout)
            self.captured.append((after, frame))
            return frame

    src = Recording(f"gige://{ADDRESS}?{SMALL}&trigger=software", backoff=FAST)
    rec = Recorder()
    station = Station(book, [rec], StationConfig(deadline_ms=5000), source=src)
    try:
        ids = [station.submit(Trigger("replay", part_id=f"p{i}")) for i in range(12)]
        wait_for(lambda: len(rec.got) == 12, 60)
        assert sorted(rec.ids()) == sorted(ids)
        assert all(r.verdict in (Verdict.OK, Verdict.NG) for _, r in rec.got), [r.why for _, r in rec.got]
        frames = [f for _, f in src.captured]
        assert len(frames) == 12 and all(f is not None for f in frames)
        assert all(f.grab_began >= after for after, f in src.captured if f is not None and f.grab_began is not None)
        assert strictly_increasing([f.frame_id for f in frames if f is not None])  # type: ignore[misc]
        assert src.triggers == 12 and src.stale == 0
        # each result names the frame its job inspected (jobs are inspected in order, one capture each)
        assert [r.frame_id for _, r in sorted(rec.got, key=lambda g: int(g[1].part_id[1:]))] == [
            f.frame_id for f in frames if f is not None
        ]
    finally:
        station.close()
        src.close()


@needs_aravis
def test_every_frame_of_a_camera_is_one_job(camera, book):
    """The hardware-trigger path minus the line (the emulator has no line input): a free-running
    camera's frames fed to the station, each one job via "camera" whose result names its frame; a
    frame the station could not take in time is still one job, answered error. The station skips
    decoding: the frame is RGB already."""
    from clipad.runtime.station.feeder import CameraFeeder
    from clipad.runtime.station.records import Verdict
    from clipad.runtime.station.station import Station, StationConfig
    from tests.test_station_core import Recorder

    # A refused part-id chunk (the emulator sends no chunk data) is one line; part ids are numbered.
    src = open_camera(f"{SMALL}&frame_rate=40&part_id_chunk=FrameID", backoff=FAST)
    rec = Recorder()
    station = Station(book, [rec], StationConfig(queue=2), source=src)
    try:
        assert src.refused == [
            f"gige://{ADDRESS}: camera refused part_id_chunk=FrameID (the camera sends no chunk data)"
        ]
        feeder = CameraFeeder(station, src)
        wait_for(lambda: len(rec.got) >= 30, 60)
        feeder.close()
        wait_for(lambda: len(rec.got) == feeder.jobs, 30)
    finally:
        station.close()
        src.close()
    results = [r for _, r in rec.got]
    assert len({r.job_id for r in results}) == len(results) == feeder.jobs
    assert all(r.via == "camera" for r in results)
    by_part = sorted(results, key=lambda r: int(r.part_id))
    assert [r.part_id for r in by_part] == [str(i) for i in range(1, len(results) + 1)]
    inspected = [r for r in by_part if r.verdict in (Verdict.OK, Verdict.NG)]
    errors = [r for r in by_part if r.verdict is Verdict.ERROR]
    assert len(inspected) + len(errors) == len(results) and len(inspected) >= 20
    assert all(r.why and r.why.startswith(("frame dropped by", "incomplete frame from", "busy")) for r in errors)
    assert strictly_increasing([r.frame_id for r in inspected])  # type: ignore[misc]
    assert all(r.latency_ms >= r.inference_ms > 0 for r in inspected)  # type: ignore[operator]


@needs_aravis
def test_clipad_station_with_a_line_triggered_camera_feeds_its_frames(recipes):
    """`clipad station --source gige://...?trigger=hardware` needs no other trigger source: it
    sets the camera to wait for its line, starts the feeder and stops cleanly. No frame comes:
    the emulator's line is never pulsed (what it does with a real pulse is not verified)."""
    from tests.test_station_line import StationProcess

    root = recipes
    fake = FakeCamera()
    fake.start()
    spec = f"gige://{ADDRESS}?{SMALL}&trigger=hardware&trigger_activation=RisingEdge"
    station = StationProcess(["--recipe", f"a={root / 'a'}", "--source", spec])
    try:
        station.wait_for(f"every frame gige://{ADDRESS} sends is a job (via camera)")
        readback = station.wait_for("settings read back")
        assert "trigger On/Line0" in readback
        time.sleep(1.0)
        assert station.stop() == 0
        assert any(line.startswith("summary: 0 jobs") for line in station.lines), station.lines
    finally:
        if station.proc.poll() is None:
            station.proc.kill()
        fake.kill()


@needs_aravis
def test_clipad_run_on_the_camera(camera, art, tmp_path, capsys):  # noqa: F811 - art is conftest's fixture
    """`clipad run --source gige://...` end to end with the tiny model: each read fires the
    camera's software trigger; every frame is inferred and recorded under the camera's name."""
    from tests.helpers import run

    events = tmp_path / "ev.jsonl"
    spec = f"gige://{ADDRESS}?{SMALL}&trigger=software"
    code, _, err = run(
        capsys, "run", "--source", spec, "--artifacts", art.root, "--max-frames", "6", "--events", events
    )
    assert code == 0, err
    records = [json.loads(line) for line in events.read_text().splitlines()]
    assert len(records) == 6 and {r["source"] for r in records} == {f"gige://{ADDRESS}"}
    assert [r["frame"] for r in records] == list(range(6))
    assert "summary: 6 frames" in err and "settings read back: Mono8, 128x96+0+0" in err
