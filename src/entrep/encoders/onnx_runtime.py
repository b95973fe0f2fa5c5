"""ONNX Runtime for image encoders on CPU: export the torch forward once, cache the graph, run it.

:meth:`entrep.encoders.ImageEncoder.use_runtime` is the entry point; this module
does the work:

- :func:`export_forward` exports the encoder's ``forward`` (preprocessed
  ``(B, 3, H, W)`` float32 batch -> ``(B, dim)`` unnormalised vectors) with a
  dynamic batch axis. The TorchScript exporter (``dynamo=False``) is tried
  first: on this code it gives the same graph speed as the dynamo exporter and
  exports EfficientNet-Lite0 in ~1 s instead of ~7 s; the dynamo exporter is
  the second try.
- :func:`graph_path` names the cached file by the encoder's fingerprint (plus
  the exporter's version), so a different encoder configuration, weights or
  adapter never reuses another's graph.
- :func:`check_equal` runs a fresh graph against torch on a seeded probe batch
  of another batch size than the export one (which also checks the dynamic
  axis); a graph whose normalised outputs differ by more than ``TOLERANCE`` is
  not used.
- :class:`OnnxForward` is the ``InferenceSession`` (every graph optimisation)
  that stands in for ``forward``. It runs batches data-parallel by default: the
  session has one intra-op thread and ``workers`` (= torch's thread count) runs
  go at once, each on its own thread, on separate batches (the decode pool's
  workers, :meth:`entrep.encoders.pipeline.ImagePipeline.iter_encode`) or on
  slices of one batch (:meth:`OnnxForward.run`). ``parallel="intra-op"`` is the
  other way, one run at a time over ``workers`` intra-op threads.

Any failure is an :class:`OnnxUnavailable` carrying the reason in one line; the
caller decides between falling back to torch and a UserError.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import logging
import os
import re
import threading
import warnings
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

log = logging.getLogger(__name__)

#: bump when the export recipe changes (names a new cache file)
EXPORT_VERSION = 1
OPSET = 18
#: max abs difference allowed between ONNX Runtime and torch on L2-normalised vectors
TOLERANCE = 1e-4
PROBE_EXPORT_BATCH = 2
PROBE_CHECK_BATCH = 3
#: how a session uses its threads: "batches" (one intra-op thread, ``workers`` runs at once on separate
#: batches or slices of a batch) or "intra-op" (one run at a time over ``workers`` intra-op threads)
PARALLEL_MODES = ("batches", "intra-op")
DEFAULT_PARALLEL = "batches"
#: images per session run of a data-parallel worker: a worker then holds one image's activations, not a
#: batch's (EfficientNet-Lite2 at batch 32: 170 MB above the loaded process instead of 780 MB), and runs
#: 0-9% faster (docs/encoders.md, the `pipeline` table of benchmarks/bench_encoders.py)
RUN_IMAGES = 1


class OnnxUnavailable(Exception):
    """Export or session creation is impossible for this encoder; ``str()`` is the one-line reason."""


def _one_line(e: BaseException) -> str:
    text = " ".join(re.sub(r"\x1b\[[0-9;]*m", "", str(e)).split()) or type(e).__name__
    return f"{type(e).__name__}: {text[:300]}"


def _torch_version() -> str:
    """The installed torch's version, read from its package metadata (no ``import torch``)."""
    from importlib import metadata

    try:
        return metadata.version("torch")
    except metadata.PackageNotFoundError:  # a torch without metadata (a source tree on sys.path)
        import torch

        return torch.__version__


def graph_file(cache_dir: str | Path, name: str, fingerprint: str) -> Path:
    """``<cache_dir>/<encoder name>-<key>.onnx``, the key from fingerprint + torch version (the exporter's) +
    recipe. Needs no built encoder: a cached graph is found from the encoder's config alone
    (:class:`entrep.encoders.graph_encoder.GraphImageEncoder`)."""
    key = hashlib.sha256(f"{fingerprint}\x00{_torch_version()}\x00{EXPORT_VERSION}".encode()).hexdigest()
    safe = re.sub(r"[^A-Za-z0-9._-]+", "_", name)
    return Path(cache_dir) / f"{safe}-{key[:24]}.onnx"


