"""The streaming engine: audio blocks of any size in, model frames through, output blocks out.

    block (n, channels) ──► input ring (channels, history + pending) ──► frames of `context`
         ──► model batch (channels * ready frames, context, 1) ──► output FIFO ──► block (n, channels)

The output is the input delayed by exactly the model's latency (`frame` samples plus any
declared lookahead): output sample t is the model's estimate for input sample t - latency.
Every buffer is allocated in the constructor; `process` only copies into them.
"""
from __future__ import annotations

import numpy as np


class Runner:
    """Calls a backend on preallocated input/output arrays, one pair per batch size.

    For onnxruntime on CPU it binds the arrays once with IOBinding, so a call allocates nothing
    and copies nothing beyond the model's own work.
    """

    def __init__(self, model, batches: list[int]):
        info = model.info
        self.model = model
        self.x = {b: np.zeros((b, info.context, 1), np.float32) for b in batches}
        self.y = {b: np.zeros((b, info.frame, 1), np.float32) for b in batches}
        self._bindings = {}
        session = getattr(model, "session", None)
        if session is not None and model.provider == "CPUExecutionProvider":
            import onnxruntime as ort

            for b in batches:
                binding = session.io_binding()
                binding.bind_ortvalue_input(info.input_name, ort.OrtValue.ortvalue_from_numpy(self.x[b]))
                binding.bind_ortvalue_output(info.output_name, ort.OrtValue.ortvalue_from_numpy(self.y[b]))
                self._bindings[b] = binding

    def __call__(self, batch: int) -> np.ndarray:
        """Run on self.x[batch] (filled by the caller); returns self.y[batch]."""
        binding = self._bindings.get(batch)
        if binding is not None:
            self.model.session.run_with_iobinding(binding)
        else:
            self.y[batch][...] = self.model.run(self.x[batch])
        return self.y[batch]


class StreamEngine:
    """Feed `process(block)` blocks of up to `max_block` samples; get blocks back, `latency` late.

    Channels of one frame, and all frames ready in one block, go through the model as one batch.
    """

    def __init__(self, model, channels: int, max_block: int = 4096):
        info = model.info
        self.info, self.channels = info, channels
        self.frame, self.context = info.frame, info.context
        self.history = info.context - info.frame  # past samples each frame also sees
        self.latency = info.latency
        self.max_frames = -(-max_block // self.frame) + 1
        batches = [channels * k for k in range(1, self.max_frames + 1)]
        self.runner = Runner(model, batches)
        # Input ring: `history` past samples, then up to max_frames frames of pending input.
        cap = self.history + (self.max_frames + 1) * self.frame
        self.inbuf = np.zeros((channels, cap), np.float32)
        self.fill = self.history  # samples in inbuf (history included)
        # Output FIFO, primed with the latency's worth of silence.
        self.outbuf = np.zeros((channels, cap + self.latency + max_block), np.float32)
        self.out_fill = self.latency
        self.max_block = max_block

    def reset(self) -> None:
        self.inbuf[:] = 0
        self.outbuf[:] = 0
        self.fill, self.out_fill = self.history, self.latency

    def process(self, block: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
        """block (n, channels) float32 -> (n, channels), n <= max_block; writes into `out` if given."""
        n = block.shape[0]
        if n > self.max_block:
            raise ValueError(f"block of {n} samples exceeds max_block={self.max_block}")
        self.inbuf[:, self.fill:self.fill + n] = block.T
        self.fill += n
        ready = (self.fill - self.history) // self.frame
        if ready:
            batch = self.channels * ready
            x = self.runner.x[batch]  # (channels * ready, context, 1), channel-major
            for c in range(self.channels):  # a loop over channels, never over samples
                # frame j sees inbuf[c, j*frame : j*frame + context]
                view = np.lib.stride_tricks.as_strided(
                    self.inbuf[c], shape=(ready, self.context), strides=(self.frame * 4, 4))
                x[c * ready:(c + 1) * ready, :, 0] = view
            y = self.runner(batch)
            used = ready * self.frame
            self.outbuf[:, self.out_fill:self.out_fill + used] = y.reshape(self.channels, used)
            self.out_fill += used
            # Keep the unconsumed tail (history + partial frame) at the front of the ring.
            keep = self.fill - used
            self.inbuf[:, :keep] = self.inbuf[:, used:self.fill]
            self.fill = keep
        if out is None:
            out = np.empty((n, self.channels), np.float32)
        out[...] = self.outbuf[:, :n].T
        self.outbuf[:, :self.out_fill - n] = self.outbuf[:, n:self.out_fill]
        self.out_fill -= n
        return out
