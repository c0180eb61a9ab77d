"""The one error type that reaches the user as a one-line message (exit code 2)."""


class InputError(Exception):
    """Bad input from the user: a missing path, an unknown dataset, an impossible setting.

    The CLI prints ``error: <message>`` on one line and exits with code 2; no traceback,
    no half-written artifact.
    """
