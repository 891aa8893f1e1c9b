"""The one exception type users see as a clean one-line error (the CLI prints it, exit 1),
and one-line notes about what was not checked."""

from __future__ import annotations

import sys
import threading

_CONTROL = {c: f"\\x{c:02x}" for c in (*range(0x20), *range(0x7F, 0xA0))}
_CONTROL.update({ord("\n"): "\\n", ord("\r"): "\\r", ord("\t"): "\\t"})


def printable(text: str) -> str:
    """`text` with control characters escaped (`\\n`, `\\x1b`, ...): a path holding a newline
    or a terminal escape stays one visible line in a message."""
    return str(text).translate(_CONTROL)


class SatpipeError(Exception):
    """Bad input or a refused operation. The message is one line naming the file and the
    problem; control characters in it (a path with a newline, say) are escaped, so it stays
    one line whatever the user's paths hold."""

    def __init__(self, message: object = "", *args: object) -> None:
        super().__init__(printable(str(message)), *args)


_NOTED: set[str] = set()
_NOTED_LOCK = threading.Lock()


def note(message: str) -> None:
    """Print `satpipe: note: MESSAGE` on stderr, once per process for each message.

    For things a user should know but that do not stop the command: a store too old for a
    check, say. Notes go to stderr so they never mix with a command's output."""
    with _NOTED_LOCK:
        if message in _NOTED:
            return
        _NOTED.add(message)
    print(f"satpipe: note: {printable(message)}", file=sys.stderr, flush=True)


def quote(exc: BaseException, limit: int = 160) -> str:
    """What a one-line error quotes of a library's exception: an OS error's `[Errno N] text`
    (without the path: the caller names it), else its message on one line, cut to `limit`
    characters with "...", else the exception's type name."""
    if isinstance(exc, OSError) and exc.strerror:
        return f"[Errno {exc.errno}] {exc.strerror}" if exc.errno else exc.strerror
    text = " ".join(str(exc).split()) or type(exc).__name__
    return text if len(text) <= limit else text[: limit - 3] + "..."
