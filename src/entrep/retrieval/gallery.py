"""Galleries to search: any labelled dataset layout, or a flat folder of unlabelled images."""

from __future__ import annotations

import logging
from pathlib import Path

from entrep.data.images import is_image_file
from entrep.data.records import DataError, Dataset, Record

log = logging.getLogger(__name__)


def images_in_folder(folder: Path) -> list[Path]:
    """Image files directly inside ``folder`` (sorted; hidden files ignored)."""
    if not folder.is_dir():
        raise DataError(f"{folder}: not a folder")
    return sorted(p for p in folder.iterdir() if is_image_file(p))


def read_gallery(path: str | Path, taxonomy) -> Dataset:
    """A dataset in any supported layout; else a flat folder of images (labels then come from the model)."""
    from entrep.data.readers import read_dataset

    path = Path(path)
    try:
        return read_dataset(path, taxonomy)
    except DataError:
        if not path.is_dir():
            raise
        files = images_in_folder(path)
        if not files:
            raise DataError(f"{path}: no dataset layout recognised and no images in the folder") from None
        log.info("%s: %d unlabelled images; gallery labels will be the model's predictions", path, len(files))
        return Dataset(records=[Record(image=p.resolve()) for p in files], root=path.resolve(), taxonomy=taxonomy,
                       source=str(path))
