"""A GenICam camera (GigE Vision, USB3 Vision) as a live source, through Aravis.

The grabber thread, the newest-frame policy and the reconnects with backoff are LiveSource's; this
class supplies its hooks (open, grab, release) and the software trigger:

- free-run (``trigger=off``): the newest frame, as any live source; no frame for ``lost_after_s``
  is a lost stream.
- software trigger: ``capture(after, timeout)`` asks the grabber thread to fire the camera's
  software trigger and returns the frame that trigger produced (its ``grab_began`` is the firing
  time, so LiveSource.capture never hands over an older one). Frames waiting in the stream before
  the trigger is fired are discarded (``stale``); a trigger whose frame does not come within the
  capture's timeout makes the thread stop and restart acquisition, so that frame cannot answer a
  later trigger. ``read`` (``clipad run``) keeps one trigger in flight: it fires the next one as
  it hands a frame over, so the camera exposes while the pipeline infers.
- hardware trigger: the camera waits for ``trigger_line``; every frame it sends is delivered as in
  free-run (implemented against the Aravis API; not verified: the fake camera has no line input).
  The station turns each such frame into a job (``clipad.runtime.station.feeder``); with
  ``part_id_chunk`` the frame's part id is read from the chunk data the camera appends (not
  verified either: the emulator has no chunks).

Frames whose buffer is not complete (lost packets) are counted in ``incomplete`` (and
stats.bad_frames) and never used; with a software trigger the trigger is fired again while the
capture's time lasts. A camera that vanishes, stops answering or comes back with its defaults
(restarted) is a lost stream, reopened with backoff; the settings are applied again on each open.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from dataclasses import dataclass
from typing import Any

from clipad.core.errors import ClipadError
from clipad.data.pixels import UnsupportedPixelFormat, decode, pixel_format
from clipad.runtime.cameras.aravis import aravis_error, load_aravis
from clipad.runtime.cameras.spec import CameraSettings, CameraSpec, parse_camera_spec
from clipad.runtime.sources import Frame, Grab, LiveSource, StreamLost

N_BUFFERS = 8  # frame buffers queued on the stream
POP_S = 0.2  # the grabber thread waits at most this long at a time, so a stop is seen promptly
RESYNC_SETTLE_S = 0.1  # after stopping acquisition, frames still on the wire arrive within this
READ_TRIGGER_S = 2.0  # a software trigger fired by ``read`` waits at least this long for its frame


@dataclass(frozen=True)
class StreamCounts:
    """Aravis' own counts for the open stream (since it was opened): buffers it completed, failed
    (incomplete), missing frames (a gap in the camera's frame ids: nothing of them arrived),
    underruns (a frame came with no buffer free), and buffers completed but not yet taken."""

    completed: int
    failures: int
    missing: int
    underruns: int
    waiting: int


@dataclass
class _Open:
    """What one open camera holds: the Aravis camera and its stream."""

    camera: Any
    stream: Any
    gige: bool


class GenICamSource(LiveSource):
    """``gige://<device id or IP>`` or ``u3v://<device id>`` with settings (``runtime.cameras.spec``).

    Counters beside ``stats``: ``incomplete`` (buffers with lost packets), ``stale`` (frames that
    came with no trigger of ours pending, discarded), ``triggers`` (software triggers fired).
    ``readback``: the settings as the camera reports them after the last open (also an event);
    ``refused``: one line per setting the camera refused."""

    def __init__(
        self,
        spec: CameraSpec | str,
        backoff: tuple[float, float] = (0.5, 8.0),
        lost_after_s: float = 2.0,
    ):
        self.camera_spec = parse_camera_spec(spec) if isinstance(spec, str) else spec
        self.settings: CameraSettings = self.camera_spec.settings
        self._aravis = load_aravis()
        self.lost_after_s = lost_after_s
        self.incomplete = 0
        self.stale = 0
        self.triggers = 0
        self.readback = ""
        self.refused: list[str] = []
        self._open_error = ""
        self._requests: deque[float] = deque()  # deadlines (time.monotonic()) of triggers asked for
        self._req_cond = threading.Condition()
        self._serving = False  # the grabber thread is serving a trigger (fired, its frame not yet delivered)
        self._last_frame_at = self._last_check = time.monotonic()
        self._frame_period = 0.0
        self._chunks: Any = None  # Aravis' chunk parser, when part ids come from chunk data
        self._chunk_misses = 0
        super().__init__(self.camera_spec.name, name=self.camera_spec.name, backoff=backoff)

    # --- LiveSource's hooks -------------------------------------------------------------------

    def _unopened(self) -> str:
        return self._open_error or f"cannot open camera {self.name}"

    def _open(self) -> _Open | None:
        """Open the camera, apply the settings, start acquisition; None (and ``_open_error``) if
        it cannot be used now."""
        why = self._open_error
        try:
            handle = self._open_camera()
        except ClipadError as err:
            self._open_error = str(err)
            handle = None
        except Exception as err:  # noqa: BLE001 - any Aravis failure while opening is "not now"
            self._open_error = f"camera {self.name}: {aravis_error(err)}"
            handle = None
        if handle is None and self._open_error != why and hasattr(self, "_thread"):
            self.stats.events.append(self._open_error)  # while reconnecting: each new reason once
        return handle

    def _grab(self) -> Grab | None:
        if self.settings.trigger == "software":
            return self._grab_triggered(self.cap)
        handle: _Open = self.cap
        began = time.monotonic()
        buf = handle.stream.timeout_pop_buffer(int(POP_S * 1e6))
        if buf is None:
            silent = time.monotonic() - self._last_frame_at
            if self.settings.trigger == "off" and silent > max(self.lost_after_s, 3 * self._frame_period):
                raise StreamLost(f"no frame for {silent:.1f} s")
            if self.settings.trigger == "hardware":
                self._check_alive(handle)  # a line trigger may be silent for hours: ask the camera instead
            return None
        # Only the newest frame matters: older ones already waiting are dropped, as LiveSource drops.
        while (newer := handle.stream.try_pop_buffer()) is not None:
            handle.stream.push_buffer(buf)
            self.stats.dropped += 1
            buf = newer
        self._last_frame_at = time.monotonic()
        return self._take(handle, buf, began)

    def _release(self) -> None:
        handle: _Open = self.cap
        try:
            handle.camera.stop_acquisition()
        except Exception:  # noqa: BLE001 - a vanished camera cannot be told to stop
            pass
        handle.stream = handle.camera = None  # dropping the last references closes the stream and the control channel

    # --- software trigger -----------------------------------------------------------------------

    def capture(self, after: float, timeout: float) -> Frame | None:
        if self.settings.trigger == "software":
            self._ask(time.monotonic() + timeout)
        return super().capture(after, timeout)

    def read(self, timeout: float = 1.0) -> Frame | None:
        if self.settings.trigger != "software":
            return super().read(timeout)
        self._ask_if_idle()
        frame = super().read(timeout)
        if frame is not None:
            self._ask_if_idle()  # the next read's frame is on its way while this one is inferred
        return frame

    def _ask_if_idle(self) -> None:
        """For ``read``: fire a trigger unless a frame waits or a trigger is asked for or in
        flight. The pipeline polls with timeout 0, so the frame gets READ_TRIGGER_S."""
        with self._req_cond:
            idle = not (self.has_frame or self._requests or self._serving)
        if idle:
            self._ask(time.monotonic() + READ_TRIGGER_S)

    def interrupt(self) -> None:
        super().interrupt()
        with self._req_cond:
            self._req_cond.notify_all()

    def close(self) -> None:
        self.interrupt()
        super().close()

    def stream_counts(self) -> StreamCounts | None:
        """Aravis' counts for the stream now open (None while the camera is not open); exact only
        once acquisition has stopped (``stop_acquisition``)."""
        handle: _Open | None = self.cap
        if handle is None or handle.stream is None:
            return None
        count = handle.stream.get_info_uint64_by_name
        return StreamCounts(
            count("n_completed_buffers"),
            count("n_failures"),
            count("n_missing_frames"),
            count("n_underruns"),
            handle.stream.get_n_buffers()[1],
        )

    def stop_acquisition(self) -> None:
        """Stop the grabber thread and the camera's acquisition, keeping the stream open so that
        ``stream_counts`` is final; ``close`` still follows."""
        self.interrupt()
        self._thread.join(POP_S * 10)
        handle: _Open | None = self.cap
        if handle is not None and handle.camera is not None:
            handle.camera.stop_acquisition()
            time.sleep(RESYNC_SETTLE_S)

    def _ask(self, deadline: float) -> None:
        with self._req_cond:
            self._requests.append(deadline)
            self._req_cond.notify_all()

    def _next_request(self) -> float | None:
        """The deadline of the oldest trigger asked for and not yet past, waiting up to POP_S."""
        with self._req_cond:
            self._req_cond.wait_for(lambda: self._requests or self._stop.is_set(), POP_S)
            now = time.monotonic()
            while self._requests:
                deadline = self._requests.popleft()
                if deadline > now:
                    self._serving = True
                    return deadline
            return None

    def _grab_triggered(self, handle: _Open) -> Grab | None:
        try:
            return self._serve_trigger(handle)
        finally:
            self._serving = False

    def _serve_trigger(self, handle: _Open) -> Grab | None:
        deadline = self._next_request()
        if deadline is None:
            self._check_alive(handle)
            return None
        self._discard_waiting(handle)
        began = self._fire(handle)
        while not self._stop.is_set() and (left := deadline - time.monotonic()) > 0:
            buf = handle.stream.timeout_pop_buffer(int(min(left, POP_S) * 1e6))
            if buf is None:
                continue
            grab = self._take(handle, buf, began)
            if grab is not None:
                self._last_check = time.monotonic()
                return grab
            began = self._fire(handle)  # an incomplete frame: the part is still there, expose it again
        if self._stop.is_set():
            return None
        # This trigger's frame did not come in time. Its camera may be gone; if not, restart the
        # acquisition so that the frame, should it still arrive, cannot answer the next trigger.
        self._check_alive(handle, force=True)
        handle.camera.stop_acquisition()
        time.sleep(RESYNC_SETTLE_S)
        self._discard_waiting(handle)
        handle.camera.start_acquisition()
        self.stats.events.append(f"{self.name}: no frame for a software trigger in time; acquisition restarted")
        return None

    def _fire(self, handle: _Open) -> float:
        """Fire the software trigger; the time.monotonic() just before it."""
        began = time.monotonic()
        try:
            handle.camera.software_trigger()
        except Exception as err:  # noqa: BLE001 - a trigger the camera cannot take means it is gone
            raise StreamLost(f"software trigger failed ({aravis_error(err)})") from None
        self.triggers += 1
        return began

    def _discard_waiting(self, handle: _Open) -> None:
        """Frames already in the stream came with no trigger of ours pending: never an answer."""
        while (buf := handle.stream.try_pop_buffer()) is not None:
            handle.stream.push_buffer(buf)
            self.stale += 1

    # --- shared steps ---------------------------------------------------------------------------

    def _take(self, handle: _Open, buf: Any, began: float) -> Grab | None:
        """A popped buffer -> Grab (RGB uint8), or None for an incomplete one; the buffer goes back
        to the stream either way."""
        try:
            if buf.get_status() != self._aravis.BufferStatus.SUCCESS:
                self.incomplete += 1
                self.stats.bad_frames += 1
                if self.incomplete in (1, 10) or self.incomplete % 100 == 0:
                    self.stats.events.append(
                        f"{self.name}: {self.incomplete} incomplete frame(s) so far "
                        f"({buf.get_status().value_nick}: lost packets; never used)"
                    )
                return None
            image = decode(buf.get_data(), buf.get_image_width(), buf.get_image_height(), buf.get_image_pixel_format())
            return Grab(image, began, int(buf.get_frame_id()), self._chunk_part_id(buf))
        finally:
            handle.stream.push_buffer(buf)

    def _chunk_part_id(self, buf: Any) -> str | None:
        """The part id in ``buf``'s chunk data (``part_id_chunk``), or None (then the station's
        feeder numbers the part); a frame without it is counted, and said at the 1st, 10th, 100th."""
        if self._chunks is None:
            return None
        try:
            if buf.has_chunks():
                return str(self._chunks.get_integer_value(buf, f"Chunk{self.settings.part_id_chunk}"))
            why = "the frame has no chunk data"
        except Exception as err:  # noqa: BLE001 - GLib.Error from the chunk parser
            why = aravis_error(err)
        self._chunk_misses += 1
        if self._chunk_misses in (1, 10) or self._chunk_misses % 100 == 0:
            self.stats.events.append(
                f"{self.name}: {self._chunk_misses} frame(s) without a part id in chunk "
                f"{self.settings.part_id_chunk} ({why}); numbered instead"
            )
        return None

    def _check_alive(self, handle: _Open, force: bool = False) -> None:
        """At most every ``lost_after_s`` (or now with ``force``): ask the camera for its trigger
        mode. No answer: gone. A mode other than ours: it restarted with its defaults. Either is a
        lost stream."""
        now = time.monotonic()
        if not force and now - self._last_check < self.lost_after_s:
            return
        self._last_check = now
        try:
            mode = handle.camera.get_string("TriggerMode")
        except Exception as err:  # noqa: BLE001 - any failure to answer is a lost camera
            raise StreamLost(f"camera not answering ({aravis_error(err)})") from None
        if mode != ("Off" if self.settings.trigger == "off" else "On"):
            raise StreamLost(f"camera restarted (TriggerMode is {mode})")

    def _open_camera(self) -> _Open:
        aravis, spec = self._aravis, self.camera_spec
        try:
            camera = aravis.Camera.new(spec.device)
        except Exception as err:  # noqa: BLE001 - GLib.Error: not found, not reachable
            raise ClipadError(
                f"camera {self.name} not found or not reachable ({aravis_error(err)}); "
                "`clipad doctor` lists the cameras found"
            ) from None
        gige = bool(camera.is_gv_device())
        if (spec.protocol == "gige") != gige:
            kind = "GigE Vision" if gige else "USB3 Vision" if camera.is_uv_device() else "not a GigE Vision"
            raise ClipadError(f"camera {self.name} is a {kind} camera: use {'gige' if gige else 'u3v'}://")
        if gige and not camera.get_device().is_controller():
            raise ClipadError(
                f"camera {self.name} is held by another process (it has the camera's control channel); close it first"
            )
        self._apply(camera, gige)
        code = camera.get_pixel_format()
        try:
            pixel_format(code)
        except UnsupportedPixelFormat as err:
            raise ClipadError(f"camera {self.name}: {err}; choose one with pixel_format=") from None
        if gige:
            address = camera.get_device().get_device_address()
            if address is not None and address.get_address().get_is_loopback():
                # Aravis' packet-socket receiver (used when running with CAP_NET_RAW) received
                # nothing from a camera on loopback here; the plain UDP socket does.
                camera.gv_set_stream_options(aravis.GvStreamOption.PACKET_SOCKET_DISABLED)
        stream = camera.create_stream(None, None)
        if stream is None:
            raise ClipadError(f"camera {self.name}: no stream could be created")
        if gige:
            # A socket buffer sized to the frame: with the default one, most 512 x 512 frames over
            # loopback lost packets.
            stream.set_property("socket-buffer", aravis.GvStreamSocketBuffer.AUTO)
        payload = camera.get_payload()
        for _ in range(N_BUFFERS):
            stream.push_buffer(aravis.Buffer.new_allocate(payload))
        camera.set_acquisition_mode(aravis.AcquisitionMode.CONTINUOUS)
        camera.start_acquisition()
        self.connected = True
        self._last_frame_at = self._last_check = time.monotonic()
        return _Open(camera, stream, gige)

    def _apply(self, camera: Any, gige: bool) -> None:
        """Set what the settings ask for, then read the settings back (``readback``, an event).
        A refused setting is one line (``refused``, an event); a refused trigger mode is an error,
        since the source could not deliver what was asked."""
        s = self.settings
        steps: list[tuple[str, Any, Any]] = []
        if s.pixel_format is not None:
            steps.append(("pixel_format", s.pixel_format, lambda: camera.set_pixel_format_from_string(s.pixel_format)))
        if s.roi is not None:
            steps.append(("roi", ",".join(map(str, s.roi)), lambda: camera.set_region(*s.roi)))
        if s.exposure_us is not None:
            steps.append(("exposure_us", s.exposure_us, lambda: camera.set_exposure_time(s.exposure_us)))
        if s.gain is not None:
            steps.append(("gain", s.gain, lambda: camera.set_gain(s.gain)))
        if s.frame_rate is not None:
            steps.append(("frame_rate", s.frame_rate, lambda: camera.set_frame_rate(s.frame_rate)))
        if s.part_id_chunk is not None:
            steps.append(("part_id_chunk", s.part_id_chunk, lambda: self._enable_chunk(camera, s.part_id_chunk)))
        for key, value in (("packet_size", s.packet_size), ("packet_delay", s.packet_delay)):
            if value is not None:
                setter = getattr(camera, f"gv_set_{key}") if gige else None
                steps.append((key, value, (lambda f=setter, v=value: f(v)) if setter else None))
        refused = []
        for key, value, apply in steps:
            if apply is None:
                refused.append(f"{self.name}: camera refused {key}={value} (GigE Vision cameras only)")
                continue
            try:
                apply()
            except Exception as err:  # noqa: BLE001 - GLib.Error from the camera or GenICam
                refused.append(f"{self.name}: camera refused {key}={value} ({aravis_error(err)})")
        try:
            if s.trigger == "off":
                camera.clear_triggers()
            else:
                camera.set_trigger("Software" if s.trigger == "software" else s.trigger_line)
                if s.trigger == "hardware" and s.trigger_activation:
                    camera.set_string("TriggerActivation", s.trigger_activation)
        except Exception as err:  # noqa: BLE001
            raise ClipadError(f"camera {self.name} refused trigger={s.trigger}: {aravis_error(err)}") from None
        for line in refused:
            if line not in self.refused:
                self.refused.append(line)
                self.stats.events.append(line)
        self.readback = self._read_back(camera, gige)
        self.stats.events.append(self.readback)

    def _enable_chunk(self, camera: Any, name: str) -> None:
        """Have the camera append chunk ``name`` to every frame, and a parser to read it (GLib.Error
        when the camera has no chunks or not this one: a refused setting)."""
        self._chunks = None
        if not camera.are_chunks_available():
            raise ValueError("the camera sends no chunk data")
        camera.set_chunks(name)  # chunk mode on, with this chunk enabled (and the others off)
        self._chunks = camera.create_chunk_parser()

    def _read_back(self, camera: Any, gige: bool) -> str:
        """The camera's settings as it reports them, one line."""

        def get(read: Any, fmt: str = "{}") -> str:
            try:
                return fmt.format(read())
            except Exception:  # noqa: BLE001 - a feature this camera lacks
                return "?"

        region = get(lambda: camera.get_region())
        parts = [
            get(camera.get_pixel_format_as_string),
            region if region == "?" else "{2}x{3}+{0}+{1}".format(*camera.get_region()),
            "exposure " + get(camera.get_exposure_time, "{:g} us"),
            "gain " + get(camera.get_gain, "{:g} dB"),
            get(camera.get_frame_rate, "{:g} fps"),
            "trigger " + get(lambda: camera.get_string("TriggerMode")) + "/" + get(camera.get_trigger_source),
        ]
        try:
            self._frame_period = 1.0 / float(camera.get_frame_rate())
        except Exception:  # noqa: BLE001
            self._frame_period = 0.0
        if gige:
            parts += [
                "packet " + get(camera.gv_get_packet_size, "{} B"),
                "delay " + get(camera.gv_get_packet_delay, "{} ns"),
            ]
        return f"{self.name}: settings read back: " + ", ".join(parts)
