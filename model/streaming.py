"""Live causal rebalancing: feed chunks of any size, get the processed signal back.

:class:`Streamer` buffers input into the causal model's blocks (``config.block`` samples, 128 =
2.9 ms at 44.1 kHz), runs the network with carried state, then the listener's hearing aid with
carried state. The concatenated output equals the offline causal model on the whole signal
(to float rounding). Algorithmic latency: ``config.lookahead`` samples (219 = 5.0 ms for the
shipped model: the block, the filterbank's synthesis overlap and its reach). A model whose gains
lag all but one frame of a block (``gain_lag``) streams frame by frame (``config.step``, the
filterbank hop) while its network waits for whole blocks, so its latency is its look-ahead too;
the caller's hop adds its own wait.

With a :class:`CompiledStep` the network's settled blocks run through code compiled ahead of
time (``torch.export`` + AOTInductor, one shared library per step count and phase): about 3x
faster than eager per hop when tuned (its matrix products on weights packed once), whose time
is mostly the launch cost of a few hundred small operations and the repacking of weights for
products of one or two frames. Compiling takes 30 s to 2 min per library and needs a C++
compiler, so a server builds the step once at start (:meth:`CompiledStep.build`, cached on disk
by model, torch version, CPU and tuning). A
stream's first blocks run eagerly while its state grows (the attention's key cache fills over
``config.window`` blocks), then every block runs compiled; the output is the same either way (to
float rounding). A compiled call holds no GIL (:class:`StepLibrary`), so concurrent streams
compute in parallel; an eager block, a few hundred operations that each take the GIL again, is
what suffers when threads compete for it.
"""

from __future__ import annotations

import copy
import ctypes
import hashlib
import json
import os
import platform
import tempfile
import zipfile
from pathlib import Path

import numpy as np
import torch
from torch import Tensor, nn
from torch.utils._pytree import tree_flatten, tree_map, tree_unflatten, treespec_loads

from model.apply import Request
from model.tutti import Listener, TuttiModel

LIVE_HOP = 220
"""The live hop compiled steps are sized for: 5 ms at 44.1 kHz."""


