"""The one exception type whose message is shown to the user as a single line."""


class ClipadError(Exception):
    """A user-facing failure: bad input, missing file, unusable weights.

    The CLI prints ``str(err)`` on one line and exits non-zero; tracebacks only with ``--debug``.
    """
