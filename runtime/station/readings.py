"""The scrape-time readings (``metrics.Reading``) of the station's channels: its capture source,
its MQTT publisher and its OPC UA server (names listed in metrics.py's docstring)."""

from __future__ import annotations

from clipad.runtime.sources import Source
from clipad.runtime.station.metrics import Reading
from clipad.runtime.station.mqtt import MqttPublisher
from clipad.runtime.station.opcua import StationServer


def source_readings(source: Source) -> tuple[Reading, ...]:
    """Up (a live source: connected; a file source: not exhausted) and streams lost."""
    label = ("source", source.name)

    def up() -> float:
        return float(getattr(source, "connected", not source.exhausted))

    return (
        Reading("clipad_station_source_up", "1 while the capture source can deliver frames", up, label=label),
        Reading("clipad_station_source_lost", "Capture streams lost", lambda: source.stats.lost, True, label),
    )


def mqtt_readings(publisher: MqttPublisher) -> tuple[Reading, ...]:
    c = publisher.counters
    return (
        Reading("clipad_station_mqtt_up", "1 while connected to the broker", lambda: float(c().connected)),
        Reading("clipad_station_mqtt_delivered", "Results acknowledged by the broker", lambda: c().delivered, True),
        Reading("clipad_station_mqtt_spooled", "Results in the spool, not yet acknowledged", lambda: c().spooled),
        Reading("clipad_station_mqtt_spool_bytes", "Bytes of those results", lambda: c().spooled_bytes),
        Reading("clipad_station_mqtt_dropped", "Results the full spool could not keep", lambda: c().dropped, True),
    )


def opcua_readings(server: StationServer) -> tuple[Reading, ...]:
    return (
        Reading("clipad_station_opcua_events", "Results delivered as OPC UA events", lambda: server.published, True),
        Reading("clipad_station_opcua_dropped", "Results not delivered as events", lambda: server.dropped, True),
    )