def graph_path(cache_dir: str | Path, encoder) -> Path:
    """:func:`graph_file` of a built encoder."""
    return graph_file(cache_dir, encoder.config.name, encoder.fingerprint)


def default_threads() -> int:
    """Intra-op threads of a session: torch's count when torch is loaded (they then share the cores alike),
    else ``OMP_NUM_THREADS`` or the CPUs this process may run on, as torch would choose."""
    import sys

    if "torch" in sys.modules:
        return int(sys.modules["torch"].get_num_threads())
    env = os.environ.get("OMP_NUM_THREADS", "").strip()
    if env.isdigit() and int(env) > 0:
        return int(env)
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):
        return max(1, os.cpu_count() or 1)


def _forward_module(encoder):
    """The encoder's forward as a module (its model registered, so weights become graph initialisers)."""
    import torch

    class _Forward(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.encoder_forward = encoder.forward
            self.model = encoder.model

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.encoder_forward(x)

    return _Forward()


def probe_batch(encoder, n: int, seed: int = 0):
    """A seeded (n, 3, H, W) batch in the normalised input range."""
    import torch

    h, w = encoder.config.image_size
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, 3, h, w, generator=g)


def _export_once(module, x, target, dynamo: bool) -> None:
    import torch

    kw: dict = {"input_names": ["x"], "output_names": ["y"], "dynamo": dynamo}
    if dynamo:
        kw["dynamic_shapes"] = {"x": {0: torch.export.Dim("batch", min=1, max=65536)}}
        kw["verbose"] = False
    else:
        kw["dynamic_axes"] = {"x": {0: "batch"}, "y": {0: "batch"}}
        kw["opset_version"] = OPSET
    with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()), _native_stderr_to_debug_log():
        warnings.simplefilter("ignore")
        torch.onnx.export(module, (x,), target, **kw)


@contextlib.contextmanager
def _native_stderr_to_debug_log():
    """The TorchScript exporter's C++ side prints whole graphs on a failure (sent to file descriptor 2 here): keep them out of
    the user's terminal (logged at DEBUG) - the reason travels in the exception."""
    import tempfile

    import torch

    try:
        saved = os.dup(2)
    except OSError:  # no usable stderr: nothing to protect
        yield
        return
    with contextlib.suppress(Exception):  # its graph log goes to buffered std::cout by default
        torch._C._jit_set_onnx_log_output_stream("stderr")
    with tempfile.TemporaryFile() as tmp:
        os.dup2(tmp.fileno(), 2)
        try:
            yield
        finally:
            os.dup2(saved, 2)
            os.close(saved)
            tmp.seek(0)
            text = tmp.read().decode("utf-8", "replace").strip()
            if text:
                log.debug("ONNX exporter output:\n%s", text[:20000])


def export_forward(encoder) -> bytes:
    """The ONNX graph of ``encoder.forward`` (dynamic batch axis) as bytes; OnnxUnavailable if impossible."""
    if encoder.device.type != "cpu":
        raise OnnxUnavailable(f"the encoder is on {encoder.device.type}, ONNX export runs on CPU here")
    import torch

    module = _forward_module(encoder).eval()
    x = probe_batch(encoder, PROBE_EXPORT_BATCH)
    errors = []
    for dynamo in (False, True):
        buf = io.BytesIO()
        try:
            with torch.no_grad():
                _export_once(module, x, buf, dynamo)
        except Exception as e:  # noqa: BLE001 - any exporter failure means "cannot export"; reason kept
            errors.append(f"{'dynamo' if dynamo else 'torchscript'} exporter: {_one_line(e)}")
            continue
        data = buf.getvalue()
        if data:
            return data
        errors.append(f"{'dynamo' if dynamo else 'torchscript'} exporter wrote nothing")
    raise OnnxUnavailable("; ".join(errors))


