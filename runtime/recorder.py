"""`unetsep live --record FILE`: what the speaker plays, written to a file off the audio thread.

The audio callback copies each output block into a preallocated ring (no new buffer, no I/O, no
lock: one int it advances after the copy); the main thread, which wakes about once a second,
writes what is new to a temporary file beside FILE and renames it over FILE when the stream ends.
So FILE appears only complete (up to the stop, Ctrl-C included), never half-written.
"""
from __future__ import annotations

import contextlib
import os
import signal
import threading
from pathlib import Path

import numpy as np

from .contract import SAMPLE_RATE
from .errors import UserError
from .files import atomic_temp, clear_stale_temps
from .separate import SUFFIXES, OutputFormat, output_format

# The main thread drains the ring about once a second; 8 s of room covers a stalled second or
# two (a slow disk) before blocks are dropped, and costs 2.8 MB in stereo at 44.1 kHz.
RING_SECONDS = 8.0


def record_format(path: str | Path, channels: int = 2, rate: int = SAMPLE_RATE) -> OutputFormat:
    """The OutputFormat of a --record path (separate's: .wav as 32-bit float, keeping every sample
    as played; .flac as 24-bit), or a UserError naming the choices or the format's limit."""
    suffix = Path(path).suffix.lower()
    if Path(path).is_dir():
        raise UserError(f"--record {path} is a folder; pass a file name ending in {' or '.join(SUFFIXES)}")
    if suffix not in SUFFIXES:
        raise UserError(f"--record {path}: unknown file type {suffix or '(none)'!r}; end the name in "
                        f"{' or '.join(SUFFIXES)}")
    fmt = output_format(flac=suffix == ".flac")
    if refusal := fmt.refusal(channels, rate):
        raise UserError(f"--record {path}: {refusal}; record to a .wav file")
    return fmt


@contextlib.contextmanager
def _signals_after():
    """Hold Ctrl-C and SIGTERM until the block ends, then deliver them: a signal raised inside
    soundfile's write, after its C call, would leave written samples uncounted (and written twice
    by the next drain). Only the main thread can swap handlers; elsewhere this does nothing."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    held: list[int] = []
    old = {s: signal.signal(s, lambda n, f: held.append(n)) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for s, h in old.items():
            signal.signal(s, h)
        if held:
            os.kill(os.getpid(), held[0])  # its own handler runs now, with the count right


class Recorder:
    """A ring of (samples, channels) float32 filled by `put` (audio thread) and written to a
    temporary file by `drain` (main thread); `finish` renames it into place, `abort` removes it."""

    def __init__(self, path: str | Path, rate: int, channels: int, seconds: float = RING_SECONDS):
        import soundfile as sf

        self.path, self.rate = Path(path), rate
        fmt = record_format(path, channels, rate)
        # (samples, channels); filled once here so that the audio thread never takes the page
        # faults of a fresh allocation
        self.ring = np.zeros((int(seconds * rate), channels), np.float32)
        self.ring.fill(0.0)
        self.head = 0  # samples put, ever (advanced by the audio thread after its copy)
        self.tail = 0  # samples written to the file, ever (advanced by the main thread)
        self.dropped = 0  # blocks put found no room for (the main thread fell behind)
        self.tmp = atomic_temp(self.path)
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            clear_stale_temps(self.path)  # what a recording killed with SIGKILL left
            self.file = sf.SoundFile(str(self.tmp), "w", samplerate=rate, channels=channels,
                                     format=fmt.container, subtype=fmt.subtype)
        except (sf.LibsndfileError, RuntimeError, OSError) as e:
            self.tmp.unlink(missing_ok=True)
            raise UserError(f"cannot write --record {self.path} ({e}); choose another path") from None

    def put(self, block: np.ndarray) -> None:
        """Audio thread: copy `block` (frames, channels) in, or count it dropped when full."""
        n, frames = len(self.ring), len(block)
        if self.head - self.tail + frames > n:
            self.dropped += 1
            return
        i = self.head % n
        first = min(frames, n - i)
        self.ring[i:i + first] = block[:first]
        if first < frames:  # the block wraps around the end of the ring
            self.ring[:frames - first] = block[first:]
        self.head += frames  # only after the copy: the main thread reads up to here

    def drain(self) -> None:
        """Main thread: write every sample put since the last drain."""
        import soundfile as sf

        n, head = len(self.ring), self.head
        try:
            while self.tail < head:
                i = self.tail % n
                j = min(n, i + head - self.tail)
                with _signals_after():
                    self.file.write(self.ring[i:j])
                    self.tail += j - i
        except (sf.LibsndfileError, RuntimeError, OSError) as e:
            raise UserError(f"cannot write --record {self.path} ({e}); free some space or choose "
                            f"another path") from None

    @property
    def seconds(self) -> float:
        return self.tail / self.rate

    def finish(self) -> None:
        """Write the rest, close, and rename the temporary over the path."""
        import soundfile as sf

        try:
            self.drain()
            self.file.close()
            os.replace(self.tmp, self.path)
        except (sf.LibsndfileError, RuntimeError, OSError) as e:
            self.abort()
            raise UserError(f"cannot write --record {self.path} ({e}); free some space or choose "
                            f"another path") from None
        except BaseException:
            self.abort()
            raise

    def abort(self) -> None:
        """Close and remove the temporary: nothing is left under any name."""
        try:
            self.file.close()
        except Exception:  # a full disk can fail the close too; the temporary goes anyway
            pass
        self.tmp.unlink(missing_ok=True)
