"""An image encoder that is only its cached ONNX graph: no torch in the process.

When the ONNX graph of an encoder's ``forward`` is already in the cache
(exported and checked against torch once, :mod:`entrep.encoders.onnx_runtime`),
computing features needs neither the torch model nor torch: the extractor
finds the graph from the encoder's config and weights digest alone (its
fingerprint, :func:`entrep.encoders.describe_encoder`) and runs it here. Decode
and preprocessing are the torch encoder's own (:class:`ImagePipeline`), so the
vectors are those the torch-built encoder on ONNX Runtime gives. A never-seen
image in ``entrep predict`` then costs the session load and one forward
instead of ``import torch`` and the model build.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from entrep.encoders.onnx_runtime import OnnxForward, OnnxUnavailable, graph_file  # noqa: F401
from entrep.encoders.pipeline import ImagePipeline


class GraphImageEncoder(ImagePipeline):
    """``config`` (an ImageEncoderConfig) and ``fingerprint`` of the encoder the graph at ``graph`` was exported
    from; encodes like it. :class:`OnnxUnavailable` when ONNX Runtime cannot load the graph or its output
    width is not ``config.dim``."""

    runtime = "onnx"

    def __init__(self, config, fingerprint: str, graph: str | Path, *, threads: int | None = None,
                 runtime_requested: str = "auto", parallel: str | None = None) -> None:
        self.config = config
        self._fingerprint = fingerprint
        self.onnx_graph = Path(graph)
        self.runtime_requested = runtime_requested
        self._onnx = OnnxForward(self.onnx_graph, threads=threads, parallel=parallel)
        width = self._onnx.session.get_outputs()[0].shape[-1]
        if isinstance(width, int) and width != int(config.dim):
            raise OnnxUnavailable(f"graph {self.onnx_graph.name} gives {width}-d vectors, the encoder {config.dim}-d")

    @property
    def fingerprint(self) -> str:
        return self._fingerprint

    @property
    def name(self) -> str:
        return self.config.name

    @property
    def dim(self) -> int:
        return int(self.config.dim)

    def _encode_batch(self, x: np.ndarray, normalize: bool, split: bool = True) -> np.ndarray:
        return self._onnx.vectors(x, normalize, split=split)

    def _batch_workers(self) -> int:
        return self._onnx.workers

    def __repr__(self) -> str:
        return f"GraphImageEncoder({self.config.name!r}, dim={self.config.dim}, graph={self.onnx_graph.name!r})"


def cached_graph_encoder(info, cache_dir: str | Path, *, runtime: str = "auto"):
    """A :class:`GraphImageEncoder` for the encoder ``info`` describes (an EncoderInfo with its ``config``) when
    its graph is cached under ``cache_dir``; else None. A cached graph ONNX Runtime cannot load is None too (the
    torch encoder is then built and re-exports it)."""
    import logging

    config = getattr(info, "config", None)
    if config is None or not hasattr(config, "image_size"):
        return None
    path = graph_file(cache_dir, info.name, info.fingerprint)
    if not path.is_file():
        return None
    try:
        return GraphImageEncoder(config, info.fingerprint, path, runtime_requested=runtime)
    except OnnxUnavailable as e:
        logging.getLogger(__name__).warning("encoder %s: cached ONNX graph %s is unusable (%s); building the "
                                            "torch encoder", info.name, path, e)
        return None
