"""Text-query vectors kept in memory, so a script sending many distinct queries cannot fill the disk.

The library embeds texts through the feature cache (one fsynced shard per new
text: right for captions and prompts, computed once and reused across runs).
A server's text queries are unbounded user input, so here they are encoded
directly by the model's text encoder and kept in a bounded LRU; nothing is
written to disk.
"""

from __future__ import annotations

import threading
from collections import OrderedDict

import numpy as np

DEFAULT_TEXT_QUERIES = 1024


class TextQueryVectors:
    """Joint-space vectors of recent text queries (at most ``capacity``, least recently used dropped)."""

    def __init__(self, model, capacity: int = DEFAULT_TEXT_QUERIES) -> None:
        if capacity < 1:
            raise ValueError(f"capacity must be >= 1, got {capacity}")
        self.model = model
        self.capacity = int(capacity)
        self._vectors: OrderedDict[str, np.ndarray] = OrderedDict()
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return len(self._vectors)

    def embed(self, texts) -> np.ndarray:
        """(N, d) joint-space vectors, like ``model.embed_texts`` but without the feature cache."""
        texts = list(texts)
        with self._lock:
            missing = [t for t in dict.fromkeys(texts) if t not in self._vectors]
        if missing:
            encoder = self.model.extractor.text_encoder()
            raw = encoder.encode(missing, batch_size=len(missing), normalize=True)
            joint = np.asarray(self.model.joint_texts(np.asarray(raw, dtype=np.float32)), dtype=np.float32)
            with self._lock:
                for t, v in zip(missing, joint):
                    self._vectors[t] = v
        with self._lock:
            out = []
            for t in texts:
                v = self._vectors.get(t)
                if v is None:  # dropped by a concurrent burst; recompute on the next call
                    return self.embed(texts)
                self._vectors.move_to_end(t)
                out.append(v)
            while len(self._vectors) > self.capacity:
                self._vectors.popitem(last=False)
        return np.stack(out)


class ServedModel:
    """The model as the server's search calls see it: text queries embedded through :class:`TextQueryVectors`.

    Everything else is the model's own attribute (taxonomy, config, gallery, ...).
    """

    def __init__(self, model, text_vectors: TextQueryVectors) -> None:
        self._model = model
        self.text_vectors = text_vectors

    def embed_texts(self, texts) -> np.ndarray:
        return self.text_vectors.embed(texts)

    def __getattr__(self, name):
        return getattr(self._model, name)
