"""Atomic writes: a temporary file in the same folder, then a rename. Readers see the old file or
the new one, never half of one; a failed write leaves no temporary behind."""
from __future__ import annotations

import glob
import os
import re
import shutil
import sys
import tempfile
from pathlib import Path
from typing import Callable

from .errors import UserError


def atomic_temp(path: Path) -> Path:
    """The temporary beside `path` that an atomic write of it fills before the rename (same
    suffix, so writers that pick a format from the extension still do)."""
    path = Path(path)
    return path.with_name(f".{path.stem}.{os.getpid()}.tmp{path.suffix}")


def clear_stale_temps(path: Path) -> list[str]:
    """Remove the atomic_temp files of `path` that processes no longer alive left (a run killed
    with SIGKILL mid-write); returns their names."""
    path = Path(path)
    stale = re.compile(rf"^\.{re.escape(path.stem)}\.(\d+)\.tmp{re.escape(path.suffix)}$")
    gone = []
    for p in path.parent.glob(f".{glob.escape(path.stem)}.*.tmp{glob.escape(path.suffix)}"):
        m = stale.match(p.name)
        if m and not _alive(int(m.group(1))):
            p.unlink(missing_ok=True)
            gone.append(p.name)
    return gone


def in_place(path: Path) -> bool:
    """Whether `path` is written in place rather than replaced by a rename: a FIFO or a device."""
    path = Path(path)
    return path.exists() and not path.is_file()


def std_stream(path: Path):
    """sys.stdout or sys.stderr when `path` is the file it writes to (/dev/stdout, /dev/fd/1, a
    link to them: whatever the shell redirected it to, a plain file too), else None. Opening such
    a name again would truncate that file, and a rename would replace it."""
    try:
        st = os.stat(path)
    except OSError:
        return None
    for stream in (sys.stdout, sys.stderr):
        try:
            if os.path.samestat(st, os.fstat(stream.fileno())):
                return stream
        except (AttributeError, OSError, ValueError):  # a replaced stream without a descriptor
            continue
    return None


def write_atomic(path: Path, write: Callable[[Path], object]) -> None:
    """Call write(tmp) on a temporary path beside `path` (atomic_temp), then rename it over
    `path`. A symlink keeps pointing where it did (its target is replaced); a FIFO or a device
    (/dev/stdout) is written to directly: a rename would replace it by a plain file."""
    path = Path(path)
    stream = std_stream(path)
    if stream is not None:  # through the stream this process has open: opening the name again
        with tempfile.TemporaryDirectory() as tmp:  # would truncate a file the shell redirected to
            write(Path(tmp) / f"out{path.suffix}")
            data = (Path(tmp) / f"out{path.suffix}").read_bytes()
            stream.flush()
            if hasattr(stream, "buffer"):
                stream.buffer.write(data)
            else:  # replaced by a text stream (contextlib.redirect_stdout)
                stream.write(data.decode(errors="replace"))
            stream.flush()
        return
    if in_place(path):
        write(path)
        return
    path = Path(os.path.realpath(path))
    tmp = atomic_temp(path)
    try:
        write(tmp)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def as_public_folder(path: Path) -> Path:
    """Give a folder made by tempfile.mkdtemp (mode 0700, private) the mode a plain mkdir would
    (0777 less the umask) before it is renamed into place as a result others may read."""
    try:  # Linux says it without changing it (os.umask would, for every thread, for a moment)
        status = Path("/proc/self/status").read_text()
        umask = int(re.search(r"^Umask:\s*([0-7]+)", status, re.M).group(1), 8)
    except (OSError, AttributeError):
        umask = os.umask(0)
        os.umask(umask)
    os.chmod(path, 0o777 & ~umask)
    return path


FIGURE_TYPES = (".png", ".pdf", ".svg")


def check_report_paths(json_path: str | Path | None, plot_path: str | Path | None) -> None:
    """--json and --plot of a command that works for minutes first: checked before that work."""
    if json_path:
        check_writable(json_path, "--json")
    if plot_path:
        check_figure_path(plot_path)


def check_figure_path(path: str | Path, flag: str = "--plot") -> None:
    """check_writable for a picture, and its type from its extension, before any work."""
    check_writable(path, flag)
    if Path(path).suffix.lower() not in FIGURE_TYPES:
        raise UserError(f"{flag} {path}: name a {', '.join(FIGURE_TYPES)} file (the extension "
                        f"picks the image type)")


def save_figure(fig, path: str | Path, dpi: int = 110) -> None:
    """A matplotlib figure written atomically, its type from the extension; one line if it cannot
    be written (a full disk)."""
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        write_atomic(path, lambda p: fig.savefig(p, format=path.suffix.lower()[1:], dpi=dpi))
    except OSError as e:
        raise UserError(f"cannot write {path}: {e.strerror}; choose another path") from None


def write_text_atomic(path: Path, text: str) -> None:
    try:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        write_atomic(path, lambda p: p.write_text(text))
    except OSError as e:
        raise UserError(f"cannot write {path}: {e.strerror}; choose another path") from None


