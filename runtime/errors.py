"""One exception for bad input: the CLI prints its message on one line and exits non-zero."""
from __future__ import annotations


class UserError(Exception):
    """A problem the user can fix; the message names the problem and the fix."""


class Terminated(KeyboardInterrupt):
    """SIGTERM (a `kill`, a service manager stopping us), raised by the CLI's handler and handled
    as Ctrl-C is: the temporaries of an unfinished output removed, `live`'s summary written; the
    exit status (143, not 130) says which it was."""


def cause_of(e: BaseException, limit: int = 160) -> str:
    """An exception's own words for a one-line message: its lines joined, without onnxruntime's
    "[ONNXRuntimeError] : 2 : INVALID_ARGUMENT :" and "... Status Message:" prefixes, cut to
    `limit` characters; the exception's type name when it has no text."""
    import re

    text = getattr(e, "strerror", None) or getattr(e, "error_string", None) or str(e)
    text = " ".join(line.strip() for line in str(text).splitlines() if line.strip())
    text = re.sub(r"\[ONNXRuntimeError\] : \d+ : \w+ : ", "", text).split("Status Message: ")[-1]
    return text[:limit] if text else type(e).__name__
