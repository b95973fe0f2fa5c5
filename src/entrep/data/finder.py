"""Finding image files on disk: names from JSON files, and class sub-folders.

Each folder is listed once; names match exactly, else ignoring case and
Unicode normalisation. Class folders are walked without following symlinked
folders; broken links and symlink loops are skipped with one warning.
"""

from __future__ import annotations

import logging
import os
import unicodedata
from pathlib import Path

from entrep.data.images import IMAGE_SUFFIXES
from entrep.data.inputs import SHOW
from entrep.data.records import DataError

log = logging.getLogger("entrep.data.readers")

#: Sub-folders searched for images next to cls.json / data.json, in order.
IMAGE_DIRS = ("imgs", "images", ".")


class ImageFinder:
    """Resolve file names to image paths in imgs/, images/ or the folder itself.

    Each folder is listed once; a name that only matches case-insensitively
    (``_image05`` vs ``_Image05``) is resolved and counted for one warning.
    """

    def __init__(self, root: Path, source: Path):
        self.root, self.source = root.resolve(), source
        self.dirs = [self.root / d for d in IMAGE_DIRS if (self.root / d).is_dir()]
        self._exact: dict[str, Path] = {}
        self._lower: dict[str, Path] = {}
        for d in reversed(self.dirs):  # earlier folders win
            with os.scandir(d) as it:
                for e in it:
                    if e.is_file():
                        self._exact[e.name] = d / e.name
                        self._lower[fold_name(e.name)] = d / e.name
        self.case_fixed: list[str] = []

    def find(self, name: str) -> Path | None:
        if "/" in name or "\\" in name:  # a path relative to the folder
            try:
                p: Path | None = (self.root / name.replace("\\", "/")).resolve()
            except (OSError, RuntimeError):  # symlink loop
                p = None
            return p if p is not None and p.is_file() else self.find(Path(name.replace("\\", "/")).name)
        if name in self._exact:
            return self._exact[name]
        hit = self._lower.get(fold_name(name))
        if hit is not None:
            self.case_fixed.append(f"{name} -> {hit.name}")
        return hit

    def report_case_fixes(self) -> None:
        if self.case_fixed:
            log.warning(
                "%s: %d file name(s) matched only ignoring case, e.g. %s",
                self.source, len(self.case_fixed), "; ".join(self.case_fixed[:3]),
            )


def fold_name(name: str) -> str:
    """Case- and Unicode-normalisation-insensitive key (NFC; macOS stores Vietnamese names as NFD)."""
    return unicodedata.normalize("NFC", name).casefold()


def find_image_dir(root: Path, *, require_subdir: bool = False) -> Path | None:
    for d in IMAGE_DIRS:
        if d == "." and require_subdir:
            continue
        if (root / d).is_dir():
            return root / d
    return None


def class_folders(root: Path) -> dict[str, list[Path]]:
    """Visible sub-folders holding images (searched recursively, symlinked folders not followed).

    Broken links, symlink loops and unreadable folders are skipped with one warning.
    """
    out: dict[str, list[Path]] = {}
    skipped: list[str] = []
    try:
        subs = sorted(root.iterdir())
    except OSError as e:
        raise DataError(f"{root}: cannot list folder ({e.strerror or e})") from None
    for sub in subs:
        if not sub.is_dir() or sub.name.startswith((".", "__")):
            continue
        files = []
        for dirpath, dirnames, filenames in os.walk(sub, onerror=lambda e: skipped.append(str(e.filename))):
            dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
            for f in sorted(filenames):
                if f.startswith(".") or Path(f).suffix.lower() not in IMAGE_SUFFIXES:
                    continue
                path = Path(dirpath, f)
                try:
                    files.append(path.resolve(strict=True))
                except (OSError, RuntimeError):  # broken link or symlink loop
                    skipped.append(str(path))
        if files:
            out[sub.name] = files
    if skipped:
        log.warning("%s: skipped %d unreadable entr%s (broken links, symlink loops): %s", root, len(skipped),
                    "y" if len(skipped) == 1 else "ies", ", ".join(skipped[:SHOW]))
    return out


__all__ = ["IMAGE_DIRS", "ImageFinder", "class_folders", "find_image_dir", "fold_name"]