# Temporaries of a pair written by process <pid>: `.NAME.<pid>.tmp` (the new file being written)
# and `.NAME.<pid>.old` (a hard link to the previous NAME, kept while the pair is swapped in).
_PAIR_TEMP = re.compile(r"^\.(?P<name>.+)\.(?P<pid>\d+)\.(?P<kind>tmp|old)$")


def pair_temp(final: Path, kind: str = "tmp") -> Path:
    """The temporary of this process beside `final` (kind 'tmp' or 'old')."""
    return final.with_name(f".{final.name}.{os.getpid()}.{kind}")


def _alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's live process
        return True
    return True


def replace_pair(pairs: list[tuple[Path, Path]]) -> None:
    """Rename each finished temporary over its final name, as a pair: a folder never keeps a new
    file beside an old partner. The previous files are hard-linked aside first, so a failed rename
    puts them all back (or removes the new ones where there were none). A kill -9 between the
    renames is undone by `recover_pairs` on the next run."""
    olds: dict[Path, Path] = {}
    done: list[Path] = []
    try:
        for _, final in pairs:
            if final.exists():
                old = pair_temp(final, "old")
                old.unlink(missing_ok=True)
                try:
                    os.link(final, old)
                except OSError:  # a filesystem without hard links: a copy does the same job
                    shutil.copy2(final, old)
                olds[final] = old
        for tmp, final in pairs:
            os.replace(tmp, final)
            done.append(final)
    except BaseException:
        for _, final in pairs:  # best effort: the error that got us here is the one to report
            try:
                if final in olds:
                    if final in done:
                        os.replace(olds[final], final)
                elif final in done:
                    final.unlink()
            except OSError:
                pass
        raise
    finally:
        for old in olds.values():
            try:
                old.unlink(missing_ok=True)
            except OSError:
                pass


def recover_pairs(folder: Path, names: tuple[str, ...]) -> list[str]:
    """Clean what killed writers of the pair `names` left in `folder`; returns one note per action.

    A dead writer's `.tmp` files are unfinished: removed. Its `.old` links hold the previous pair:
    if it died between its renames (one name replaced, the other not, or a name missing), they are
    renamed back so the folder holds the previous complete pair; otherwise they are removed.
    """
    found: dict[int, dict[str, dict[str, Path]]] = {}
    try:
        entries = list(folder.iterdir())
    except OSError:
        return []
    for p in entries:
        m = _PAIR_TEMP.match(p.name)
        if m and m["name"] in names and not _alive(int(m["pid"])):
            found.setdefault(int(m["pid"]), {}).setdefault(m["kind"], {})[m["name"]] = p
    notes = []
    for pid, kinds in sorted(found.items()):
        olds = kinds.get("old", {})
        finals = {n: folder / n for n in names}
        if olds:
            replaced = {n: not (finals[n].exists() and os.path.samefile(finals[n], olds[n]))
                        for n in olds}
            consistent = all(f.exists() for f in finals.values()) and (
                len(olds) < len(names) or len(set(replaced.values())) == 1)
            if consistent:
                for old in olds.values():
                    old.unlink()
            else:
                for n, old in olds.items():
                    if replaced[n]:
                        os.replace(old, finals[n])
                    else:  # still the same file: rename() between two links of one file is a no-op
                        old.unlink()
                notes.append(f"restored the previous {' and '.join(sorted(olds))} in {folder} "
                             f"(an earlier run, pid {pid}, was killed while replacing them)")
        tmps = kinds.get("tmp", {})
        for t in tmps.values():
            t.unlink()
        if tmps:
            notes.append(f"removed {len(tmps)} unfinished temporary file{'s' * (len(tmps) > 1)} "
                         f"left in {folder} by an interrupted run (pid {pid})")
    return notes


def check_writable(path: str | Path, flag: str) -> None:
    """Fail before any work when the output `path` of `flag` cannot be written: its folder is a
    file, is read-only, or the path is a folder. (The write itself stays atomic.)"""
    path = Path(path)
    if path.is_dir():
        raise UserError(f"{flag} {path} is a folder; pass a file path")
    if in_place(path) or std_stream(path):  # a FIFO, a device, this process's stdout: in place
        if not os.access(path, os.W_OK):
            raise UserError(f"{flag} {path} is not writable; choose another path")
        return
    parent = Path(os.path.realpath(path)).parent
    while not parent.exists():
        parent = parent.parent
    if not parent.is_dir():
        raise UserError(f"{flag} {path}: {parent} is a file, not a folder; choose another path")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise UserError(f"{flag} {path}: {parent} is not writable; choose another path")


def check_folder_arg(path: str | Path, flag: str) -> None:
    """Fail before any work when the output folder `path` of `flag`, or a folder above it, is an
    existing file (mkdir would say only "File exists", and after minutes of work)."""
    for p in (Path(path), *Path(path).parents):
        try:
            if not p.exists():
                continue
        except OSError as e:  # a folder above it that we may not look into
            raise UserError(f"{flag} {path}: cannot look into {p.parent} ({e.strerror}); choose "
                            f"another {flag}") from None
        if not p.is_dir():
            at = "" if p == Path(path) else f": {p}"
            raise UserError(f"{flag} {path}{at} is a file, not a folder; choose another {flag}")
        return
