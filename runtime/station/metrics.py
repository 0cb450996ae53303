"""The station's Prometheus metrics (prometheus_client, in the station's own registry).

Counted from results (``StationMetrics`` is a ``Publisher`` and a ``LateListener``):

- ``clipad_station_jobs_total{verdict, recipe}``: results published, by verdict (OK, NG, error,
  timeout) and recipe;
- ``clipad_station_latency_seconds{via}``: trigger received to result handed to the publishers,
  by trigger source (http, mqtt, opcua, replay);
- ``clipad_station_inference_seconds{recipe}``: the backend's share of inspected jobs;
- ``clipad_station_overhead_seconds{channel, via}``: the station's own share of a job on each
  channel: (result published on ``channel`` - trigger received) - the job's inference time, for
  inspected jobs; published = handed to paho (mqtt), the ResultReady event fired (opcua), the
  ``?wait=1`` answer written (http) (``overhead.ChannelClock``);
- ``clipad_station_timeouts_total`` and ``clipad_station_late_total``: TIMEOUT results, and
  verdicts that came after their TIMEOUT (logged, never published as the answer).

Read from the station at scrape time: ``clipad_station_queue_depth``, ``clipad_station_backlog``
(results waiting for the publishers), ``clipad_station_backend_up``, ``clipad_station_recipes``,
``clipad_station_state{state}`` (1 for the current state), ``clipad_station_busy_total`` and
``clipad_station_publish_errors_total``. With the station's channels (``watch``):
``clipad_station_source_up{source}`` (1 while the capture source delivers) and
``clipad_station_source_lost_total``, ``clipad_station_mqtt_up``, ``clipad_station_mqtt_delivered_total``,
``clipad_station_mqtt_spooled`` (results in the spool, not yet acknowledged) and
``clipad_station_mqtt_spool_bytes``, ``clipad_station_mqtt_dropped_total`` (spool overflow),
``clipad_station_opcua_events_total`` and ``clipad_station_opcua_dropped_total``.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, get_args

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from clipad.runtime.station.records import JobResult, StationState, Verdict

if TYPE_CHECKING:
    from clipad.runtime.station.station import Station

# Seconds; fine steps below 10 ms where the station's own overhead lives, then up to 10 s.
LATENCY_BUCKETS = (0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0, 5.0, 10.0)
# Seconds; the overhead's goals are 5 and 10 ms, so steps of 0.5 to 2.5 ms up to there.
OVERHEAD_BUCKETS = (0.0005, 0.001, 0.0015, 0.002, 0.003, 0.004, 0.005, 0.0075, 0.01, 0.015, 0.02, 0.05, 0.1, 1.0)
CONTENT_TYPE = CONTENT_TYPE_LATEST  # the text exposition format's media type, for /metrics


class StationMetrics:
    """The metrics of one station in ``registry`` (a fresh one by default, never the global one)."""

    def __init__(self, registry: CollectorRegistry | None = None):
        self.registry = registry or CollectorRegistry(auto_describe=True)
        r = self.registry
        self.jobs = Counter("clipad_station_jobs", "Job results published", ["verdict", "recipe"], registry=r)
        self.latency = Histogram(
            "clipad_station_latency_seconds",
            "Trigger received to result handed to the publishers",
            ["via"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.inference = Histogram(
            "clipad_station_inference_seconds",
            "The backend's share of inspected jobs",
            ["recipe"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.overhead = Histogram(
            "clipad_station_overhead_seconds",
            "Result published on the channel - trigger received - inference time",
            ["channel", "via"],
            buckets=OVERHEAD_BUCKETS,
            registry=r,
        )
        self.timeouts = Counter("clipad_station_timeouts", "Jobs answered TIMEOUT", registry=r)
        self.late_verdicts = Counter("clipad_station_late", "Verdicts that came after their job's TIMEOUT", registry=r)

    def bind(self, station: Station) -> None:
        """Read ``station``'s queue, backlog, backend and state at every scrape."""
        self.registry.register(_StationGauges(station))

    def watch(self, *readings: Reading) -> None:
        """Read these values (a channel's counters) at every scrape."""
        self.registry.register(_Readings(readings))

    # -- Publisher / LateListener --------------------------------------------------------
    def publish(self, result: JobResult) -> None:
        self.jobs.labels(result.verdict.value, result.recipe).inc()
        self.latency.labels(result.via).observe(result.latency_ms / 1000)
        if result.inference_ms is not None:
            self.inference.labels(result.recipe).observe(result.inference_ms / 1000)
        if result.verdict is Verdict.TIMEOUT:
            self.timeouts.inc()

    def late(self, result: JobResult) -> None:  # noqa: ARG002 - counted, whatever it says
        self.late_verdicts.inc()

    def close(self) -> None:
        pass

    def render(self) -> bytes:
        """The registry in the Prometheus text format (``CONTENT_TYPE``)."""
        return generate_latest(self.registry)


@dataclass(frozen=True)
class Reading:
    """One value read at scrape time: ``name`` (a counter's without ``_total``), ``help``,
    ``counter`` (else a gauge), ``read`` (returns the number), ``label`` (name, value) if any."""

    name: str
    help: str
    read: Callable[[], float]
    counter: bool = False
    label: tuple[str, str] | None = None


class _Readings(Collector):
    def __init__(self, readings: tuple[Reading, ...]):
        self.readings = readings

    def collect(self) -> Iterator[Metric]:
        for r in self.readings:
            kind = CounterMetricFamily if r.counter else GaugeMetricFamily
            labels = [r.label[0]] if r.label else None
            family = kind(r.name, r.help, labels=labels)
            family.add_metric([r.label[1]] if r.label else [], r.read())
            yield family


class _StationGauges(Collector):
    """The values a scrape reads from the station itself."""

    def __init__(self, station: Station):
        self.station = station

    def collect(self) -> Iterator[Metric]:
        s = self.station
        yield GaugeMetricFamily("clipad_station_queue_depth", "Jobs waiting for the worker", value=s.queue_depth)
        yield GaugeMetricFamily("clipad_station_backlog", "Results waiting for the publishers", value=s.backlog)
        yield GaugeMetricFamily(
            "clipad_station_backend_up", "1 unless the last backend call failed", value=int(s.backend_up)
        )
        yield GaugeMetricFamily("clipad_station_recipes", "Recipes loaded", value=len(s.recipes))
        state = GaugeMetricFamily("clipad_station_state", "1 for the station's current state", labels=["state"])
        now = s.state
        for name in get_args(StationState):
            state.add_metric([name], int(name == now))
        yield state
        yield CounterMetricFamily("clipad_station_busy", "Triggers refused busy", value=s.busy_count)
        yield CounterMetricFamily(
            "clipad_station_publish_errors", "Publisher calls that failed", value=s.publish_errors
        )
