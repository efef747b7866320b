"""Notebooks' helper modules; a package so that a config run from the repo root can import ``notebooks.<module>``."""
