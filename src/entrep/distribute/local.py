"""The local engine: the worker in this process, one shard's rows at a time (the default; today's behaviour)."""

from __future__ import annotations

from typing import Iterable, Iterator

import numpy as np

from entrep.distribute.worker import EmbedSpec, EmbedWorker


class LocalEngine:
    """Runs :class:`EmbedWorker` in-process; its extractor (and encoders) is built once per run."""

    name = "local"

    def __init__(self, worker: EmbedWorker | None = None) -> None:
        self.worker = worker

    def bound(self, spec: EmbedSpec) -> "LocalEngine":
        """This engine with a worker for ``spec`` (its own when the specs match), built now."""
        if self.worker is not None and self.worker.spec == spec:
            return self
        return LocalEngine(EmbedWorker(spec))

    def map(self, spec: EmbedSpec, batches: Iterable[dict[str, np.ndarray]]) -> Iterator[dict[str, np.ndarray]]:
        """Feature batches for the row batches, in order (one output batch per input batch)."""
        worker = self.bound(spec).worker
        for batch in batches:
            yield worker(batch)

    def close(self) -> None:
        pass
