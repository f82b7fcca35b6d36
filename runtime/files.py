"""Atomic writes: a temporary file in the same folder, then a rename. Readers see the old file or
the new one, never half of one; a failed write leaves no temporary behind."""
from __future__ import annotations

import os
from pathlib import Path
from typing import Callable

from .errors import UserError


def write_atomic(path: Path, write: Callable[[Path], object]) -> None:
    """Call write(tmp) on a temporary path beside `path` (same suffix, so writers that pick a
    format from the extension still do), then rename it over `path`."""
    path = Path(path)
    tmp = path.with_name(f".{path.stem}.{os.getpid()}.tmp{path.suffix}")
    try:
        write(tmp)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def write_text_atomic(path: Path, text: str) -> None:
    try:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        write_atomic(path, lambda p: p.write_text(text))
    except OSError as e:
        raise UserError(f"cannot write {path}: {e.strerror}; choose another path") from None
