"""Who may use the station's OPC UA server: the access rules and how they are put on an asyncua Server.

- Endpoint host on loopback (``127.0.0.1``, ``::1``, ``localhost``): anonymous sessions are
  allowed on an unsecured channel (plus any configured users and the secured endpoints when a
  certificate is given).
- Any other endpoint host (a LAN address, ``0.0.0.0``, a host name): no anonymous session, no
  unsecured channel. Only the Basic256Sha256 endpoints (Sign, SignAndEncrypt) are offered, with
  the server certificate given (``certificate`` + ``private_key``) or one generated once into
  ``cert_dir``, and a session needs a configured user (name + password) or a trusted client
  certificate (``trusted_clients``). Starting such an endpoint with neither is refused.

The rule is decided by the *endpoint* (the address clients are told to use), not by the bound
socket, so a test can configure a LAN endpoint while binding loopback. Passwords come from a file
or an environment variable, are compared in constant time and never appear in a repr or a log.
"""

from __future__ import annotations

import hmac
import logging
import os
import socket
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from asyncua import Server, ua
from asyncua.crypto import uacrypto
from asyncua.crypto.cert_gen import setup_self_signed_certificate
from asyncua.crypto.permission_rules import User, UserRole
from asyncua.server.user_managers import UserManager
from cryptography.x509.oid import ExtendedKeyUsageOID

from clipad.core.errors import ClipadError
from clipad.runtime.viewer_access import is_loopback

log = logging.getLogger("clipad.station.opcua")


@dataclass(frozen=True)
class OpcUaUser:
    """One user a PLC or SCADA client logs in as; ``password`` never shows in a repr."""

    name: str
    password: str = field(repr=False)

    @classmethod
    def from_sources(
        cls, name: str, *, password_file: Path | None = None, password_env: str | None = None
    ) -> OpcUaUser:
        """The user with the password read from ``password_file`` (first line, trailing newline
        dropped) or the environment variable ``password_env``; exactly one must be given."""
        if (password_file is None) == (password_env is None):
            raise ClipadError(f"OPC UA user '{name}': give its password as a file or an environment variable (one)")
        if password_file is not None:
            try:
                text = password_file.read_text(encoding="utf-8")
            except OSError as err:
                raise ClipadError(
                    f"OPC UA user '{name}': cannot read the password file {password_file}: {err.strerror}"
                ) from None
            except UnicodeDecodeError:
                raise ClipadError(
                    f"OPC UA user '{name}': the password file {password_file} is not UTF-8 text"
                ) from None
            password = text.splitlines()[0] if text else ""
        else:
            assert password_env is not None
            password = os.environ.get(password_env, "")
        if not password:
            where = password_file if password_file is not None else f"${password_env}"
            raise ClipadError(f"OPC UA user '{name}': the password from {where} is empty")
        return cls(name, password)


@dataclass(frozen=True)
class OpcUaAccess:
    """The access configuration. ``certificate``/``private_key``: the server's own (PEM or DER);
    ``cert_dir``: where a self-signed one is generated (once, then reused) when none is given and
    the endpoint is not loopback; ``trusted_clients``: client certificates (PEM or DER files) whose
    holders may log in without a password."""

    users: tuple[OpcUaUser, ...] = ()
    certificate: Path | None = None
    private_key: Path | None = None
    cert_dir: Path | None = None
    trusted_clients: tuple[Path, ...] = ()


class StationUserManager(UserManager):
    """Checks a session's identity: anonymous only when ``anonymous`` (loopback), a user name
    with its password, or a trusted client certificate (DER bytes). A refusal is one log line."""

    def __init__(self, users: tuple[OpcUaUser, ...], trusted_der: tuple[bytes, ...], anonymous: bool) -> None:
        self._users = {u.name: u.password.encode("utf-8") for u in users}
        self._trusted = trusted_der
        self._anonymous = anonymous

    def get_user(
        self, iserver: Any, username: str | None = None, password: str | None = None, certificate: Any = None
    ) -> User | None:
        if username is not None:
            expected = self._users.get(username)
            # compared even for an unknown name, so the answer's timing does not tell names apart
            matches = hmac.compare_digest(expected or b"\0" * 32, (password or "").encode("utf-8"))
            if matches and expected is not None:
                return User(role=UserRole.User, name=username)
            log.warning("OPC UA: login refused for user '%s' (unknown user or wrong password)", username)
            return None
        if certificate is not None:
            der = certificate if isinstance(certificate, bytes) else uacrypto.der_from_x509(certificate)
            if any(hmac.compare_digest(der, t) for t in self._trusted):
                return User(role=UserRole.User, name="certificate")
            if not self._anonymous:
                log.warning("OPC UA: login refused for an untrusted client certificate")
                return None
        if self._anonymous:
            return User(role=UserRole.User, name="anonymous")
        log.warning("OPC UA: anonymous login refused (the endpoint is not loopback)")
        return None


