"""Credentials out of anything clipad shows or writes (errors, logs, records, file names).

``redact(text)`` masks, in every URL found in ``text`` (``scheme://...``, any letter case):
- the userinfo: everything before the last ``@`` of the authority (a password may hold ``@``),
  ``rtsp://admin:p@ss@cam/s`` -> ``rtsp://***@cam/s``;
- the values of query and fragment parameters whose names look like credentials
  (``user``, ``pwd``, ``token``, ``api_key``, ... in any case), ``?user=a&pwd=b&ch=1`` ->
  ``?user=***&pwd=***&ch=1``.
Text that is no URL (file paths such as ``/data/a@b.png``) is left as it is.
"""

from __future__ import annotations

import re
from urllib.parse import SplitResult, unquote, urlsplit

MASK = "***"

# Parameter names, lower case with '-' and '_' removed, that carry credentials in camera and
# service URLs; a name containing one of CREDENTIAL_PARTS counts too (db_password, x-auth-token).
CREDENTIAL_NAMES = frozenset(
    "user username usr login loginuser userid uid pass passwd password pwd pw pin token accesstoken "
    "auth authorization key apikey secret clientsecret signature sig session sessionid credential "
    "credentials".split()
)
CREDENTIAL_PARTS = ("pass", "pwd", "token", "secret", "apikey", "auth", "credential")

# A scheme, '://', then everything up to whitespace or a quote or bracket that ends a URL in prose.
_URL = re.compile(r"[A-Za-z][A-Za-z0-9+.\-]*://[^\s'\"<>]+")


def is_credential_name(name: str) -> bool:
    key = unquote(name).lower().replace("-", "").replace("_", "")
    return key in CREDENTIAL_NAMES or any(part in key for part in CREDENTIAL_PARTS)


def _mask_params(params: str) -> str:
    """``a=1&pwd=x;token=y`` -> ``a=1&pwd=***;token=***`` (separators and other text kept)."""
    out = []
    for field in re.split(r"([&;])", params):
        name, eq, _ = field.partition("=")
        out.append(f"{name}={MASK}" if eq and is_credential_name(name) else field)
    return "".join(out)


def redact_url(url: str) -> str:
    """One URL with its userinfo and credential parameters masked (see the module docstring)."""
    try:
        parts = urlsplit(url)
    except ValueError:  # a malformed authority (an unclosed '[', a bad port): keep only the scheme
        return url.partition("://")[0] + "://" + MASK
    _, at, host = parts.netloc.rpartition("@")
    masked = SplitResult(
        url[: len(parts.scheme)],  # urlsplit lower-cases the scheme; the text keeps it as given
        f"{MASK}@{host}" if at else parts.netloc,
        parts.path,
        _mask_params(parts.query),
        _mask_params(parts.fragment),
    )
    return masked.geturl()


def redact(text: str) -> str:
    """``text`` with every URL in it redacted (a bare URL, or prose such as an error message)."""
    return _URL.sub(lambda m: redact_url(m.group(0)), text)