class OnnxForward:
    """An ONNX Runtime session standing in for an encoder's torch ``forward`` (CPU, float32).

    ``threads``: the cores it may use (default :func:`default_threads`). With ``parallel="batches"``
    (the default) up to ``workers`` = ``threads`` runs go at once on a session with one intra-op
    thread (``InferenceSession.run`` is thread-safe and releases the GIL): :meth:`run` splits a
    batch into that many slices, and :meth:`run_one` runs a batch on the calling thread alone, for
    callers that already run one batch per core (the decode pool's workers). On these
    depthwise-convolution nets that beats intra-op threads end to end (docs/encoders.md, "Decode
    pool"): no operator waits at a barrier for a thread that a decode thread has pre-empted. A batch
    too small to give every worker an image (one upload, one ``predict`` image) runs instead on a
    session with ``threads`` intra-op threads, so it still uses every core. ``parallel="intra-op"``:
    every run on that session, one at a time; ``workers`` is then 1. Intra-op threads sleep between
    batches (no busy-waiting, so a decode pool can run beside them). A one-thread session (a worker's,
    or the only one when ``threads`` is 1, as in a one-CPU Ray actor) runs ``RUN_IMAGES`` images per
    session run. Sessions are made when first needed; the ``threads`` one at construction, so an
    unloadable graph fails here.
    """

    def __init__(self, graph: str | Path | bytes, *, threads: int | None = None, parallel: str | None = None) -> None:
        try:
            import onnxruntime  # noqa: F401
        except ImportError as e:
            raise OnnxUnavailable(f"onnxruntime is not installed ({e}); pip install onnxruntime") from None
        parallel = parallel or DEFAULT_PARALLEL
        if parallel not in PARALLEL_MODES:
            raise ValueError(f"unknown parallel mode {parallel!r}; use one of {', '.join(PARALLEL_MODES)}")
        self._source = graph if isinstance(graph, bytes) else str(graph)
        self.parallel = parallel
        self.threads = max(1, int(threads or default_threads()))
        #: runs that may go at once, each on its own thread (1 in "intra-op" mode)
        self.workers = self.threads if parallel == "batches" else 1
        self._sessions: dict = {}
        self._lock = threading.Lock()
        self._pool: ThreadPoolExecutor | None = None
        self.session = self._session(self.threads)
        inputs, outputs = self.session.get_inputs(), self.session.get_outputs()
        if len(inputs) != 1 or len(outputs) != 1:
            raise OnnxUnavailable(f"graph has {len(inputs)} inputs and {len(outputs)} outputs, expected 1 and 1")
        self.input_name, self.output_name = inputs[0].name, outputs[0].name

    def _session(self, intra_op_threads: int):
        """The session with ``intra_op_threads`` intra-op threads, made on first use (thread-safe)."""
        with self._lock:
            session = self._sessions.get(intra_op_threads)
            if session is None:
                import onnxruntime as ort

                so = ort.SessionOptions()
                so.intra_op_num_threads = intra_op_threads
                so.inter_op_num_threads = 1
                so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
                so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
                # intra-op threads sleep between batches instead of spinning: the decode pool needs the cores
                so.add_session_config_entry("session.intra_op.allow_spinning", "0")
                so.log_severity_level = 3
                try:
                    session = ort.InferenceSession(self._source, sess_options=so, providers=["CPUExecutionProvider"])
                except Exception as e:  # noqa: BLE001 - an unreadable/invalid graph: the caller rebuilds or falls back
                    raise OnnxUnavailable(f"ONNX Runtime cannot load the graph: {_one_line(e)}") from None
                self._sessions[intra_op_threads] = session
            return session

    @staticmethod
    def _as_input(x) -> np.ndarray:
        if not isinstance(x, np.ndarray):  # a torch tensor
            x = x.detach().to("cpu").float().numpy()
        return np.ascontiguousarray(x, dtype=np.float32)

    def _run(self, session, a: np.ndarray) -> np.ndarray:
        (y,) = session.run([self.output_name], {self.input_name: a})
        return y

    def run_one(self, x) -> np.ndarray:
        """(B, dim) float32 outputs of a (B, 3, H, W) batch (array or tensor), run by the calling thread alone
        on the one-thread session, ``RUN_IMAGES`` images per session run (one of ``workers`` doing so at once,
        or the only thread there is); in "intra-op" mode with more threads, one run over them. A float32
        C-contiguous array goes in uncopied."""
        a = self._as_input(x)
        if self.workers <= 1 and self.threads > 1:
            return self._run(self.session, a)
        session = self._session(1)
        if len(a) <= RUN_IMAGES:
            return self._run(session, a)
        return np.concatenate([self._run(session, a[i:i + RUN_IMAGES]) for i in range(0, len(a), RUN_IMAGES)])

    def run(self, x) -> np.ndarray:
        """The outputs of :meth:`run_one`, the batch split into ``workers`` slices run at once; a batch with fewer
        images than workers on every core through intra-op threads."""
        a = self._as_input(x)
        if self.workers <= 1:
            return self.run_one(a)
        if len(a) < self.workers:
            return self._run(self.session, a)
        cuts = np.linspace(0, len(a), self.workers + 1).round().astype(int)
        rest = [self._executor().submit(self.run_one, a[s:e]) for s, e in zip(cuts[1:-1], cuts[2:])]
        first = self.run_one(a[cuts[0]:cuts[1]])
        return np.concatenate([first, *(f.result() for f in rest)])

    def _executor(self) -> ThreadPoolExecutor:
        with self._lock:
            if self._pool is None:
                self._pool = ThreadPoolExecutor(max_workers=self.workers - 1, thread_name_prefix="entrep-onnx")
            return self._pool

    def vectors(self, x, normalize: bool, *, split: bool = True) -> np.ndarray:
        """(B, dim) float32 vectors of a batch, L2-normalised if asked (as torch's ``normalize``, eps 1e-12);
        ``split=False``: :meth:`run_one` (the caller runs one batch per core already)."""
        y = np.asarray(self.run(x) if split else self.run_one(x), dtype=np.float32)
        if normalize:
            y = y / np.maximum(np.linalg.norm(y, axis=-1, keepdims=True), np.float32(1e-12))
        return y

    def __call__(self, x):
        """:meth:`run` as a torch tensor."""
        import torch

        return torch.from_numpy(self.run(x))


