"""One exception type for user-facing failures: its message is one line naming problem and fix."""


class GzsqError(Exception):
    """A failure caused by the user's input or environment; the CLI prints it as one line."""

    exit_code = 2


class GateFailure(GzsqError):
    exit_code = 3
