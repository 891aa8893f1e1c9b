"""The one exception type users see as a clean one-line error (the CLI prints it, exit 1)."""


class SatpipeError(Exception):
    """Bad input or a refused operation. The message is one line naming the file and the problem."""
