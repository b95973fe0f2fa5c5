"""Galleries to search: reading them (any labelled dataset layout, or a flat folder of unlabelled
images) and building or updating a model's search index over them."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np

from entrep.data.images import is_image_file
from entrep.data.records import DataError, Dataset, Record

log = logging.getLogger(__name__)


def images_in_folder(folder: Path) -> list[Path]:
    """Image files directly inside ``folder`` (sorted; hidden files ignored)."""
    if not folder.is_dir():
        raise DataError(f"{folder}: not a folder")
    return sorted(p for p in folder.iterdir() if is_image_file(p))


_LABEL_FILES = ("cls.json", "data.json")


def _is_flat_image_folder(path: Path) -> bool:
    """A folder with images directly inside and no labels at all (no labels file, no manifest, no class folders)."""
    if not path.is_dir() or any((path / n).is_file() for n in _LABEL_FILES) or any(path.glob("*.jsonl")):
        return False
    if any(p.is_dir() and not p.name.startswith(".") for p in path.iterdir()):
        return False
    return any(is_image_file(p) for p in path.iterdir())


def read_gallery(path: str | Path, taxonomy) -> Dataset:
    """A dataset in any supported layout, or a flat folder of images (labels then come from the model).

    Only a folder with no labels of any kind counts as unlabelled: a labels file with an unknown
    label or a missing image is an error naming it, never a silently unlabelled gallery.
    """
    from entrep.data.readers import read_dataset

    path = Path(path)
    if not _is_flat_image_folder(path):
        return read_dataset(path, taxonomy)
    files = images_in_folder(path)
    log.info("%s: %d unlabelled images; gallery labels will be the model's predictions", path, len(files))
    return Dataset(records=[Record(image=p.resolve()) for p in files], root=path.resolve(), taxonomy=taxonomy,
                   source=str(path))


def gallery_metadata(records: list[Record], taxonomy, hashes: list[str],
                     labels: list[str | None] | None = None) -> list[dict]:
    """Row metadata of a gallery; ``labels`` fills missing labels (the model's predictions).

    ``group`` is the taxonomy group of the label (nose, ear, ...), not the record's patient/visit key.
    """
    out = []
    for i, (r, h) in enumerate(zip(records, hashes)):
        label = r.label if r.label is not None else (labels[i] if labels else None)
        out.append({"path": str(r.image), "name": r.name, "label": label,
                    "group": taxonomy.group_of(label) if label else None, "caption": r.text, "content_hash": h})
    return out


def gallery_rows(model, data: Dataset) -> tuple[np.ndarray, list[dict]]:
    """Retrieval vectors and metadata of ``data``'s images; unlabelled images get the model's label."""
    unlabelled = any(r.label is None for r in data.records)
    # flipped views only matter for predicting missing labels (flip TTA)
    feats = model.image_features([r.image for r in data.records], flips=unlabelled)
    labels = None
    if unlabelled:
        dec, _ = model.predict_features(feats)
        labels = [model.taxonomy.class_name(int(i)) for i in dec.fine]
    hashes = model.file_hashes([r.image for r in data.records])
    return model.retrieval_vectors(feats), gallery_metadata(data.records, model.taxonomy, hashes, labels)


def update_gallery(model, hashes: list[str], rows) -> dict:
    """Build ``model.gallery`` or bring it up to date with the items whose content hashes are ``hashes``.

    Rows whose content is no longer present are removed; only new items are
    turned into vectors, by ``rows(indices) -> (vectors, metadata)``. Images and
    embedding shards (``retrieval.shards``) share this one rule.
    """
    from entrep.retrieval.index import GalleryIndex

    if model.gallery is not None and hashes:
        probe, _ = rows([0])
        if probe.shape[1] != model.gallery.dim:
            log.warning("the gallery holds %d-d vectors but the model's retrieval space %r gives %d-d ones (built by "
                        "an older entrep or for another space): rebuilding it", model.gallery.dim,
                        model.config.retrieval.space, probe.shape[1])
            model.gallery = None
    if model.gallery is not None:
        old = model.gallery
        old_hash = {m.content_hash: m.id for m in old.items}
        new_hash = set(hashes)
        gone = [i for h, i in old_hash.items() if h not in new_hash]
        add_idx = [k for k, h in enumerate(hashes) if h not in old_hash]
        if gone:
            old.remove(gone)
        if add_idx:
            old.add(*rows(add_idx))
        return {"removed": len(gone), "added": len(add_idx), "size": len(old)}
    vecs, meta = rows(list(range(len(hashes))))
    index = GalleryIndex(vecs.shape[1])
    index.add(vecs, meta)
    model.gallery = index
    return {"removed": 0, "added": len(meta), "size": len(index)}


def build_gallery(model, data: Dataset) -> dict:
    """(Re)build the model's search index over ``data``.

    With an existing gallery, rows whose image content is no longer present are
    removed and only new images are embedded and added (the feature cache makes
    unchanged images free). Unlabelled images get the model's predicted label.
    """
    hashes = model.file_hashes([r.image for r in data.records])
    return update_gallery(model, hashes, lambda idx: gallery_rows(model, data.subset(idx)))
