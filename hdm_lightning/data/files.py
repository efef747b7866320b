"""Finding a dataset's folders and image files: the extensions, the listing order, the folder checks."""

from __future__ import annotations

import os
from pathlib import Path

from hdm_lightning.data.items import DatasetError

__all__ = ["IMAGE_EXTENSIONS", "existing_dir", "list_images"]

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp")  # matched case-insensitively


def _is_image_file(name: str) -> bool:
    return not name.startswith(".") and name.lower().endswith(IMAGE_EXTENSIONS)


def list_images(folder: Path, recursive: bool) -> list[Path]:
    """Image files under ``folder`` (hidden files and folders skipped), sorted by their relative path."""
    if not recursive:
        return sorted(p for p in folder.iterdir() if p.is_file() and _is_image_file(p.name))
    found = []
    for dirpath, dirnames, filenames in os.walk(folder, followlinks=True):
        dirnames[:] = [d for d in dirnames if not d.startswith(".")]
        found.extend(Path(dirpath, f) for f in filenames if _is_image_file(f))
    return sorted(found, key=lambda p: p.relative_to(folder).as_posix())


def existing_dir(root: str | os.PathLike | None, what: str) -> Path:
    """``root`` as a Path, or a DatasetError naming ``what`` when it is unset, missing or not a folder."""
    if root is None:
        raise DatasetError(f"{what} needs a folder: set data.root=/path/to/the/folder")
    path = Path(root).expanduser()
    if not path.exists():
        raise DatasetError(f"{what} folder {str(path)!r} does not exist: check data.root")
    if not path.is_dir():
        raise DatasetError(f"{what} root {str(path)!r} is not a folder: set data.root to the dataset folder")
    return path
