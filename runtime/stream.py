"""The streaming engine: audio blocks of any size in, model frames through, output blocks out.

    block (n, channels) ──► input ring (channels, history + pending) ──► ready frames
         version 1: model batch (channels * ready frames, context, 1)
         version 2: model call (channels, ready * frame, 1) + each channel's carried state
    ──► output FIFO ──► block (n, channels)

The output is the input delayed by exactly the model's latency (`frame` samples plus any
declared lookahead): output sample t is the model's estimate for input sample t - latency.
Every buffer is allocated in the constructor (for version 2, per number of hops a block of up to
EAGER_BLOCK samples can bring; longer file-mode calls allocate theirs on first use); `process`
only copies.
"""
from __future__ import annotations

import sys

import numpy as np


class Runner:
    """Calls a backend on preallocated input/output arrays, one pair per batch size.

    - onnxruntime on CPU: the arrays are bound once with IOBinding, so a call allocates nothing
      and copies nothing beyond the model's own work.
    - onnxruntime on CUDA (or `device` given): x and y also live in the device's memory, bound
      once; a call copies x in and y out. The batch sizes in `capture` replay CUDA graphs, as
      in StatefulRunner (see there).
    """

    def __init__(self, model, batches: list[int], device: str | None = None, graphs=None,
                 capture: list[int] | None = None):
        info = model.info
        self.model, self.info = model, info
        self.x = {b: np.zeros((b, info.context, 1), np.float32) for b in batches}
        self.y = {b: np.zeros((b, info.frame, 1), np.float32) for b in batches}
        self._bindings, self._dev_x, self._dev_y, self._options = {}, {}, {}, {}
        self.graph_ids: dict[int, int] = {}  # batch -> gpu_graph_id
        session = getattr(model, "session", None)
        on_cuda = session is not None and model.provider == "CUDAExecutionProvider"
        self.device = (device or ("cuda" if on_cuda else None)) if session is not None else None
        self._session = session
        if self.device:
            capture = _capture_list(batches, capture)
            graphs = _graph_session(model, on_cuda, capture, graphs)
            if graphs is not None:
                try:
                    self._bind_device(batches, graphs, graphed=True, capture=capture)
                    _capture(graphs, [(self._bindings[b], self._options[b]) for b in capture])
                    self._session = graphs
                    return
                except Exception as e:  # onnxruntime's own types: run without graphs instead
                    _capture_failed(e)
                    for d in (self._bindings, self._dev_x, self._dev_y, self._options, self.graph_ids):
                        d.clear()
            self._bind_device(batches, session, graphed=False, capture=[])
        elif session is not None and model.provider == "CPUExecutionProvider":
            import onnxruntime as ort

            for b in batches:
                binding = session.io_binding()
                binding.bind_ortvalue_input(info.input_name, ort.OrtValue.ortvalue_from_numpy(self.x[b]))
                binding.bind_ortvalue_output(info.output_name, ort.OrtValue.ortvalue_from_numpy(self.y[b]))
                self._bindings[b] = binding

    def _bind_device(self, batches: list[int], session, graphed: bool, capture: list[int]) -> None:
        for b in batches:
            binding = session.io_binding()
            self._dev_x[b], self._dev_y[b] = _on_device(self.x[b], self.device), _on_device(self.y[b], self.device)
            binding.bind_ortvalue_input(self.info.input_name, self._dev_x[b])
            binding.bind_ortvalue_output(self.info.output_name, self._dev_y[b])
            self._bindings[b] = binding
            self._options[b] = _run_options(self.model, graphed, b in capture, self.graph_ids, b)

    def __call__(self, batch: int) -> np.ndarray:
        """Run on self.x[batch] (filled by the caller); returns self.y[batch]."""
        binding = self._bindings.get(batch)
        if binding is not None and self.device:
            _device_call(self._session, binding, self._options[batch], self.x[batch],
                         self._dev_x[batch], self._dev_y[batch], self.y[batch])
        elif binding is not None:
            self._session.run_with_iobinding(binding)
        else:
            self.y[batch][...] = self.model.run(self.x[batch])
        return self.y[batch]


# A runner told nothing of its calls captures CUDA graphs for all its call shapes (hop counts or
# batch sizes) if it has at most this many (bench's and the soak's runners have one); StreamEngine
# names the one or two shapes its blocks bring (live_shapes).
GRAPH_MAX_SHAPES = 4


def _on_device(a: np.ndarray, device: str):
    """An OrtValue in `device`'s own memory (never a view of `a`), filled from `a`."""
    import onnxruntime as ort

    v = ort.OrtValue.ortvalue_from_shape_and_type(a.shape, a.dtype, device, 0)
    v.update_inplace(a)
    return v


