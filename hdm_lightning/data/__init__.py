"""Demo data that ships with installed packages (no download)."""

from hdm_lightning.data.photos import demo_photos

__all__ = ["demo_photos"]
