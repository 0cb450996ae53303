"""The station's OPC UA server (asyncua): a PLC or SCADA client browses the station's state and
recipes, starts jobs, receives one ResultReady event per result and fetches any recent result by
job id. It is also a ``Publisher``: the station hands it every result.

The server runs its own asyncio loop in a background thread (``start()`` / ``close()``).
``publish`` only posts the result to that loop (thread-safe, never waits on a client); the loop
writes the last result and the counter and fires the event, in publish order. Results beyond
``queue_size`` waiting for the loop are counted in ``dropped`` and logged (the result itself
stays fetchable with GetResultById and goes to the other channels). The address space is in
opcua_model.py, the access rules in opcua_access.py.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING
from urllib.parse import urlparse

from asyncua import Server, ua
from asyncua.server.event_generator import EventGenerator

from clipad.core.errors import ClipadError
from clipad.runtime.station.opcua_access import OpcUaAccess, apply_access, check_access
from clipad.runtime.station.opcua_model import (
    EVENT_EXTRA,
    RESULT_FIELDS,
    STATE_MAP,
    StationNodes,
    build_nodes,
    result_values,
)
from clipad.runtime.station.records import JobResult, StationPort, Trigger

if TYPE_CHECKING:
    from clipad.runtime.station.overhead import ChannelClock

log = logging.getLogger("clipad.station.opcua")

MAX_PART_ID = 256  # characters; a longer argument is refused as malformed
MAX_RECIPE_ID = 128
UINT32 = 2**32


def quiet_asyncua() -> None:
    """Keep asyncua's chatter out of the operator's log: warnings and errors only; nothing from
    the server module (start failures and policy warnings are reported here, in one line) nor from
    the request processor (every fault a client provokes is answered to that client; a refused
    login is logged here, or by asyncua's session module for a token type not on offer)."""
    logging.getLogger("asyncua").setLevel(logging.WARNING)
    logging.getLogger("asyncua.server.server").setLevel(logging.CRITICAL)
    logging.getLogger("asyncua.server.uaprocessor").setLevel(logging.CRITICAL)


@dataclass(frozen=True)
class Endpoint:
    """An ``opc.tcp://HOST:PORT[/PATH]`` endpoint: what clients are told (``url``) and the
    socket bound (``bind_host``, ``port``; by default the endpoint's host)."""

    url: str
    host: str
    port: int
    bind_host: str

    @classmethod
    def parse(cls, url: str, bind_host: str | None = None) -> Endpoint:
        parts = urlparse(url)
        try:
            port = parts.port
        except ValueError:
            port = None
        if parts.scheme != "opc.tcp" or not parts.hostname or port is None or port == 0:
            raise ClipadError(f"OPC UA endpoint must be opc.tcp://HOST:PORT (a port from 1 to 65535), got '{url}'")
        return cls(url, parts.hostname, port, bind_host or parts.hostname)


class StationServer:
    """The station's OPC UA server and result publisher.

    ``station``: the station (StationPort); ``endpoint``: ``opc.tcp://HOST:PORT``; ``bind_host``:
    the address to listen on when it is not the endpoint's host (behind NAT, or a test binding
    loopback for a LAN endpoint); ``access``: users and certificates (opcua_access.py);
    ``queue_size``: results waiting for the server loop before ``publish`` drops one (counted);
    ``poll_s``: how often the station's state and recipes are read; ``clock``: told when each
    result's events have been fired (the station's overhead per channel)."""

    _nodes: StationNodes  # set on the server thread before the first client can connect
    _server: Server
    _events: list[EventGenerator]

    def __init__(
        self,
        station: StationPort,
        endpoint: str = "opc.tcp://127.0.0.1:4840",
        *,
        bind_host: str | None = None,
        access: OpcUaAccess | None = None,
        queue_size: int = 10_000,
        poll_s: float = 0.2,
        clock: ChannelClock | None = None,
    ) -> None:
        self.endpoint = Endpoint.parse(endpoint, bind_host)
        self._station = station
        self._access = access or OpcUaAccess()
        check_access(self.endpoint.host, self._access)
        self._queue_size = queue_size
        self._poll_s = poll_s
        self._clock = clock
        self._thread: threading.Thread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._queue: asyncio.Queue[JobResult | None] | None = None
        self._stop: asyncio.Event | None = None
        self._started = threading.Event()
        self._start_error: BaseException | None = None
        self._lock = threading.RLock()
        self._shown: tuple[object, ...] = ()
        self._closed = False
        self.dropped = 0  # results not delivered as an event (queue full, or published while not running)
        self.published = 0  # results delivered to the address space (== ResultCount before wrapping)
        self.summary = ""  # the channel and who may log in, once started (no secrets)

    # -- lifecycle (any thread) ------------------------------------------------------------------

    def start(self, timeout_s: float = 60.0) -> None:
        """Start the server thread and wait until clients can connect; raises ClipadError with one
        line when it cannot (port in use, bad certificate, a non-loopback endpoint without users)."""
        if self._thread is not None:
            raise ClipadError("OPC UA server already started")
        quiet_asyncua()
        self._thread = threading.Thread(target=self._run, name="clipad-opcua", daemon=True)
        self._thread.start()
        if not self._started.wait(timeout_s):
            self.close()
            raise ClipadError(f"OPC UA server did not start within {timeout_s:.0f} s")
        if self._start_error is not None:
            self._thread.join()
            err = self._start_error
            raise err if isinstance(err, ClipadError) else ClipadError(f"OPC UA server failed to start: {err}")

    def close(self) -> None:
        """Deliver the results already posted, stop the server and join its thread (idempotent)."""
        with self._lock:
            first, self._closed = not self._closed, True
        loop, stop, thread = self._loop, self._stop, self._thread
        if loop is not None and stop is not None:
            try:
                loop.call_soon_threadsafe(stop.set)
            except RuntimeError:  # the loop already ended
                pass
        if thread is not None and thread is not threading.current_thread():
            thread.join(timeout=30.0)
            if thread.is_alive():
                log.warning("OPC UA: the server thread did not stop within 30 s")
        if first and self.dropped:
            log.warning("OPC UA: %d result(s) were not delivered as events (see GetResultById)", self.dropped)

    def publish(self, result: JobResult) -> None:
        """Post ``result`` to the server loop (thread-safe, returns at once)."""
        with self._lock:
            loop = self._loop if not self._closed else None
            if loop is None:
                self._drop(result, "the OPC UA server is not running")
                return
            try:
                loop.call_soon_threadsafe(self._enqueue, result)
            except RuntimeError:
                self._drop(result, "the OPC UA server is not running")

    # -- the server thread -----------------------------------------------------------------------

    def _drop(self, result: JobResult, why: str) -> None:
        with self._lock:
            self.dropped += 1
            dropped = self.dropped
        if dropped == 1 or dropped % 1000 == 0:  # the first, then every 1000th: counted, never a flood
            log.warning(
                "OPC UA: no event for job %s (%s); %d dropped so far, each stays fetchable by job id",
                result.job_id,
                why,
                dropped,
            )

    def _enqueue(self, result: JobResult) -> None:
        assert self._queue is not None
        if self._queue.qsize() >= self._queue_size:
            self._drop(result, f"{self._queue_size} results already waiting")
        else:
            self._queue.put_nowait(result)

    def _run(self) -> None:
        try:
            asyncio.run(self._main())
        except BaseException as err:  # reported by start(); after start, one line
            if not self._started.is_set():
                self._start_error = err
                self._started.set()
            else:
                log.error("OPC UA server stopped: %s", err)

    async def _main(self) -> None:
        self._queue = asyncio.Queue()
        self._stop = asyncio.Event()
        server = Server()
        await server.init()
        server.set_endpoint(self.endpoint.url)
        server.socket_address = (self.endpoint.bind_host, self.endpoint.port)
        server.set_server_name("clipad inspection station")
        app_uri = f"urn:{self.endpoint.host}:clipad:station"
        await server.set_application_uri(app_uri)
        summary = await apply_access(server, self.endpoint.host, self._access, app_uri)
        nodes = await build_nodes(server)
        server.link_method(nodes.start_job, self._start_job)
        server.link_method(nodes.get_result, self._get_result)
        self._nodes, self._server = nodes, server
        self._events = [
            await server.get_event_generator(nodes.result_ready_type, emitter.nodeid)
            for emitter in (nodes.vision_system, server.nodes.server)
        ]
        await self._refresh()
        try:
            await server.start()
        except OSError as err:
            raise ClipadError(
                f"OPC UA: cannot listen on {self.endpoint.bind_host}:{self.endpoint.port}: {err.strerror or err}"
            ) from None
        tasks = [asyncio.create_task(self._deliver()), asyncio.create_task(self._tick())]
        with self._lock:
            self._loop = asyncio.get_running_loop()
        self.summary = summary
        log.info("OPC UA server on %s (%s)", self.endpoint.url, summary)
        self._started.set()
        try:
            await self._stop.wait()
        finally:
            with self._lock:
                self._loop = None
            self._queue.put_nowait(None)  # the deliverer drains what came before it, then ends
            await asyncio.wait_for(tasks[0], timeout=10.0)
            tasks[1].cancel()
            await asyncio.gather(tasks[1], return_exceptions=True)
            await server.stop()

    async def _deliver(self) -> None:
        """Write each posted result into the address space and fire its event, in order."""
        assert self._queue is not None
        while True:
            batch = [await self._queue.get()]
            while not self._queue.empty():
                batch.append(self._queue.get_nowait())
            stop = batch[-1] is None
            results = [r for r in batch if r is not None]
            if results:
                try:
                    await self._write_results(results)
                except Exception as err:  # never let one bad result end the deliverer
                    log.error("OPC UA: could not publish %d result(s): %s", len(results), err)
            if stop:
                return

    async def _write_results(self, batch: list[JobResult]) -> None:
        nodes = self._nodes
        # the polled variables show only the batch's newest result; the events carry every one
        first = self.published
        self.published += len(batch)
        for node, value in zip(nodes.last_result.values(), result_values(batch[-1]), strict=True):
            await self._server.write_attribute_value(node.nodeid, ua.DataValue(value))
        count = ua.Variant(self.published % UINT32, ua.VariantType.UInt32)
        await self._server.write_attribute_value(nodes.result_count.nodeid, ua.DataValue(count))
        names = [n for n, _, _ in RESULT_FIELDS]
        for i, result in enumerate(batch):
            extra = [(first + i + 1) % UINT32, False, False]
            for gen in self._events:
                for name, value in zip(names, result_values(result), strict=True):
                    setattr(gen.event, name, value.Value)
                for (name, _, _), field in zip(EVENT_EXTRA, extra, strict=True):
                    setattr(gen.event, name, field)
                gen.event.Severity = 100 if result.verdict.passes else 500
                await gen.trigger(message=f"{result.verdict.value} part {result.part_id} (job {result.job_id})")
            if self._clock is not None:
                self._clock.sent("opcua", result)
        await self._refresh()

    async def _tick(self) -> None:
        """Heartbeat once a second; state, active recipe and recipe list every ``poll_s``."""
        beats = 0
        next_beat = time.monotonic() + 1.0
        while True:
            await asyncio.sleep(min(self._poll_s, max(0.0, next_beat - time.monotonic())))
            if time.monotonic() >= next_beat:
                beats += 1
                next_beat += 1.0
                beat = ua.Variant(beats % UINT32, ua.VariantType.UInt32)
                await self._server.write_attribute_value(self._nodes.heartbeat.nodeid, ua.DataValue(beat))
            await self._refresh()

    async def _refresh(self) -> None:
        """Show the station's state and recipes; writes only what changed."""
        try:
            shown = (self._station.state, self._station.active_recipe, tuple(self._station.recipes))
        except Exception as err:
            if self._shown != ("failed",):
                log.error("OPC UA: cannot read the station's state: %s", err)
                self._shown = ("failed",)
            return
        if shown == self._shown:
            return
        old = self._shown if len(self._shown) == 3 else None
        self._shown = shown
        state, active, recipes = shown
        nodes = self._nodes
        if old is None or old[0] != state:
            vision, automatic = STATE_MAP.get(state, ("Error", "Initialized"))
            await nodes.station_state.write_value(ua.Variant(state, ua.VariantType.String))
            await nodes.vision_state.set(vision)
            await nodes.automatic_state.set(automatic)
        if old is None or old[1] != active:
            await nodes.active_recipe.write_value(ua.Variant(active, ua.VariantType.String))
        if old is None or old[2] != recipes:
            await nodes.recipe_list.write_value(ua.Variant(list(recipes), ua.VariantType.String))

    # -- methods (called on the server loop) -----------------------------------------------------

    async def _start_job(self, parent: ua.NodeId, *args: ua.Variant) -> ua.CallMethodResult:
        """StartSingleJob(PartId, [RecipeId]) -> JobId."""
        checked = _string_args("StartSingleJob", args, (("PartId", MAX_PART_ID), ("RecipeId", MAX_RECIPE_ID)), 1)
        if isinstance(checked, ua.CallMethodResult):
            return checked
        part_id, recipe = (checked + [None])[:2]
        try:
            job_id = self._station.submit(Trigger(via="opcua", part_id=part_id or None, recipe=recipe or None))
        except Exception as err:
            log.error("OPC UA StartSingleJob: the station refused the trigger: %s", err)
            return _status(ua.StatusCodes.BadInternalError, len(args))
        await self._refresh()
        result = _status(ua.StatusCodes.Good, len(args))
        result.OutputArguments = [ua.Variant(job_id, ua.VariantType.String)]
        return result

    async def _get_result(self, parent: ua.NodeId, *args: ua.Variant) -> ua.CallMethodResult:
        """GetResultById(JobId) -> the result's fields (Verdict "unknown" when not found)."""
        checked = _string_args("GetResultById", args, (("JobId", MAX_PART_ID),), 1)
        if isinstance(checked, ua.CallMethodResult):
            return checked
        job_id = checked[0] or ""
        try:
            found = self._station.result(job_id)
        except Exception as err:
            log.error("OPC UA GetResultById: the station could not look up job %s: %s", job_id, err)
            return _status(ua.StatusCodes.BadInternalError, len(args))
        result = _status(ua.StatusCodes.Good, len(args))
        result.OutputArguments = result_values(found, job_id)
        return result


def _code(code: int) -> ua.StatusCode:
    return ua.StatusCode(ua.UInt32(code))


def _status(code: int, n_args: int) -> ua.CallMethodResult:
    result = ua.CallMethodResult()
    result.StatusCode = ua.StatusCode(ua.UInt32(code))
    result.InputArgumentResults = [_code(ua.StatusCodes.Good)] * n_args
    return result


def _string_args(
    method: str, args: Sequence[ua.Variant], spec: Sequence[tuple[str, int]], required: int
) -> list[str | None] | ua.CallMethodResult:
    """``args`` as strings (None for a null argument), or the Bad result a malformed call gets,
    with one log line saying what was wrong."""
    if len(args) < required:
        log.warning("OPC UA %s refused: %d argument(s) given, %s needed", method, len(args), required)
        return _status(ua.StatusCodes.BadArgumentsMissing, len(args))
    if len(args) > len(spec):
        log.warning("OPC UA %s refused: %d arguments given, at most %d", method, len(args), len(spec))
        return _status(ua.StatusCodes.BadTooManyArguments, len(args))
    values: list[str | None] = []
    codes = [_code(ua.StatusCodes.Good)] * len(args)
    problem = None
    for i, (arg, (name, limit)) in enumerate(zip(args, spec, strict=False)):
        value = arg.Value
        if value is None:
            values.append(None)
        elif not isinstance(value, str) or arg.VariantType != ua.VariantType.String:
            codes[i] = _code(ua.StatusCodes.BadTypeMismatch)
            kind = f"an array of {arg.VariantType.name}" if arg.is_array else arg.VariantType.name
            problem = problem or f"{name} must be a String, got {kind}"
        elif len(value) > limit:
            codes[i] = _code(ua.StatusCodes.BadOutOfRange)
            problem = problem or f"{name} is {len(value)} characters long, at most {limit}"
        else:
            values.append(value)
    if problem is not None:
        log.warning("OPC UA %s refused: %s", method, problem)
        result = _status(ua.StatusCodes.BadInvalidArgument, len(args))
        result.InputArgumentResults = codes
        return result
    return values
