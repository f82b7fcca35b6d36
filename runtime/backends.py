"""Inference backends behind one interface: `run(x (B, context, 1) float32) -> (B, frame, 1)` for
version-1 models, `run_stateful(x (B, T*frame, 1), states) -> (stem, next states)` for version 2.

onnxruntime for .onnx (metadata inside the model), LiteRT for .tflite (metadata in the JSON file
beside it, same stem). Both read the model contract from the model and assume nothing else. A
version-2 .tflite takes one hop a call (mix (B, frame, 1)); LiteRTModel runs a call of T hops as
T invokes, the state carried between them, so the engine treats both backends alike.
"""
from __future__ import annotations

import contextlib
import io
import json
import os
import re
import sys
from pathlib import Path

import numpy as np

from .contract import FORMATS, ModelInfo
from .errors import UserError, cause_of
from .quiet import native_stderr_held


def metadata_path(tflite: Path) -> Path:
    """drums.int8.tflite -> drums.int8.json"""
    return tflite.with_suffix(".json")


class OrtModel:
    """An onnxruntime session tuned for a small model: `threads` intra-op threads, no spinning
    between calls when single-threaded (the live path waits on audio), sequential execution."""

    def __init__(self, path: str | Path, provider: str = "cpu", threads: int = 1):
        import onnxruntime as ort

        self.path = Path(path)
        so = ort.SessionOptions()
        so.intra_op_num_threads = threads
        so.inter_op_num_threads = 1
        so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        # Fatal only: errors reach the caller as exceptions (and the user as one line), so
        # onnxruntime's own red log line would say them twice.
        so.log_severity_level = 4
        providers = ["CPUExecutionProvider"]
        if provider == "cuda":
            providers = ["CUDAExecutionProvider", "CPUExecutionProvider"]
        # A CUDA provider that throws while starting (no device visible, seen on an H100; or
        # CUDA_PATH set with CUDA unloadable) makes onnxruntime's Python layer print a multi-line
        # "EP Error" banner on stdout and retry on the CPU: held here, its cause kept for
        # open_model's one line (stdout carries separate's results). Missing libraries without
        # CUDA_PATH give no banner: a CPU session, which open_model reports.
        banner = io.StringIO()
        try:
            with contextlib.redirect_stdout(banner):
                self.session = ort.InferenceSession(str(self.path), so, providers=providers)
        except Exception as e:  # onnxruntime raises its own exception types for bad files
            raise UserError(f"{self.path} is not an ONNX model onnxruntime can load "
                            f"({cause_of(e, 120)}); pass a model written by 'unetsep export'") from None
        self.fallback_cause = fallback_cause(banner.getvalue())
        if banner.getvalue() and self.fallback_cause is None:  # words we do not know: not lost
            sys.stderr.write(banner.getvalue())
        self.provider = self.session.get_providers()[0]
        if self.provider == "CUDAExecutionProvider":
            # Else a CUDA failure inside a run is printed on stdout and retried on the CPU; this
            # way it raises, and probe() turns it into CudaFailed, which open_model handles.
            self.session.disable_fallback()
        meta = self.session.get_modelmeta().custom_metadata_map
        try:
            self.info = ModelInfo.from_metadata(meta)
        except KeyError as e:
            raise UserError(f"{self.path} lacks the unetsep model metadata ({e}); export it with "
                            f"'unetsep export'") from None
        except ValueError as e:
            raise UserError(f"{self.path} has unusable unetsep metadata: {e}; re-export it with "
                            f"'unetsep export'") from None
        check_graph(self.path, self.info, _io_shapes(self.session.get_inputs()),
                    _io_shapes(self.session.get_outputs()))
        self._outputs = [self.info.output_name, *(s.output for s in self.info.states)]
        self._options = so  # for graph_session()
        self._graph_session: object = None  # made on first request (graph_session())
        self._graph_ids = 0

    def new_graph_id(self) -> int:
        """A `gpu_graph_id` no other caller of this model got: every captured graph replays the
        addresses it was captured with, so two runners (or two hop counts) must never share one.
        1, 2, ...: 0 is onnxruntime's own."""
        self._graph_ids += 1
        return self._graph_ids

    def graph_session(self):
        """A second session of the same file on CUDA that may capture CUDA graphs (onnxruntime's
        enable_cuda_graph), for IOBinding runs at fixed device addresses; None where the session
        is not on CUDA or onnxruntime refuses (a model with nodes its CUDA provider leaves on the
        CPU, such as a ConvTranspose with asymmetric pads, which export/lean.py no longer writes;
        the cause is kept in `graph_refused`). Runs on it pick a `gpu_graph_id` run option: one
        id per set of bound addresses (new_graph_id), or -1 for a run not to capture."""
        if self.provider != "CUDAExecutionProvider":
            return None
        if self._graph_session is None:
            import onnxruntime as ort

            so = self._options
            try:
                with contextlib.redirect_stdout(io.StringIO()):  # a refusal is not worth a banner
                    sess = ort.InferenceSession(str(self.path), so, providers=[
                        ("CUDAExecutionProvider", {"enable_cuda_graph": "1"})])
            except Exception as e:  # "cannot use the graph capture feature ...": nodes on the CPU
                self.graph_refused = cause_of(e, 160)
                sess = False
            if sess and sess.get_providers()[0] != "CUDAExecutionProvider":
                sess = False
            if sess:
                sess.disable_fallback()
            self._graph_session = sess
        return self._graph_session or None

    def run(self, x: np.ndarray) -> np.ndarray:
        return self.session.run([self.info.output_name], {self.info.input_name: x})[0]

    def run_stateful(self, x: np.ndarray, states: dict[str, np.ndarray]
                     ) -> tuple[np.ndarray, dict[str, np.ndarray]]:
        """x (B, T*frame, 1) and states by input name -> (stem (B, T*frame, 1), next states by
        input name, ready to feed the next call)."""
        y, *nxt = self.session.run(self._outputs, {self.info.input_name: x, **states})
        return y, {s.input: a for s, a in zip(self.info.states, nxt)}


