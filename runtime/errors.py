"""One exception for bad input: the CLI prints its message on one line and exits non-zero."""
from __future__ import annotations


class UserError(Exception):
    """A problem the user can fix; the message names the problem and the fix."""


class Terminated(KeyboardInterrupt):
    """SIGTERM (a `kill`, a service manager stopping us), raised by the CLI's handler and handled
    as Ctrl-C is: the temporaries of an unfinished output removed, `live`'s summary written; the
    exit status (143, not 130) says which it was."""


def cause_of(e: BaseException, limit: int = 160, last: bool = False) -> str:
    """An exception's own words for a one-line message: its first (or `last`) non-empty line,
    without onnxruntime's "... Status Message:" prefix, cut to `limit` characters; the exception's
    type name when it has no text."""
    text = getattr(e, "strerror", None) or getattr(e, "error_string", None) or str(e)
    lines = [line for line in str(text).strip().splitlines() if line.strip()]
    if not lines:
        return type(e).__name__
    return (lines[-1] if last else lines[0]).split("Status Message: ")[-1][:limit]
