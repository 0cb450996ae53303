"""The GenICam --source spec: ``gige://<device id or IP>`` and ``u3v://<device id>``, with settings
in the query string and/or a YAML file per camera (``settings=cam.yaml``; the query string wins).

Settings (every one optional; unset ones are left as the camera has them):

- ``trigger``: ``off`` (free-run, the newest frame), ``software`` (each capture fires the camera's
  software trigger: one trigger, one frame) or ``hardware`` (the camera waits for ``trigger_line``,
  default Line0, with ``trigger_activation`` such as RisingEdge); default off.
- ``exposure_us`` (microseconds), ``gain`` (dB), ``frame_rate`` (frames a second, free-run),
  ``pixel_format`` (a PFNC name, see ``clipad.data.pixels``), ``roi`` = ``x,y,width,height``.
- ``part_id_chunk``: a chunk the camera appends to each frame (e.g. ``CounterValue``, ``FrameID``)
  whose integer value is the frame's part id (hardware trigger jobs; not verified: the emulator
  sends no chunks); without it, part ids come from a counter.
- GigE Vision only: ``packet_size`` (bytes a stream packet) and ``packet_delay`` (nanoseconds
  between packets: a camera's share of a link that many cameras share).

This module does not import Aravis.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal
from urllib.parse import parse_qsl, unquote, urlsplit

import yaml

from clipad.core.errors import ClipadError

SCHEMES = ("gige", "u3v")
Trigger = Literal["off", "software", "hardware"]


@dataclass(frozen=True)
class CameraSettings:
    """What to set on the camera; None leaves the camera's own value."""

    trigger: Trigger = "off"
    trigger_line: str = "Line0"
    trigger_activation: str | None = None
    exposure_us: float | None = None
    gain: float | None = None
    frame_rate: float | None = None
    pixel_format: str | None = None
    roi: tuple[int, int, int, int] | None = None
    packet_size: int | None = None
    packet_delay: int | None = None
    part_id_chunk: str | None = None


@dataclass(frozen=True)
class CameraSpec:
    """A parsed ``gige://`` or ``u3v://`` source: the protocol, the device (an Aravis device id,
    or for GigE Vision an IP address) and the settings."""

    protocol: Literal["gige", "u3v"]
    device: str
    settings: CameraSettings

    @property
    def name(self) -> str:
        return f"{self.protocol}://{self.device}"


def is_camera_spec(spec: str) -> bool:
    """Whether ``spec`` names a GenICam camera (gige:// or u3v://)."""
    scheme, sep, _ = spec.partition("://")
    return bool(sep) and scheme.lower() in SCHEMES


def line_triggered(spec: str) -> bool:
    """Whether ``spec`` is a camera the line triggers (``trigger=hardware``): its every frame is
    a part (the station feeds each one as a job)."""
    return is_camera_spec(spec) and parse_camera_spec(spec).settings.trigger == "hardware"


_FIELDS = {f.name: f for f in dataclasses.fields(CameraSettings)}


_EXPECTED = {
    "trigger": "off, software or hardware",
    "roi": "x,y,width,height: whole numbers >= 0, width and height > 0",
    "exposure_us": "a number > 0",
    "frame_rate": "a number > 0",
    "gain": "a number (dB)",
    "packet_size": "a whole number >= 0",
    "packet_delay": "a whole number >= 0 (ns)",
}


def _value(key: str, raw: Any, where: str) -> Any:
    """One setting from text (query string) or YAML, checked and typed."""
    try:
        if key == "trigger":
            value = str(raw).lower()
            if value in ("off", "software", "hardware"):
                return value
        elif key == "roi":
            parts = tuple(int(p) for p in (raw.split(",") if isinstance(raw, str) else raw))
            if len(parts) == 4 and min(parts) >= 0 and parts[2] > 0 and parts[3] > 0:
                return parts
        elif key in ("exposure_us", "gain", "frame_rate"):
            number = float(raw)
            if key == "gain" or number > 0:
                return number
        elif key in ("packet_size", "packet_delay"):
            if int(raw) >= 0:
                return int(raw)
        else:
            return str(raw)
    except (TypeError, ValueError):
        pass
    raise ClipadError(f"{where}: {key}={raw!r} is not valid (expected {_EXPECTED[key]})")


def _settings(values: dict[str, Any], where: str) -> dict[str, Any]:
    unknown = sorted(set(values) - set(_FIELDS))
    if unknown:
        raise ClipadError(f"{where}: unknown camera setting {', '.join(unknown)} (known: {', '.join(_FIELDS)})")
    return {k: _value(k, v, where) for k, v in values.items()}


def load_settings_file(path: str) -> dict[str, Any]:
    """The settings in a camera's YAML file (a mapping of the setting names above)."""
    p = Path(path).expanduser()
    try:
        data = yaml.safe_load(p.read_text(encoding="utf-8"))
    except OSError as err:
        raise ClipadError(f"cannot read camera settings {p}: {err.strerror or err}") from None
    except yaml.YAMLError as err:
        raise ClipadError(f"camera settings {p} are not valid YAML: {str(err).splitlines()[0]}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ClipadError(f"camera settings {p} must be a mapping of setting: value")
    return _settings({str(k): v for k, v in data.items()}, str(p))


def parse_camera_spec(spec: str) -> CameraSpec:
    """``gige://<device>?key=value&...`` or ``u3v://<device>?...`` -> CameraSpec (one clear line
    on a malformed spec, an unknown setting or a bad value)."""
    parts = urlsplit(spec)
    protocol = parts.scheme.lower()
    if protocol not in SCHEMES:
        raise ClipadError(f"not a camera source: {spec} (gige://<device id or IP> or u3v://<device id>)")
    device = unquote(parts.netloc + parts.path).strip("/")
    if not device:
        raise ClipadError(f"{protocol}:// needs a device id or address, e.g. {protocol}://Basler-12345678")
    query = dict(parse_qsl(parts.query, keep_blank_values=True))
    from_file = load_settings_file(query.pop("settings")) if "settings" in query else {}
    values = {**from_file, **_settings(query, f"{protocol}://{device}")}
    return CameraSpec(protocol, device, CameraSettings(**values))  # type: ignore[arg-type]
