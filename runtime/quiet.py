"""Native libraries that write to file descriptor 2 directly (TensorFlow's start-up lines,
LiteRT's "Created TensorFlow Lite XNNPACK delegate"), kept off the terminal."""
from __future__ import annotations

import contextlib
import os
import sys
import tempfile


@contextlib.contextmanager
def native_stderr_held(replay: bool = True):
    """Point fd 2 at a temporary file for the block. What was written there is shown only if the
    block raises and `replay` (then it explains the failure; pass False where the caller reports
    the exception itself); otherwise it is dropped. Python's own sys.stderr writes go the same
    way, so keep the block to the native call."""
    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile() as log:
        os.dup2(log.fileno(), 2)
        try:
            yield
        except BaseException:
            if replay:
                os.dup2(saved, 2)
                log.seek(0)
                sys.stderr.write(log.read().decode(errors="replace"))
            raise
        finally:
            os.dup2(saved, 2)
            os.close(saved)
