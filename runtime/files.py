"""Atomic writes: a temporary file in the same folder, then a rename."""
from __future__ import annotations

import os
import tempfile
from pathlib import Path

from .errors import UserError


def write_text_atomic(path: Path, text: str) -> None:
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    except OSError as e:
        raise UserError(f"cannot write {path}: {e.strerror}; choose another path") from None
    with os.fdopen(fd, "w") as f:
        f.write(text)
    os.replace(tmp, path)
