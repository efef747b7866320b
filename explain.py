"""Explain a dataset: ``python explain.py --config configs/demo.yaml [key=value ...]`` (see README)."""

from hdm_lightning.cli import explain_main

if __name__ == "__main__":
    raise SystemExit(explain_main())