def step_units(model: TuttiModel) -> range:
    """Lengths compiled, in the model's steps (``config.step``: a block, or a hop for a model
    that streams frame by frame): every count a :data:`LIVE_HOP` completes, so each hop is one
    call (1-2 blocks of 128 samples; 1-4 frames of 64); longer input runs as several calls."""
    step = model.config.step
    return range(1, (LIVE_HOP + step - 1) // step + 1)


_FORMAT = "tutti-stream-step-7"
"""Changes when what a compiled step computes changes (part of its cache key)."""


def phases(model: TuttiModel) -> int:
    """Steps per block: a stream's phase (its steps since the last whole block, which the
    network still waits for) selects a compiled step's layout of state; 1 for a block-wise
    model."""
    return model.config.block // model.config.step


def settled_state(model: TuttiModel, request: Request, phase: int = 0) -> dict:
    """The state of a stream of ``model`` once its shapes stop changing (its ``window`` blocks
    of silence in, then ``phase`` steps), slot request padded to every slot, without the
    ``skip`` count (0 by then): what a :class:`CompiledStep` takes and returns."""
    gains, presence, listener = request.tensors()
    listener = Listener(listener.audiogram, listener.ratio, listener.makeup_db)
    state = model.stream_state(gains, presence, len(model.config.slots))
    block = torch.zeros(1, 2, model.config.block)
    with torch.no_grad():
        for _ in range(model.config.window + 1):
            _, state = model.remix_aligned(block, gains, presence, listener, state)
        for _ in range(phase):
            _, state = model.remix_aligned(block[..., : model.config.step], gains, presence,
                                           listener, state)
    if state.pop("skip") != 0:
        raise RuntimeError("the stream's output delay did not drain")
    return _contiguous(state)


class _BlockStep(nn.Module):
    """:meth:`TuttiModel.remix` of a settled stream as a module of tensors only (for export)."""

    def __init__(self, model: TuttiModel) -> None:
        super().__init__()
        self.model = model

    def forward(self, mixture: Tensor, gains_db: Tensor, presence: Tensor,
                state: dict) -> tuple[Tensor, dict]:
        out, state = self.model.remix(mixture, gains_db, presence, None, state)  # type: ignore
        # The next call takes this state as laid out at export: contiguous, copied in the graph
        # (a copy per tensor from Python would cost a call and a GIL hand-over each).
        return out, _contiguous(state)


_capsule_pointer = ctypes.pythonapi.PyCapsule_GetPointer
_capsule_pointer.restype, _capsule_pointer.argtypes = ctypes.c_void_p, [ctypes.py_object,
                                                                        ctypes.c_char_p]
_capsule_new = ctypes.pythonapi.PyCapsule_New
_capsule_new.restype, _capsule_new.argtypes = ctypes.py_object, [ctypes.c_void_p,
                                                                 ctypes.c_char_p, ctypes.c_void_p]


def _capsule(pointer: int | None) -> object:
    """A nameless capsule of ``pointer`` (how torch's AOTI bindings pass tensor handles)."""
    return _capsule_new(pointer, None, None)


class StepLibrary:
    """One compiled step: an AOTInductor shared library called through its C interface.

    ``ctypes`` releases the GIL for the call, so other Python threads (the server's event
    loop, other live sessions) run meanwhile; torch's own loader holds the GIL for the whole
    call. ``concurrency``: calls that may run at once (model instances in the library's
    container; more callers wait for one). The graph must need no operator outside the AOTI C
    shim (no proxy executor is passed).
    """

    def __init__(self, path: str | Path, concurrency: int = 2) -> None:
        self._lib = lib = ctypes.CDLL(str(path))
        self._handle = ctypes.c_void_p()
        self._check(lib.AOTInductorModelContainerCreateWithDevice(
            ctypes.byref(self._handle), ctypes.c_size_t(concurrency), b"cpu", None), "load")
        counts = ctypes.c_size_t(), ctypes.c_size_t()
        self._check(lib.AOTInductorModelContainerGetNumInputs(self._handle,
                                                              ctypes.byref(counts[0])), "inputs")
        self._check(lib.AOTInductorModelContainerGetNumOutputs(self._handle,
                                                               ctypes.byref(counts[1])), "outputs")
        self.num_inputs, self.num_outputs = counts[0].value, counts[1].value
        specs = ctypes.c_char_p(), ctypes.c_char_p()  # input and output tree structures
        self._check(lib.AOTInductorModelContainerGetCallSpec(
            self._handle, ctypes.byref(specs[0]), ctypes.byref(specs[1])), "call spec")
        self.in_spec = treespec_loads((specs[0].value or b"").decode())
        self.out_spec = treespec_loads((specs[1].value or b"").decode())

    def _check(self, code: int, what: str) -> None:
        if code != 0:
            message = ctypes.c_char_p()
            self._lib.AOTInductorGetLastError(ctypes.byref(message))
            raise RuntimeError(f"compiled step ({what}) failed: "
                               f"{(message.value or b'').decode(errors='replace')}")

    def __call__(self, *args: object) -> object:
        """The step on ``args`` (the exported module's inputs), outputs as exported."""
        leaves = [x for x in tree_flatten((args, {}))[0] if isinstance(x, Tensor)]
        return tree_unflatten(self.run(leaves), self.out_spec)

    def run(self, leaves: list[Tensor]) -> list[Tensor]:
        """The step on its input tensors in flattening order; its output tensors, likewise."""
        if len(leaves) != self.num_inputs:
            raise ValueError(f"compiled step takes {self.num_inputs} tensors, got {len(leaves)}")
        # New tensor handles (capsules of at::Tensor pointers), stolen by the call.
        handles = torch._C._aoti.unsafe_alloc_void_ptrs_from_tensors(leaves)
        inputs = (ctypes.c_void_p * len(leaves))(*(_capsule_pointer(h, None) for h in handles))
        outputs = (ctypes.c_void_p * self.num_outputs)()
        self._check(self._lib.AOTInductorModelContainerRun(
            self._handle, inputs, ctypes.c_size_t(len(leaves)), outputs,
            ctypes.c_size_t(self.num_outputs), None, None), "run")
        return torch._C._aoti.alloc_tensors_by_stealing_from_void_ptrs(
            [_capsule(p) for p in outputs])

    def __del__(self) -> None:
        lib, handle = getattr(self, "_lib", None), getattr(self, "_handle", None)
        if lib is not None and handle:
            lib.AOTInductorModelContainerDelete(handle)


class CompiledStep:
    """The causal network's step ``(mixture (1, 2, n * step), gains (1, S), presence (1, S),
    state) -> (remix (1, 2, n * step), state)`` for a settled stream (:func:`settled_state`),
    compiled ahead of time for each ``n`` in :func:`step_units` and each phase of the stream
    (:func:`phases`; the state's layout differs by phase) (a :class:`StepLibrary` each).
    Weights and config are baked in: build it again after changing either (the cache key covers
    both)."""

    def __init__(self, runners: dict[tuple[int, int], StepLibrary], step: int) -> None:
        layout = next(iter(runners.values())).in_spec.child(0).child(3)
        for (n, phase), runner in runners.items():  # what lets a stream keep its state flat
            if layout != runner.in_spec.child(0).child(3) or layout != runner.out_spec.child(1):
                raise RuntimeError(f"the compiled {n}-step step (phase {phase}) takes or "
                                   "returns its state in another layout than the others")
        self.runners = runners
        self.block = step  # the samples a step counts in: config.step
        self.max_blocks = max(n for n, _ in runners)

    @classmethod
    def build(cls, model: TuttiModel, cache_dir: str | Path | None = None,
              concurrency: int = 2, tuned: bool = True) -> CompiledStep:
        """Export and compile ``model``'s step (raises what the compiler raises, e.g. with no
        C++ compiler), or load it from ``cache_dir`` (``{key}-{n}.so``, written atomically;
        None: a temporary folder). ``concurrency``: :class:`StepLibrary`'s. ``tuned``: the
        matrix products as Inductor's C++ GEMM kernels on weights packed at build time, each
        timed against ATen's (:data:`TUNED`): about 1.4x faster per hop, about 4x longer to
        build (about 2 min per block count for the shipped causal model on a 2-core VM,
        against 30 s); False: ATen's products, which repack the weights at every call."""
        if not model.config.causal:
            raise ValueError("a compiled stream step needs a causal model")
        device = next(model.parameters()).device
        if device.type != "cpu":
            raise ValueError(f"compiled stream steps are built for the CPU, not {device}")
        # Tracing swaps a module's weights for placeholders: trace a copy, so that streams
        # may run on ``model`` meanwhile (a server builds the step in the background).
        model = copy.deepcopy(model)
        request = Request.normal_hearing({}, present=[model.config.slots[0]])
        gains, presence, _ = request.tensors()
        folder = Path(cache_dir) if cache_dir is not None else Path(
            tempfile.mkdtemp(prefix="tutti-step-"))
        key = _cache_key(model, tuned)
        runners = {}
        for phase in range(phases(model)):
            state = settled_state(model, request, phase)
            for units in step_units(model):
                path = folder / f"{key}-{units}-{phase}.so"
                if not path.exists():
                    _build_step(model, units, gains, presence, state, path, tuned)
                runners[units, phase] = StepLibrary(path, concurrency)
        return cls(runners, model.config.step)

    def __call__(self, mixture: Tensor, gains_db: Tensor, presence: Tensor,
                 state: dict, phase: int = 0) -> tuple[Tensor, dict]:
        return self._runner(mixture, phase)(mixture, gains_db, presence, state)  # type: ignore

    def flat(self, mixture: Tensor, gains_db: Tensor, presence: Tensor,
             state: list[Tensor], phase: int = 0) -> tuple[Tensor, list[Tensor]]:
        """:meth:`__call__` with the state as its tensors in flattening order (:func:`flat_state`),
        the new state likewise: a stream keeps it so, skipping the nested structure's
        flattening and rebuilding at every call."""
        out = self._runner(mixture, phase).run([mixture, gains_db, presence, *state])
        return out[0], out[1:]

    def _runner(self, mixture: Tensor, phase: int) -> StepLibrary:
        runner = self.runners.get((mixture.shape[-1] // self.block, phase))
        if runner is None or mixture.shape[-1] % self.block:
            raise ValueError(f"a compiled step takes {sorted({n for n, _ in self.runners})} "
                             f"steps of {self.block} samples at phases "
                             f"{sorted({p for _, p in self.runners})}, got "
                             f"{mixture.shape[-1]} samples at phase {phase}")
        return runner


def _build_step(model: TuttiModel, units: int, gains: Tensor, presence: Tensor, state: dict,
                path: Path, tuned: bool) -> None:
    """Export ``units`` steps of ``model``'s stream from ``state`` and compile them to
    ``path``."""
    mixture = torch.zeros(1, 2, units * model.config.step)
    with torch.no_grad():
        # One eager step of this size first: the model's memos of constant matrices then hold
        # this size's, and the graph reads them as constants.
        _BlockStep(model)(mixture, gains, presence, tree_map(
            lambda t: t.clone() if isinstance(t, Tensor) else t, state))
        program = torch.export.export(_BlockStep(model).eval(), (mixture, gains, presence, state),
                                      strict=False)
    if not tuned:
        _compile(program, path, {})
        return
    try:
        _compile(program, path, TUNED)
    except torch._inductor.exc.InductorError:
        # Inductor's C++ GEMM template fails to fuse some products' pointwise epilogues (torch
        # 2.13: a lagged model's 2-step, phase-1 step); those build with the epilogues apart.
        _compile(program, path, {**TUNED, "epilogue_fusion": False})


TUNED = {"freezing": True, "max_autotune": True, "max_autotune_gemm_backends": "CPP,ATEN",
         "benchmark_epilogue_fusion": False,
         "inductor_default_autotune_rep": 10, "inductor_default_autotune_warmup": 3}
"""Inductor settings of a tuned step: weights frozen into the graph, so that each matrix
product may run as Inductor's C++ GEMM template on weights packed once at build time (ATen's
products pack them again at every call, most of their time at a stream's one or two frames);
each product's kernel is chosen by timing the candidates (briefly: 10 ms each)."""


def _compile(program: torch.export.ExportedProgram, path: Path,
             configs: dict[str, object]) -> None:
    """Compile ``program`` with AOTInductor (``configs``: Inductor settings); its shared library
    to ``path`` (atomically)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="tutti-step-") as tmp:
        package = torch._inductor.aoti_compile_and_package(
            program, package_path=str(Path(tmp) / "step.pt2"), inductor_configs=configs)
        with zipfile.ZipFile(package) as archive:
            names = [n for n in archive.namelist() if n.endswith(".so")]
            if len(names) != 1:
                raise RuntimeError(f"compiled package holds {len(names)} shared libraries")
            partial = path.with_name(f".{path.name}.{os.getpid()}.partial")
            with archive.open(names[0]) as src, open(partial, "wb") as dst:
                dst.write(src.read())
    os.replace(partial, path)


def _cache_key(model: TuttiModel, tuned: bool) -> str:
    """Digest of what a compiled step bakes in: weights, config, torch version, format, the
    CPU it is compiled for (``-march=native``), torch's thread count (its loops' team) and
    whether it is tuned."""
    digest = hashlib.sha256(f"{_FORMAT} {tuned} {torch.__version__} {platform.machine()} "
                            f"{torch.backends.cpu.get_cpu_capability()} {_cpu_flags()} "
                            f"{torch.get_num_threads()}".encode())
    config = {k: v for k, v in model.config.to_dict().items() if k != "_name_or_path"}
    digest.update(json.dumps(config, sort_keys=True, default=str).encode())
    for name, tensor in sorted(model.state_dict().items()):
        digest.update(name.encode())
        digest.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()[:24]


def _cpu_flags() -> str:
    """The CPU's feature flags (Linux; empty elsewhere)."""
    try:
        with open("/proc/cpuinfo") as f:
            return next((line for line in f if line.startswith("flags")), "")
    except OSError:
        return ""


def _contiguous(state: object) -> object:
    """A state with every tensor contiguous (the layout a compiled step was built for)."""
    return tree_map(lambda t: t.contiguous() if isinstance(t, Tensor) else t, state)


def flat_state(state: dict) -> list[Tensor]:
    """A settled state's tensors in flattening order (what :meth:`CompiledStep.flat` takes)."""
    leaves = tree_flatten(state)[0]
    if not all(isinstance(t, Tensor) for t in leaves):
        raise ValueError("a compiled step's state holds tensors only")
    return leaves


def _shapes(state: object) -> object:
    """Nested tensor shapes of a state (other leaves, e.g. the ``skip`` count: None)."""
    return tree_map(lambda t: tuple(t.shape) if isinstance(t, Tensor) else None, state)


class Streamer:
    """One live session. ``process(chunk (2, n) float32) -> (2, m) float32`` at 44.1 kHz.

    ``step``: the model's :class:`CompiledStep`, for settled blocks (see the module's notes).
    The network runs on the model's device (chunks in and remix out cross to it and back); the
    hearing aid, whose smoother is a sample loop, runs on the CPU.
    """

    def __init__(self, model: TuttiModel, request: Request,
                 step: CompiledStep | None = None) -> None:
        if not model.config.causal:
            raise ValueError("streaming needs a causal model (config.causal = true)")
        self.model = model
        self.block = model.config.step  # remix's unit: a block, or a hop (see TuttiConfig.step)
        self.request = request
        self.device = next(model.parameters()).device
        gains, presence, listener = request.tensors()
        self.gains, self.presence = gains.to(self.device), presence.to(self.device)
        self.listener = Listener(*(t.to(self.device) for t in (
            listener.audiogram, listener.ratio, listener.makeup_db)))
        self.step = step
        self.compiled_blocks = 0
        self._settled = False
        self._phases = phases(model)
        self._steps = 0  # steps run so far: the stream's phase is this modulo _phases
        self._phase_shapes: dict[int, object] = {}  # each phase's last state shapes
        self._pending = np.zeros((2, 0), dtype=np.float32)
        self._state: dict | None = None
        self._flat: list[Tensor] | None = None  # the state, once compiled calls carry it
        # The compiled step takes the slot request padded to every slot (one shape for every
        # request); eager calls keep the stream's own, which costs less the fewer slots it has.
        self._slot_requests: tuple | None = None
        if step is not None and model.config.slot_gains:
            self._slot_requests = (
                model.slot_request(self.gains, self.presence),
                model.slot_request(self.gains, self.presence, len(model.config.slots)))
        self._ha_state = None
        self._fed = 0
        self._emitted = 0

    @property
    def latency(self) -> int:
        """Worst-case algorithmic latency (samples) between an input sample and its output: the
        rest of its step (:attr:`~model.tutti.TuttiConfig.step`) plus the output's delay; the
        model's look-ahead, unless its gains lag by less than a block."""
        return self.block - 1 + self.model.config.delay

    @property
    def buffered(self) -> int:
        """Input samples waiting for their block to complete."""
        return self._pending.shape[1]

    def process(self, chunk: np.ndarray) -> np.ndarray:
        """Add ``chunk (2, n)``; return every output sample that is now available ``(2, m)``."""
        chunk = np.asarray(chunk, dtype=np.float32)
        if chunk.ndim != 2 or chunk.shape[0] != 2:
            raise ValueError(f"chunk must be (2, samples), got shape {chunk.shape}")
        self._pending = np.concatenate([self._pending, chunk], axis=1)
        self._fed += chunk.shape[1]
        ready = self._pending.shape[1] // self.block * self.block
        if ready == 0:
            return np.zeros((2, 0), dtype=np.float32)
        x, self._pending = self._pending[:, :ready], self._pending[:, ready:]
        return self._run(x)

    def flush(self) -> np.ndarray:
        """End of input: zero-pad to whole blocks until every input sample has its output."""
        missing = self._fed - self._emitted
        if missing <= 0:
            return np.zeros((2, 0), dtype=np.float32)
        n = self._pending.shape[1]
        # The remix lags by ``delay``: run that much (zero) input past the end.
        padded = -(-(n + self.model.config.delay) // self.block) * self.block
        x = np.pad(self._pending, ((0, 0), (0, padded - n)))
        self._pending = np.zeros((2, 0), dtype=np.float32)
        return self._run(x)[:, :missing]

    @torch.no_grad()
    def _run(self, x: np.ndarray) -> np.ndarray:
        if self._settled:
            mixed = self._run_compiled(x)
        else:
            mixed, state = self.model.remix_aligned(
                torch.from_numpy(x)[None].to(self.device), self.gains, self.presence,
                self.listener,
                self._with_slots(0))
            # Settled: the state's shapes no longer change (at its phase) and the output delay
            # has drained.
            self._steps += x.shape[1] // self.block
            phase, shapes = self._steps % self._phases, _shapes(state)
            self._settled = (self.step is not None and state["skip"] == 0
                             and self._phase_shapes.get(phase) == shapes)
            self._phase_shapes[phase] = shapes
            if self._settled:  # from here on the state is the compiled step's (contiguous)
                del state["skip"]
                state = _contiguous(state)
            self._state = state
        mixed = mixed[0].double().cpu().numpy()
        y, self._ha_state = self.model.hearing_aid.stream(
            mixed, self.request.ratio, self.request.makeup_db, self._ha_state)
        self._emitted += y.shape[1]
        return y.astype(np.float32)

    def _with_slots(self, padded: int) -> dict | None:
        """The state with the stream's own (0) or the padded (1) slot request."""
        if self._state is None or self._slot_requests is None:
            return self._state
        return {**self._state, "slot_request": self._slot_requests[padded]}

    def _run_compiled(self, x: np.ndarray) -> Tensor:
        """``x (2, n steps)`` through the compiled step, up to ``step.max_blocks`` steps per
        call; its remix ``(1, 2, n steps)``."""
        assert self.step is not None
        if self._flat is None:  # the first compiled call: from here on the state stays flat
            self._flat = flat_state(self._with_slots(1))  # type: ignore[arg-type]
            self._state = None
        parts = []
        size = self.block * self.step.max_blocks
        for start in range(0, x.shape[1], size):
            piece = torch.from_numpy(np.ascontiguousarray(x[:, start : start + size]))[None]
            out, self._flat = self.step.flat(piece, self.gains, self.presence, self._flat,
                                             self._steps % self._phases)
            self._steps += piece.shape[-1] // self.block
            self.compiled_blocks += piece.shape[-1] // self.block
            parts.append(out)
        return parts[0] if len(parts) == 1 else torch.cat(parts, dim=-1)