def fallback_cause(banner: str) -> str | None:
    """The reason in onnxruntime's "EP Error ... Falling back" banner, in one short line (the CUDA
    error it names, where it names one), or None when nothing fell back."""
    m = re.search(r"^EP Error (.+?) when using", banner, re.S | re.M)
    if m is None:
        return None
    cuda = re.search(r"(CUDA failure \d+: [^;]+|CUDNN failure \d+: [^;]+)", m.group(1))
    return cuda.group(1).strip() if cuda else cause_of(RuntimeError(m.group(1)), 160)


def cuda_fallback(model) -> str | None:
    """Why a model loaded for CUDA runs on the CPU (onnxruntime's reason where it gave one), or None
    when it runs on CUDA."""
    if model.provider == "CUDAExecutionProvider":
        return None
    return getattr(model, "fallback_cause", None) or "check the CUDA and cuDNN libraries"


def _io_shapes(args) -> dict[str, list]:
    """{name: shape} of a session's inputs or outputs; symbolic axes are strings or None."""
    return {a.name: list(a.shape) for a in args}


def check_graph(path: Path, info: ModelInfo, inputs: dict[str, list], outputs: dict[str, list]) -> None:
    """Refuse a model whose graph does not take and return what its metadata declares."""
    def refuse(what: str):
        raise UserError(f"{path}: {what}; its metadata does not describe its graph: re-export it "
                        f"with 'unetsep export'")

    def fixed(shape: list, want: list, name: str) -> None:
        if len(shape) != len(want) or any(isinstance(d, int) and w is not None and d != w
                                           for d, w in zip(shape, want)):
            refuse(f"tensor {name!r} has shape {shape}, the contract says {want}")

    declared_in = [info.input_name, *(s.input for s in info.states)]
    declared_out = [info.output_name, *(s.output for s in info.states)]
    for name in declared_in:
        if name not in inputs:
            refuse(f"it has no input {name!r} (inputs: {', '.join(inputs)})")
    for name in declared_out:
        if name not in outputs:
            refuse(f"it has no output {name!r} (outputs: {', '.join(outputs)})")
    extra = [n for n in inputs if n not in declared_in]
    if extra:
        refuse(f"it takes undeclared inputs {', '.join(extra)}")
    if info.streaming:
        fixed(inputs[info.input_name], [None, None, 1], info.input_name)
        fixed(outputs[info.output_name], [None, None, 1], info.output_name)
        for s in info.states:
            fixed(inputs[s.input], [None, *s.shape], s.input)
            fixed(outputs[s.output], [None, *s.shape], s.output)
    else:
        fixed(inputs[info.input_name], [None, info.context, 1], info.input_name)
        fixed(outputs[info.output_name], [None, info.frame, 1], info.output_name)