def check_equal(encoder, runner: OnnxForward, n: int = PROBE_CHECK_BATCH) -> float:
    """Max abs difference of L2-normalised outputs, ONNX Runtime vs torch, on a seeded probe batch."""
    import torch

    x = probe_batch(encoder, n, seed=1)
    with torch.inference_mode():
        ref = torch.nn.functional.normalize(encoder.forward(x).float(), dim=-1)
    got = torch.nn.functional.normalize(runner(x).float(), dim=-1)
    if got.shape != ref.shape:
        raise OnnxUnavailable(f"graph output shape {tuple(got.shape)} differs from torch's {tuple(ref.shape)}")
    diff = float((got - ref).abs().max())
    if not np.isfinite(diff) or diff > TOLERANCE:
        raise OnnxUnavailable(f"graph outputs differ from torch by {diff:.2e} (> {TOLERANCE:g})")
    return diff


def prepare(encoder, cache_dir: str | Path | None) -> tuple[OnnxForward, Path | None, bool]:
    """(runner, cached graph path or None, whether it was exported now) for ``encoder``.

    A cached graph is loaded without exporting; a cached file that ONNX Runtime
    cannot load is logged, rebuilt and replaced. A new graph is checked against
    torch before use and written atomically. OnnxUnavailable when impossible.
    """
    threads = default_threads()
    path = graph_path(cache_dir, encoder) if cache_dir is not None else None
    if path is not None and path.is_file():
        try:
            return OnnxForward(path, threads=threads), path, False
        except OnnxUnavailable as e:
            log.warning("encoder %s: cached ONNX graph %s is unusable (%s); rebuilding it", encoder.config.name,
                        path, e)
    data = export_forward(encoder)
    runner = OnnxForward(data, threads=threads)
    check_equal(encoder, runner)
    if path is not None:
        from entrep.io import atomic_path

        try:
            with atomic_path(path) as tmp:
                Path(tmp).write_bytes(data)
        except Exception as e:  # noqa: BLE001 - an unwritable cache only costs a re-export next time
            log.warning("encoder %s: cannot cache the ONNX graph at %s (%s); it will be exported again next time",
                        encoder.config.name, path, _one_line(e))
            path = None
    return runner, path, True
