"""Aravis (GenICam for GigE Vision and USB3 Vision cameras) through PyGObject, imported only when a
camera is used: a CPU-only install without the ``genicam`` extra still imports clipad, and a
camera source without Aravis is one line saying what to install."""

from __future__ import annotations

from dataclasses import dataclass
from types import ModuleType

from clipad.core.errors import ClipadError

INSTALL = (
    "GenICam cameras need Aravis: on Debian/Ubuntu `apt-get install gir1.2-aravis-0.8` "
    "(and `libgirepository1.0-dev libcairo2-dev pkg-config` to build PyGObject), then "
    '`pip install "clipad[genicam]"`'
)


def load_aravis() -> ModuleType:
    """The Aravis 0.8 module (gi.repository.Aravis); ClipadError saying what is missing otherwise."""
    try:
        import gi
    except ImportError:
        raise ClipadError(f"PyGObject is not installed. {INSTALL}") from None
    try:
        gi.require_version("Aravis", "0.8")
        from gi.repository import Aravis
    except (ValueError, ImportError):
        raise ClipadError(f"Aravis 0.8's introspection data is not installed. {INSTALL}") from None
    return Aravis


def aravis_error(err: BaseException) -> str:
    """An Aravis (GLib) error as one line: its message without the error domain."""
    return str(getattr(err, "message", None) or err).splitlines()[0]


@dataclass(frozen=True)
class DeviceInfo:
    """One GenICam device Aravis found: ``device_id`` opens it (gige:// or u3v://)."""

    device_id: str
    vendor: str
    model: str
    serial: str
    address: str
    protocol: str  # "GigEVision", "USB3Vision", or Aravis' own "Fake"

    @property
    def source(self) -> str:
        """The --source value that opens this device."""
        return f"{'u3v' if 'USB' in self.protocol.upper() else 'gige'}://{self.device_id}"


def list_devices() -> list[DeviceInfo]:
    """Every GenICam device on the network interfaces and USB buses (GigE Vision discovery takes
    about a second)."""
    aravis = load_aravis()
    aravis.update_device_list()
    return [
        DeviceInfo(
            aravis.get_device_id(i) or "",
            aravis.get_device_vendor(i) or "",
            aravis.get_device_model(i) or "",
            aravis.get_device_serial_nbr(i) or "",
            aravis.get_device_address(i) or "",
            aravis.get_device_protocol(i) or "",
        )
        for i in range(aravis.get_n_devices())
    ]
