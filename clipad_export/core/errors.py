"""The one exception type whose message is shown to the user as a single line."""


class ClipadError(Exception):
    """A user-facing failure: bad input, missing file, unusable weights.

    The CLI prints ``str(err)`` on one line and exits non-zero; tracebacks only with ``--debug``.
    """


class IntegrityError(ClipadError):
    """A file an artifact manifest lists is missing, or its content differs from the manifest's
    sha256 or its recorded graph: the artifacts changed after export. Never a reason to fall back
    to another backend."""
