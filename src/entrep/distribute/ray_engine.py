"""The Ray engine: Ray Data ``map_batches`` over an actor pool, one encoder per actor.

Ray is imported only here. Without an address Ray starts on this machine
(``ray.init(num_cpus=..., include_dashboard=False)``); with one
(``ray://host:10001`` or ``auto``) it joins the user's cluster. Each actor
requests one GPU when the cluster has GPUs. Workers read the images and the
feature cache from their own file system, so on a cluster both must be on
shared storage; the driver receives the feature rows and writes the shards.
"""

from __future__ import annotations

import logging
from typing import Iterable, Iterator

import numpy as np

from entrep.distribute.worker import EmbedSpec, EmbedWorker
from entrep.errors import UserError

log = logging.getLogger(__name__)


def import_ray():
    """The ``ray`` module, or one clear line saying how to install it."""
    try:
        import ray
        import ray.data  # noqa: F401
    except ImportError:
        raise UserError("the ray engine needs Ray: pip install 'entrep[ray]' (or use --engine local)") from None
    return ray


class RayEngine:
    """Embeds with ``workers`` actors (default: one per CPU of the local Ray, or the cluster's GPUs)."""

    name = "ray"

    def __init__(self, address: str | None = None, *, workers: int | None = None, num_cpus: int | None = None) -> None:
        self.address = address
        self.workers = workers
        self.num_cpus = num_cpus
        self._started = False

    def _init(self):
        ray = import_ray()
        if not ray.is_initialized():
            if self.address:
                log.info("joining the Ray cluster at %s", self.address)
                ray.init(address=self.address, include_dashboard=False, log_to_driver=False)
            else:
                ray.init(num_cpus=self.num_cpus, include_dashboard=False, log_to_driver=False)
            self._started = True
        return ray

    def map(self, spec: EmbedSpec, batches: Iterable[dict[str, np.ndarray]]) -> Iterator[dict[str, np.ndarray]]:
        """Feature batches for the rows (any order, any batching: group them by the ``shard`` column)."""
        ray = self._init()
        # plain Python values: numpy scalars (np.str_) become Arrow tensor columns in some blocks and string
        # columns in others, which Ray then cannot concatenate (seen at 2,000 images, 256-row shards)
        rows = [{k: v.item() if isinstance(v, np.generic) else v for k, v in zip(b, vals)}
                for b in batches for vals in zip(*b.values())]
        if not rows:
            return
        resources = ray.cluster_resources()
        gpus = int(resources.get("GPU", 0))
        workers = self.workers or (gpus if gpus else max(1, int(resources.get("CPU", 1))))
        workers = max(1, min(workers, len(rows)))
        log.info("ray: %d rows over %d actors (%s)", len(rows), workers, "1 GPU each" if gpus else "CPU")
        ds = ray.data.from_items(rows).map_batches(
            EmbedWorker, fn_constructor_kwargs={"spec": spec}, batch_size=spec.batch_size,
            compute=ray.data.ActorPoolStrategy(size=workers), batch_format="numpy",
            **({"num_gpus": 1} if gpus else {"num_cpus": 1}))
        yield from ds.iter_batches(batch_size=None, batch_format="numpy")

    def close(self) -> None:
        """Shut down a Ray this engine started (a joined cluster is left running)."""
        if self._started:
            import ray

            ray.shutdown()
            self._started = False
