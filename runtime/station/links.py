"""`clipad station`'s MQTT and OPC UA options, read into the records their modules take.

- ``--mqtt mqtt://[USER@]HOST[:PORT][/ROOT]`` (``mqtts://``: TLS, port 8883 by default, the
  system's CAs unless ``--mqtt-ca``); the password never in the URL: ``--mqtt-password`` names a
  file (its first line) or ``$VAR`` (an environment variable), so it stays out of ``ps`` and logs.
- ``--opcua opc.tcp://HOST:PORT``; ``--opcua-user NAME=FILE`` or ``NAME=$VAR`` (repeatable);
  ``--opcua-certs DIR`` (the server's ``station-cert.der`` + ``station-key.pem`` there, generated
  once when missing); ``--opcua-trust FILE`` (a client certificate allowed to log in, repeatable).
"""

from __future__ import annotations

import re
import socket
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

from clipad.core.errors import ClipadError
from clipad.core.redaction import redact_url
from clipad.runtime.station.mqtt import MqttOptions
from clipad.runtime.station.opcua_access import OpcUaAccess, OpcUaUser

_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")


def station_name(given: str | None) -> str:
    """The station's name in MQTT topics and the client id: ``given``, else this host's name
    (its first label, with anything but letters, digits, '_', '.', '-' made '-')."""
    if given is not None:
        if not _NAME.fullmatch(given):
            raise ClipadError(
                f"--name '{given}' must be 1 to 64 letters, digits, '_', '.' or '-', starting with a letter or digit"
            )
        return given
    host = re.sub(r"[^A-Za-z0-9_.-]", "-", socket.gethostname().split(".")[0]).strip("-._")
    return host[:64] or "station"


def secret_source(value: str, option: str) -> tuple[Path | None, str | None]:
    """``FILE`` -> (path, None); ``$VAR`` -> (None, "VAR"): where a password is read from."""
    if value.startswith("$"):
        var = value[1:]
        if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", var):
            raise ClipadError(f"{option}: '{value}' is not $NAME of an environment variable")
        return None, var
    if not value:
        raise ClipadError(f"{option} needs a file or $ENVIRONMENT_VARIABLE")
    return Path(value), None


@dataclass(frozen=True)
class MqttCli:
    """The MQTT options as given: ``url`` (see the module's text), ``password`` (FILE or $VAR),
    ``ca``/``cert``/``key``: TLS files; ``spool``: the spool folder."""

    url: str
    password: str | None = None
    ca: Path | None = None
    cert: Path | None = None
    key: Path | None = None

    def options(self, station: str, spool: Path) -> MqttOptions:
        """The checked ``MqttOptions`` (one line naming the option when something is wrong)."""
        parts = urlsplit(self.url)
        shown = redact_url(self.url)
        if parts.scheme not in ("mqtt", "mqtts") or not parts.hostname:
            raise ClipadError(
                f"--mqtt takes a broker URL: scheme mqtt (mqtts: TLS), [USER@]HOST[:PORT][/TOPIC_ROOT]; got '{shown}'"
            )
        if parts.password is not None:
            raise ClipadError("--mqtt: no password in the URL (it would show in ps and logs); use --mqtt-password")
        if parts.query or parts.fragment:
            raise ClipadError(f"--mqtt takes no query or fragment, got '{shown}'")
        try:
            port = parts.port
        except ValueError:
            raise ClipadError(f"--mqtt: the port of '{shown}' is not in 1..65535") from None
        tls = parts.scheme == "mqtts"
        if not tls and (self.ca or self.cert):
            raise ClipadError("--mqtt-ca and --mqtt-cert need an mqtts:// broker URL")
        password_file, password_env = (None, None)
        if self.password is not None:
            password_file, password_env = secret_source(self.password, "--mqtt-password")
        root = parts.path.strip("/") or "clipad"
        try:
            return MqttOptions(
                station=station,
                spool_dir=spool,
                host=parts.hostname,
                port=port or (8883 if tls else 1883),
                topic_root=root,
                username=parts.username,
                password_file=password_file,
                password_env=password_env,
                tls=tls,
                ca_file=self.ca,
                cert_file=self.cert,
                key_file=self.key,
            )
        except ClipadError as err:
            raise ClipadError(f"--mqtt: {str(err).removeprefix('MQTT: ')}") from None


def opcua_access(users: list[str] | None, certs: Path | None, trust: list[Path] | None) -> OpcUaAccess:
    """The OPC UA access record from ``--opcua-user`` (NAME=FILE or NAME=$VAR), ``--opcua-certs``
    and ``--opcua-trust``; a given certificate pair in ``certs`` is used, else generated there."""
    parsed = []
    for spec in users or []:
        name, sep, source = spec.partition("=")
        if not sep or not name or not source:
            raise ClipadError(f"--opcua-user takes NAME=PASSWORD_FILE or NAME=$VAR, got '{spec.partition('=')[0]}=...'")
        file, env = secret_source(source, "--opcua-user")
        parsed.append(OpcUaUser.from_sources(name, password_file=file, password_env=env))
    cert = key = None
    if certs is not None and (certs / "station-cert.der").is_file() and (certs / "station-key.pem").is_file():
        cert, key = certs / "station-cert.der", certs / "station-key.pem"
    return OpcUaAccess(tuple(parsed), cert, key, certs, tuple(trust or ()))
