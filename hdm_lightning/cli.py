"""Command-line entry points: ``explain.py`` and ``train_classifier.py``.

Errors a user can fix (config, data, classifier, device) print one ``error: ...`` line naming the
problem and the fix, and exit with status 2; anything else is a bug and keeps its traceback.
"""

from __future__ import annotations

import argparse
import sys

from hdm_lightning.config import ConfigError, load_run_config, load_train_config

__all__ = ["explain_main", "train_classifier_main"]

# Raised by our own checks with a message meant for the user (DatasetError, ImageReadError and
# ConfigError are ValueErrors; the registries raise KeyError listing the valid names).
USER_ERRORS = (ValueError, KeyError, FileNotFoundError)


def _parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(
        prog="explain.py",
        description="Explain a classifier's decisions on a dataset with HDM, DM or MDM saliency maps.",
        epilog="Overrides use dotted keys, e.g.: explain.py --config configs/cub.yaml data.root=/data/CUB_200_2011 "
        "batch_size=8 wandb.mode=disabled. The config's `imports:` modules are imported (their code runs) first.",
    )
    ap.add_argument("--config", default=None, help="YAML run config (configs/*.yaml); default: the schema defaults")
    ap.add_argument("overrides", nargs="*", help="key=value settings that replace the config's")
    ap.add_argument("--print-config", action="store_true", help="print the resolved config and exit")
    return ap


def _message(e: BaseException) -> str:
    text = e.args[0] if isinstance(e, KeyError) and e.args else str(e)
    return str(text)


def explain_main(argv: list[str] | None = None) -> int:
    """``python explain.py --config <yaml> [key=value ...]``; returns the process exit status."""
    args = _parser().parse_args(argv)
    try:
        cfg, settings = load_run_config(args.config, args.overrides)
        if args.print_config:
            from omegaconf import OmegaConf

            print(OmegaConf.to_yaml(cfg), end="")
            return 0
        from hdm_lightning.runner import run_explain

        summary = run_explain(cfg, settings)
    except ConfigError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except USER_ERRORS as e:
        print(f"error: {_message(e)}", file=sys.stderr)
        return 2
    print(summary.line())
    return 0


def train_classifier_main(argv: list[str] | None = None) -> int:
    """``python train_classifier.py --config <yaml> [key=value ...]``; returns the process exit status."""
    ap = argparse.ArgumentParser(
        prog="train_classifier.py",
        description="Fine-tune the classifier that explain.py explains (checkpoint carries classes + preprocessing).",
        epilog="Example: train_classifier.py --config configs/classifier/cub_resnet50.yaml data.root=/data/CUB",
    )
    ap.add_argument("--config", default=None, help="YAML training config (configs/classifier/*.yaml)")
    ap.add_argument("overrides", nargs="*", help="key=value settings that replace the config's")
    ap.add_argument("--print-config", action="store_true", help="print the resolved config and exit")
    args = ap.parse_args(argv)
    try:
        cfg = load_train_config(args.config, args.overrides)
        if args.print_config:
            from omegaconf import OmegaConf

            print(OmegaConf.to_yaml(cfg), end="")
            return 0
        from hdm_lightning.train import run_training

        summary = run_training(cfg)
    except ConfigError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except USER_ERRORS as e:
        print(f"error: {_message(e)}", file=sys.stderr)
        return 2
    print(summary.line())
    return 0