class LiteRTModel:
    """A LiteRT (TensorFlow Lite) interpreter with XNNPACK.

    Version 1: one interpreter, resized when the batch changes. Version 2 (external state, one
    hop per call: mix (B, frame, 1)): one interpreter per batch size, made and sized on first use
    (`prepare`); a call of T hops runs the flatbuffer T times, the state carried inside the call.
    """

    def __init__(self, path: str | Path, threads: int = 1):
        try:
            from ai_edge_litert.interpreter import Interpreter
        except ModuleNotFoundError:
            raise UserError(f"{path} is a LiteRT model and LiteRT is not installed; install the "
                            f"litert extra (pip install 'unetsep[litert]') or pass a .onnx model") from None

        self.path = Path(path)
        self.threads = threads
        self._make = lambda: Interpreter(model_path=str(self.path), num_threads=threads)
        meta = metadata_path(self.path)
        if not meta.is_file():
            raise UserError(f"{self.path} has no metadata file {meta.name} beside it; export it with "
                            f"'unetsep export'")
        try:
            # Typed JSON values, each parsed by its field's converter (the states are a list).
            meta_dict = json.loads(meta.read_text())
            if not isinstance(meta_dict, dict):
                raise ValueError(f"{meta.name} holds a JSON {type(meta_dict).__name__}, not an object")
            self.info = ModelInfo.from_metadata(meta_dict)
            self.interp = self._make()
            # The first allocation in a process logs "INFO: Created TensorFlow Lite XNNPACK
            # delegate for CPU." to fd 2 (once per process): made here, where it is held.
            with native_stderr_held(replay=False):  # a failure is reported below, once
                self.interp.allocate_tensors()
        except (KeyError, ValueError, RuntimeError) as e:
            raise UserError(f"{self.path} is not a LiteRT model with unetsep metadata ({e}); "
                            f"export it with 'unetsep export'") from None
        self.provider = "LiteRT"
        shape = lambda d: [None if v < 0 else int(v) for v in d["shape_signature"]]  # noqa: E731
        if self.info.streaming:
            self._init_streaming(shape)
            return
        ins, outs = self.interp.get_input_details(), self.interp.get_output_details()
        # Tensor names are the converter's (serving_default_mix:0): check by position.
        check_graph(self.path, self.info, {self.info.input_name: shape(ins[0])},
                    {self.info.output_name: shape(outs[0])})
        self._in = ins[0]["index"]
        self._out = outs[0]["index"]
        self._batch = None

    def _init_streaming(self, shape) -> None:
        """Check a version-2 flatbuffer's signature against the contract by name; note each
        tensor's index."""
        info = self.info
        sigs = self.interp.get_signature_list()
        if len(sigs) != 1:
            raise UserError(f"{self.path} has {len(sigs)} signatures, not one naming the contract's "
                            f"inputs and outputs; re-export it with 'unetsep export'")
        runner = self.interp.get_signature_runner()
        ins, outs = runner.get_input_details(), runner.get_output_details()
        check_graph(self.path, info, {n: shape(d) for n, d in ins.items()},
                    {n: shape(d) for n, d in outs.items()})
        samples = shape(ins[info.input_name])[1]
        if samples != info.frame:
            raise UserError(f"{self.path} takes {samples} samples a call; this unetsep runs streaming "
                            f"LiteRT models of one hop ({info.frame} samples) a call: re-export it")
        self._in = ins[info.input_name]["index"]
        self._out = outs[info.output_name]["index"]
        self._states = [(s.input, ins[s.input]["index"], outs[s.output]["index"]) for s in info.states]
        del runner
        self._interps = {}  # batch -> interpreter sized for it

    def run(self, x: np.ndarray) -> np.ndarray:
        if x.shape[0] != self._batch:
            self.interp.resize_tensor_input(self._in, list(x.shape))
            self.interp.allocate_tensors()
            self._batch = x.shape[0]
        self.interp.set_tensor(self._in, x)
        self.interp.invoke()
        return self.interp.get_tensor(self._out)

    def prepare(self, batch: int):
        """The interpreter of `batch` streams, every input resized to it (made on first use)."""
        it = self._interps.get(batch)
        if it is None:
            it = self.interp if not self._interps else self._make()
            it.resize_tensor_input(self._in, [batch, self.info.frame, 1])
            for s, (_, index, _) in zip(self.info.states, self._states):
                it.resize_tensor_input(index, [batch, *s.shape])
            it.allocate_tensors()
            self._interps[batch] = it
        return it

    def run_stateful_into(self, x: np.ndarray, states: dict[str, np.ndarray], y: np.ndarray,
                          next_states: dict[str, np.ndarray]) -> None:
        """x (B, T*frame, 1) and states by input name -> writes the stem into y (B, T*frame, 1) and
        each state's value after the last hop into next_states (arrays of the states' shapes,
        not `states` themselves). One invoke per hop; the data is copied through the interpreter's
        own buffers (short-lived numpy views of them: no array is allocated for the data, though
        LiteRT's Python API makes a small view object per tensor access)."""
        it, frame = self.prepare(x.shape[0]), self.info.frame
        tensor = it.tensor
        src = states
        if x.shape[1] < frame:  # no hop: the state stays as it was
            for name, a in next_states.items():
                a[...] = states[name]
        for t in range(x.shape[1] // frame):
            tensor(self._in)()[...] = x[:, t * frame:(t + 1) * frame]
            for name, i, _ in self._states:
                tensor(i)()[...] = src[name]
            it.invoke()
            y[:, t * frame:(t + 1) * frame] = tensor(self._out)()
            for name, _, o in self._states:
                next_states[name][...] = tensor(o)()
            src = next_states

    def run_stateful(self, x: np.ndarray, states: dict[str, np.ndarray]
                     ) -> tuple[np.ndarray, dict[str, np.ndarray]]:
        """x (B, T*frame, 1) and states by input name -> (stem (B, T*frame, 1), next states by
        input name), as OrtModel.run_stateful (allocates its results)."""
        y = np.empty_like(x)
        nxt = {s.input: np.empty((x.shape[0], *s.shape), np.float32) for s in self.info.states}
        self.run_stateful_into(x, states, y, nxt)
        return y, nxt


def load_model(path: str | Path, provider: str = "cpu", threads: int = 1):
    """OrtModel or LiteRTModel by file extension (`path` may name a shipped model); a clear error
    for anything else."""
    path = resolve_model(path)
    if path.is_dir():
        inside = sorted((p.name for p in path.iterdir() if p.suffix in (".onnx", ".tflite")),
                        key=lambda n: (n.count("."), n))  # drums.onnx before drums.int8.onnx
        hint = f"pass a model file in it, e.g. {path / inside[0]}" if inside else "pass a .onnx or .tflite file"
        raise UserError(f"--model {path} is a folder; {hint}")
    if path.exists() and not path.is_file():
        raise UserError(f"--model {path} is not a regular file; pass a .onnx or .tflite file")
    if not path.is_file():
        raise UserError(f"model {path} not found; pass --model PATH to a .onnx or .tflite file")
    if path.suffix == ".onnx":
        return probe(OrtModel(path, provider=provider, threads=threads))
    if path.suffix == ".tflite":
        return probe(LiteRTModel(path, threads=threads))
    raise UserError(f"{path} is not a .onnx or .tflite model; pass one written by 'unetsep export'")


class CudaFailed(UserError):
    """onnxruntime's CUDA provider loaded but could not run the model: its driver, memory or GPU,
    or the model (open_model loads it on the CPU to tell which)."""

    def __init__(self, path: Path, cause: str):
        self.cause = cause
        super().__init__(f"onnxruntime's CUDA provider failed on {path} ({cause}); use --provider cpu")


def probe(model):
    """One call on a frame of silence, batch 1, before any command uses the model: metadata its
    graph cannot take (a frame it was not built for) fails here in one line, not later inside an
    audio callback or after minutes of work. Returns the model."""
    info = model.info
    for batch in (1, 2):  # mono and stereo, the batches every command uses
        try:
            if info.streaming:
                states = {s.input: np.zeros((batch, *s.shape), np.float32) for s in info.states}
                y, _ = model.run_stateful(np.zeros((batch, info.frame, 1), np.float32), states)
            else:
                y = model.run(np.zeros((batch, info.context, 1), np.float32))
        except Exception as e:  # onnxruntime and LiteRT raise their own types
            if model.provider == "CUDAExecutionProvider":  # open_model tells the GPU's fault from the file's
                raise CudaFailed(model.path, cause_of(e)) from None
            raise UserError(f"{model.path} does not run on {batch} stream(s) of one frame as its metadata "
                            f"describes it (frame {info.frame}, context {info.context}: {cause_of(e)}); "
                            f"re-export it with 'unetsep export'") from None
        if np.shape(y) != (batch, info.frame, 1):
            raise UserError(f"{model.path} returns {np.shape(y)} for one frame of {batch} stream(s), not "
                            f"({batch}, {info.frame}, 1) as its metadata says; re-export it with 'unetsep export'")
    session = getattr(model, "session", None)
    if session is not None:  # onnxruntime may have fallen back from CUDA to the CPU on those runs
        model.provider = session.get_providers()[0]
    return model


def litert_available() -> bool:
    """Whether LiteRT (the litert extra) is installed, without importing it."""
    from importlib.util import find_spec

    return find_spec("ai_edge_litert") is not None


def cuda_available() -> bool:
    import onnxruntime as ort

    return "CUDAExecutionProvider" in ort.get_available_providers() and not os.environ.get("UNETSEP_NO_CUDA")


DEFAULT_MODEL = "default"


def shipped_models() -> list[str]:
    """Names of the models shipped as package data (folders of `unetsep.models`), sorted."""
    from importlib.resources import files

    root = files("unetsep.models")
    return sorted(p.name for p in root.iterdir() if p.is_dir() and not p.name.startswith(("_", ".")))


def shipped_model(name: str = DEFAULT_MODEL) -> Path:
    """The float32 ONNX file of the shipped model `name` (`unetsep.models/<name>/<target>.onnx`),
    found with importlib.resources: from the repository and from an installed wheel alike."""
    from importlib.resources import as_file, files

    folder = files("unetsep.models") / name
    onnx = sorted(p.name for p in folder.iterdir() if p.name.endswith(".onnx") and ".int8." not in p.name) \
        if folder.is_dir() else []
    if not onnx:
        have = ", ".join(shipped_models()) or "none"
        raise UserError(f"no shipped model named {name!r} (shipped: {have}); pass --model NAME or a "
                        f"path to a .onnx or .tflite file from 'unetsep export'")
    # A wheel installs as plain files, so as_file hands back the real path (no temporary copy).
    with as_file(folder / onnx[0]) as path:
        return Path(path)


def _model_arg(model: str | Path | None) -> str | Path:
    """--model as the user chose it: given, else $UNETSEP_MODEL (a name or a path; a value that
    names nothing is refused naming the variable), else `default`."""
    if model:
        return model
    name = os.environ.get("UNETSEP_MODEL")
    if not name:
        return DEFAULT_MODEL
    if names_a_file(name) and not Path(name).exists():
        raise UserError(f"UNETSEP_MODEL={name}: no such file; set it to a .onnx or .tflite file "
                        f"or a shipped model's name ({', '.join(shipped_models())}), or unset it")
    if not names_a_file(name) and name not in shipped_models():
        raise UserError(f"UNETSEP_MODEL={name}: no shipped model of that name (shipped: "
                        f"{', '.join(shipped_models())}); set it to one or to a model file, or unset it")
    return name


def names_a_file(model: str | Path) -> bool:
    """Whether --model (or $UNETSEP_MODEL) is a path rather than a shipped model's name. A shipped
    name wins over a file of that name in the current folder (`./default` names the file)."""
    if isinstance(model, Path):  # resolved already (Path("./seed") prints as "seed")
        return True
    if model in shipped_models():
        return False
    path = Path(model)
    return ("/" in model or os.sep in model or path.suffix in (".onnx", ".tflite") or path.is_file()
            or path.is_dir())


def default_model_path() -> Path:
    """$UNETSEP_MODEL (a name or a path), else the shipped model `default`."""
    return resolve_model(None)


def resolve_model(model: str | Path | None) -> Path:
    """--model as given: an existing file, a shipped model's name (`default`, `seed`), or None
    for the default. A path that names no file is reported by load_model."""
    name = _model_arg(model)
    return Path(name) if names_a_file(name) else shipped_model(str(name))


def passed_check(model_file: Path) -> bool:
    """Whether the export report beside `model_file` says it passed its check against Keras."""
    report = model_file.parent / "report.json"
    try:
        rows = json.loads(report.read_text())["formats"]
    except (OSError, ValueError, KeyError):
        return False
    return any(r.get("file") == model_file.name and r.get("written") and not r.get("reason") for r in rows)


def live_model_path(model: str | Path | None, fmt: str = "auto", provider: str = "cpu") -> Path:
    """The file `live` runs for --model and --format. A file given by path (or $UNETSEP_MODEL
    naming one) runs as given. For a shipped model (by name, or the default), --format picks one
    of its files; `auto` takes the full-integer LiteRT file on the CPU when LiteRT is installed
    and export's report says it passed its check (its callback costs less than half the float
    ONNX model's), else the float32 ONNX."""
    if fmt != "auto" and fmt not in FORMATS:
        raise UserError(f"unknown --format {fmt!r}: choose auto or one of {', '.join(FORMATS)}")
    name = _model_arg(model)
    if names_a_file(name):
        if fmt != "auto":
            given = f"--model {name}" if model else f"UNETSEP_MODEL={name}"
            raise UserError(f"--format picks among a shipped model's files and {given} is a path: "
                            f"drop --format or name a shipped model")
        return Path(name)
    onnx = shipped_model(str(name))
    if fmt == "auto":
        fast = onnx.with_name(f"{onnx.stem}.int8.tflite")
        on_cpu = provider == "cpu" or (provider == "auto" and not cuda_available())
        use_litert = on_cpu and litert_available() and fast.is_file() and passed_check(fast)
        return fast if use_litert else onnx
    if fmt.endswith("tflite") and provider == "cuda":
        raise UserError(f"--provider cuda runs .onnx files only; use --format onnx or --provider cpu")
    path = onnx.with_name(f"{onnx.stem}.{fmt}")
    if not path.is_file():
        have = sorted(f for f in FORMATS if onnx.with_name(f"{onnx.stem}.{f}").is_file())
        raise UserError(f"shipped model {name!r} has no {fmt} file (it has: {', '.join(have)}); "
                        f"choose one of those with --format")
    return path


def open_model(path: str | Path | None, provider: str = "auto", threads: int = 1, say=print):
    """load_model with the CLI's provider rule: auto takes CUDA when it loads, else the CPU (saying
    so only when an installed CUDA provider failed to load)."""
    path = resolve_model(path)
    if provider not in ("auto", "cpu", "cuda"):
        raise UserError(f"unknown --provider {provider!r}: choose auto, cpu or cuda")
    if path.suffix == ".tflite" or provider == "cpu":
        return load_model(path, "cpu", threads)
    if provider == "cuda" and not cuda_available():
        raise UserError("--provider cuda: onnxruntime's CUDA provider is not available; install the "
                        "gpu extra (onnxruntime-gpu) or use --provider cpu")
    if cuda_available():
        try:
            model = load_model(path, "cuda", threads)
        except CudaFailed as e:
            cpu = load_model(path, "cpu", threads)  # a fault of the model's own is raised here
            if provider == "cuda":
                raise
            say(f"unetsep: onnxruntime's CUDA provider failed on this model ({e.cause}); running on the CPU")
            return cpu
        why = cuda_fallback(model)
        if why is None:
            return model
        if provider == "cuda":
            raise UserError(f"--provider cuda: onnxruntime ran the model on the CPU (its CUDA provider did "
                            f"not start: {why}); use --provider cpu or auto")
        say(f"unetsep: the CUDA provider did not start ({why}); running on the CPU")
        return model
    # auto without a CUDA build of onnxruntime: the CPU, silently (the usual install, as demucs
    # says nothing when it has no GPU); only a CUDA provider that fails to load is worth a line.
    return load_model(path, "cpu", threads)