def _readable(path: Path, what: str) -> Path:
    try:
        with path.open("rb"):
            return path
    except OSError as err:
        raise ClipadError(f"OPC UA {what} {path}: {err.strerror}") from None


def check_access(endpoint_host: str, access: OpcUaAccess) -> None:
    """Refuse, with one line, a configuration the rules do not allow (before anything starts)."""
    if (access.certificate is None) != (access.private_key is None):
        raise ClipadError("OPC UA: give the server certificate and its private key together")
    if is_loopback(endpoint_host):
        return
    if not access.users and not access.trusted_clients:
        raise ClipadError(
            f"OPC UA endpoint host '{endpoint_host}' is not loopback: configure a user (name + password file or "
            "environment variable) or trusted client certificates; anonymous access is only for loopback"
        )
    if access.certificate is None and access.cert_dir is None:
        raise ClipadError(
            f"OPC UA endpoint host '{endpoint_host}' is not loopback: give the server certificate and key, "
            "or a directory to generate them in"
        )


async def apply_access(server: Server, endpoint_host: str, access: OpcUaAccess, application_uri: str) -> str:
    """Put ``access`` on ``server`` (before ``server.start()``) for an endpoint on ``endpoint_host``;
    returns a one-line summary for the operator (no secrets)."""
    check_access(endpoint_host, access)
    loopback = is_loopback(endpoint_host)
    certificate, private_key = access.certificate, access.private_key
    if not loopback and certificate is None:
        assert access.cert_dir is not None
        try:
            access.cert_dir.mkdir(parents=True, exist_ok=True)
        except OSError as err:
            raise ClipadError(f"OPC UA: cannot create {access.cert_dir}: {err.strerror}") from None
        certificate, private_key = access.cert_dir / "station-cert.der", access.cert_dir / "station-key.pem"
        await setup_self_signed_certificate(
            private_key,
            certificate,
            application_uri,
            socket.gethostname(),
            [ExtendedKeyUsageOID.SERVER_AUTH],
            {"organizationName": "clipad"},
        )
    secured = certificate is not None and private_key is not None
    if secured:
        assert certificate is not None and private_key is not None
        try:
            # paths, not bytes: asyncua tells PEM from DER by the file's suffix
            await server.load_certificate(str(_readable(certificate, "certificate")))
            await server.load_private_key(str(_readable(private_key, "private key")))
        except ClipadError:
            raise
        except Exception as err:  # a malformed file: cryptography's ValueError and friends
            raise ClipadError(f"OPC UA: cannot load the server certificate or key: {err}") from None

    policies = [ua.SecurityPolicyType.NoSecurity] if loopback else []
    if secured:
        policies += [
            ua.SecurityPolicyType.Basic256Sha256_Sign,
            ua.SecurityPolicyType.Basic256Sha256_SignAndEncrypt,
        ]
    server.set_security_policy(policies)
    tokens: list[type] = [ua.AnonymousIdentityToken] if loopback else []
    if access.users:
        tokens.append(ua.UserNameIdentityToken)
    if access.trusted_clients and secured:
        tokens.append(ua.X509IdentityToken)
    server.set_identity_tokens(tokens)
    trusted = tuple([await _load_der(p) for p in access.trusted_clients])
    server.iserver.set_user_manager(StationUserManager(access.users, trusted, anonymous=loopback))

    who = ["anonymous"] if loopback else []
    who += [f"{len(access.users)} user(s)"] if access.users else []
    who += [f"{len(trusted)} client certificate(s)"] if trusted else []
    channel = "unsecured + Basic256Sha256" if loopback and secured else "unsecured" if loopback else "Basic256Sha256"
    return f"{channel} channel; sessions: {', '.join(who)}"


async def _load_der(path: Path) -> bytes:
    """A client certificate file (PEM or DER, by its suffix) as DER bytes."""
    try:
        return uacrypto.der_from_x509(await uacrypto.load_certificate(path))
    except OSError as err:
        raise ClipadError(f"OPC UA client certificate {path}: {err.strerror}") from None
    except Exception:
        raise ClipadError(f"OPC UA client certificate {path}: not a PEM or DER certificate") from None