def live_shapes(max_block: int, frame: int) -> list[int]:
    """The frame (hop) counts that blocks of `max_block` samples make ready, call after call:
    a block plus a partial frame left over holds max_block // frame or one more whole frames.
    None beyond EAGER_BLOCK: a file-mode engine, whose long calls a graph would not help."""
    if max_block > EAGER_BLOCK:
        return []
    return sorted({max_block // frame, -(-max_block // frame)} - {0})


def _capture_list(shapes: list[int], capture: list[int] | None) -> list[int]:
    if capture is None:  # told nothing: all, if few
        return list(shapes) if len(shapes) <= GRAPH_MAX_SHAPES else []
    return [c for c in capture if c in shapes]


def _graph_session(model, on_cuda: bool, capture: list[int], graphs):
    """The session to capture CUDA graphs on (`graphs` if given), or None."""
    if not capture:
        return None
    if graphs is None and on_cuda:
        graphs = model.graph_session()
    return graphs


def _run_options(model, graphed: bool, captured: bool, ids: dict, key):
    """RunOptions of one binding: on a graph session every run names its own graph (an id no
    other binding of this model has, recorded in ids[key]) or -1 (not captured)."""
    import onnxruntime as ort

    ro = ort.RunOptions()
    if graphed:
        ids[key] = model.new_graph_id() if captured else -1  # ids 1, 2, ...: 0 is onnxruntime's
        ro.add_run_config_entry("gpu_graph_id", str(ids[key]))
    return ro


def _device_call(session, binding, options, x: np.ndarray, dev_x, dev_y, y: np.ndarray) -> None:
    """x -> device, one run, device -> y. onnxruntime's Python API reads a device value only
    into a new array (`numpy()`): one small allocation per call, copied into y, which callers
    hold on to."""
    dev_x.update_inplace(x)
    session.run_with_iobinding(binding, options)
    y[...] = dev_y.numpy()


def _capture(session, calls: list) -> None:
    """Run each (binding, RunOptions) until onnxruntime has captured its graph."""
    for binding, options in calls:
        for _ in range(3):  # onnxruntime runs a graph id plainly before capturing it
            session.run_with_iobinding(binding, options)


def _capture_failed(e: Exception) -> None:
    from .errors import cause_of

    print(f"unetsep: CUDA graph capture failed ({cause_of(e, 160)}); running without graphs",
          file=sys.stderr)


# Calls prepared up front: every hop count a block of up to this many samples can make ready
# (live blocks); longer file-mode calls prepare theirs on first use.
EAGER_BLOCK = 4096


class StatefulRunner:
    """Calls a version-2 model on x[T] (channels, T*frame, 1), carrying every state per channel.

    States live in two preallocated sets, A and B: the even calls read A and write B, the odd
    calls read B and write A (ping-pong).
    - onnxruntime on CPU: each call is one IOBinding bound once to the host arrays, so nothing
      is allocated or copied per call beyond the model's own work.
    - onnxruntime on CUDA (or `device` given): the sets, x and y live on the device, bound once;
      a call copies x in and y out (one small array per call), the state never leaves the
      device. Where onnxruntime can capture the model as CUDA graphs (OrtModel.graph_session),
      every (hop count in `capture`, parity) gets its own graph, captured here, up front, on
      silence: a graph replays fixed addresses, and capturing inside an audio callback would
      stall it. Other hop counts run uncaptured. `capture` defaults to all of `hops` if they are
      at most GRAPH_MAX_SHAPES; StreamEngine names those its blocks bring (live_shapes). Should
      capture fail, the runner says so on stderr and runs without graphs, from silence.
    - LiteRT (`run_stateful_into`) copies x and the current set into its interpreter's buffers
      and its outputs into y and the other set: no data array is allocated per call (its
      interpreter for this batch is made here, up front), though LiteRT's Python API makes a
      small view object per tensor access.
    - Other backends get the states as arrays; their next values are copied back into the set.
    `graphs` (tests): the session to capture on, instead of the model's own graph_session().
    """

    def __init__(self, model, channels: int, hops: list[int], device: str | None = None, graphs=None,
                 capture: list[int] | None = None):
        info = model.info
        self.model, self.info, self.channels = model, info, channels
        self.sets = [{s.input: np.zeros((channels, *s.shape), np.float32) for s in info.states}
                     for _ in range(2)]
        self.parity = 0
        self.x, self.y, self._bindings = {}, {}, {}
        session = getattr(model, "session", None)
        on_cuda = session is not None and model.provider == "CUDAExecutionProvider"
        self.device = (device or ("cuda" if on_cuda else None)) if session is not None else None
        self._bind = session is not None and (model.provider == "CPUExecutionProvider" or self.device)
        self._session = session
        self.captured: list[int] = []  # the hop counts whose calls replay CUDA graphs
        self.graph_ids: dict[tuple[int, int], int] = {}  # (hops, parity) -> gpu_graph_id, -1 = none
        self._into = getattr(model, "run_stateful_into", None)
        if self._into is not None:
            model.prepare(channels)
        if self.device:
            self._dev_sets = [{k: _on_device(a, self.device) for k, a in states.items()} for states in self.sets]
            self._dev_x, self._dev_y, self._run_options = {}, {}, {}
            capture = _capture_list(hops, capture)
            graphs = _graph_session(model, on_cuda, capture, graphs)
            if graphs is not None:
                self._session, self.captured = graphs, capture
                try:
                    for t in hops:
                        self.prepare(t)
                    _capture(graphs, [(self._bindings[t, parity], self._run_options[t, parity])
                                      for t in capture for parity in (0, 1)])
                    self.reset()  # the capture ran on silence; start from silence
                    return
                except Exception as e:  # onnxruntime's own types: run without graphs instead
                    _capture_failed(e)
                    self._session, self.captured = session, []
                    for d in (self.x, self.y, self._bindings, self._dev_x, self._dev_y,
                              self._run_options, self.graph_ids):
                        d.clear()
                    self.reset()  # the runs before the failure moved the state
        for t in hops:
            self.prepare(t)

    def prepare(self, hops: int) -> None:
        """Allocate (and bind) the arrays of a call of `hops` hops."""
        if hops in self.x:
            return
        info = self.info
        self.x[hops] = np.zeros((self.channels, hops * info.frame, 1), np.float32)
        self.y[hops] = np.zeros((self.channels, hops * info.frame, 1), np.float32)
        if not self._bind:
            return
        import onnxruntime as ort

        if self.device:
            x = self._dev_x[hops] = _on_device(self.x[hops], self.device)
            y = self._dev_y[hops] = _on_device(self.y[hops], self.device)
            sets = self._dev_sets
        else:
            x, y = ort.OrtValue.ortvalue_from_numpy(self.x[hops]), ort.OrtValue.ortvalue_from_numpy(self.y[hops])
            sets = [{k: ort.OrtValue.ortvalue_from_numpy(a) for k, a in st.items()} for st in self.sets]
        for parity in (0, 1):
            src, dst = sets[parity], sets[1 - parity]
            b = self._session.io_binding()
            b.bind_ortvalue_input(info.input_name, x)
            b.bind_ortvalue_output(info.output_name, y)
            for s in info.states:
                b.bind_ortvalue_input(s.input, src[s.input])
                b.bind_ortvalue_output(s.output, dst[s.input])
            self._bindings[hops, parity] = b
            if self.device:  # on the graph session, a hop count not captured runs with id -1
                self._run_options[hops, parity] = _run_options(
                    self.model, bool(self.captured), hops in self.captured, self.graph_ids, (hops, parity))

    def reset(self) -> None:
        """Back to silence before the start: zero state."""
        for states in self.sets:
            for a in states.values():
                a.fill(0.0)
        if self.device:
            for states, host in zip(self._dev_sets, self.sets):
                for k, v in states.items():
                    v.update_inplace(host[k])

    @property
    def state(self) -> dict[str, np.ndarray]:
        """The current state, by input name: (channels, *shape) arrays (views of the host sets,
        or read from the device's memory where it lives there). Set it with load_state."""
        if self.device:
            return {k: v.numpy() for k, v in self._dev_sets[self.parity].items()}
        return self.sets[self.parity]

    def load_state(self, states: dict[str, np.ndarray]) -> None:
        """Start the next call from `states` (by input name, (channels, *shape) each)."""
        for k, a in self.sets[self.parity].items():
            a[...] = states[k]
            if self.device:
                self._dev_sets[self.parity][k].update_inplace(a)

    def __call__(self, hops: int) -> np.ndarray:
        """Run on self.x[hops] (filled by the caller); returns self.y[hops]."""
        binding = self._bindings.get((hops, self.parity))
        if binding is not None and self.device:
            _device_call(self._session, binding, self._run_options[hops, self.parity], self.x[hops],
                         self._dev_x[hops], self._dev_y[hops], self.y[hops])
        elif binding is not None:
            self._session.run_with_iobinding(binding)
        elif self._into is not None:
            self._into(self.x[hops], self.state, self.y[hops], self.sets[1 - self.parity])
        else:
            y, nxt = self.model.run_stateful(self.x[hops], self.state)
            self.y[hops][...] = y
            for name, a in self.sets[1 - self.parity].items():
                a[...] = nxt[name]
        self.parity ^= 1
        return self.y[hops]


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
        if info.streaming:
            eager = min(self.max_frames, -(-EAGER_BLOCK // self.frame) + 1)
            self.runner = StatefulRunner(model, channels, list(range(1, eager + 1)),
                                         capture=live_shapes(max_block, self.frame))
        else:
            self.runner = Runner(model, [channels * k for k in range(1, self.max_frames + 1)],
                                 capture=[channels * k for k in live_shapes(max_block, self.frame)])
        # Input ring: `history` past samples, then up to max_frames frames of pending input.
        cap = self.history + (self.max_frames + 1) * self.frame
        self.inbuf = np.zeros((channels, cap), np.float32)
        self.fill = self.history  # samples in inbuf (history included)
        # Output FIFO, primed with silence: one frame (the wait for a whole frame) plus, for a
        # version-1 model, its lookahead (a version-2 model delays its own output by that).
        self.prime = info.frame if info.streaming else self.latency
        self.outbuf = np.zeros((channels, cap + self.latency + max_block), np.float32)
        self.out_fill = self.prime
        self.max_block = max_block

    def reset(self) -> None:
        """Forget everything heard: buffers and the model's state back to silence."""
        self.inbuf[:] = 0
        self.outbuf[:] = 0
        self.fill, self.out_fill = self.history, self.prime
        if isinstance(self.runner, StatefulRunner):
            self.runner.reset()

    def process(self, block: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
        """block (n, channels) float32 -> (n, channels), n <= max_block; writes into `out` if given."""
        n = block.shape[0]
        if n > self.max_block:
            raise ValueError(f"block of {n} samples exceeds max_block={self.max_block}")
        self.inbuf[:, self.fill:self.fill + n] = block.T
        self.fill += n
        ready = (self.fill - self.history) // self.frame
        if ready:
            used = ready * self.frame
            y = self._run(ready)  # (channels, used): channel-major, like outbuf
            self.outbuf[:, self.out_fill:self.out_fill + used] = y
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

    def _run(self, ready: int) -> np.ndarray:
        """The model on the `ready` whole frames at the front of the ring -> (channels, ready*frame)."""
        if isinstance(self.runner, StatefulRunner):
            # One call, all channels as the batch, the frames in sequence; state carries on.
            self.runner.prepare(ready)  # a no-op for live blocks (prepared up front)
            self.runner.x[ready][:, :, 0] = self.inbuf[:, :ready * self.frame]
            return self.runner(ready)[:, :, 0]
        batch = self.channels * ready
        x = self.runner.x[batch]  # (channels * ready, context, 1), channel-major
        for c in range(self.channels):  # a loop over channels, never over samples
            # frame j sees inbuf[c, j*frame : j*frame + context]
            view = np.lib.stride_tricks.as_strided(
                self.inbuf[c], shape=(ready, self.context), strides=(self.frame * 4, 4))
            x[c * ready:(c + 1) * ready, :, 0] = view
        return self.runner(batch).reshape(self.channels, ready * self.frame)


def frame_call(model, batch: int):
    """A function running one frame of `batch` streams, as the live path does: x (batch, context,
    1) -> (batch, frame, 1). Version 1: one batch of frames; version 2: one hop (T = 1) per
    stream, state carried from call to call. IOBinding where the backend has it (for timing)."""
    if model.info.streaming:
        runner = StatefulRunner(model, batch, [1])

        def run(x: np.ndarray) -> np.ndarray:
            runner.x[1][...] = x
            return runner(1)
        return run
    runner = Runner(model, [batch])

    def run(x: np.ndarray) -> np.ndarray:
        runner.x[batch][...] = x
        return runner(batch)
    return run


def stream_blocks(model, audio: np.ndarray, block: int | None = None) -> np.ndarray:
    """Feed `audio` (samples, channels) through the streaming engine in `block`-sample blocks (one
    frame by default), as the live path does; returns the estimate aligned with the input,
    (samples, channels)."""
    block = block or model.info.frame
    engine = StreamEngine(model, channels=audio.shape[1], max_block=block)
    lat = engine.latency
    padded = np.concatenate([audio, np.zeros((lat + block, audio.shape[1]), np.float32)])
    out = np.empty_like(padded)
    for i in range(0, len(padded) - block + 1, block):
        engine.process(padded[i:i + block], out=out[i:i + block])
    return out[lat:lat + len(audio)]
