"""Command-line entry points: ``explain.py``, ``train_classifier.py`` and ``train_explainer.py``.

Errors a user can fix (config, data, classifier, device) print one ``error: ...`` line naming the
problem and the fix, and exit with status 2; anything else is a bug and keeps its traceback.
"""

from __future__ import annotations

import argparse
import sys

from lightning.pytorch.utilities import rank_zero_only

from hdm_lightning.amortised.train import run_explainer
from hdm_lightning.config import ConfigError, load_explainer_config, load_run_config, load_train_config
from hdm_lightning.distributed import launch
from hdm_lightning.run.explain_run import run_explain
from hdm_lightning.signals import Interrupted, stop_on_signals
from hdm_lightning.train_classifier import run_training

__all__ = ["explain_main", "train_classifier_main", "train_explainer_main"]

# Raised by our own checks with a message meant for the user (DatasetError, ImageReadError and
# ConfigError are ValueErrors; the registries raise KeyError listing the valid names).
USER_ERRORS = (ValueError, KeyError, FileNotFoundError, PermissionError)


def _parser(prog: str, description: str, epilog: str, configs: str) -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog=prog, description=description, epilog=epilog)
    ap.add_argument("--config", default=None, help=f"YAML config ({configs}); default: the schema defaults")
    ap.add_argument("overrides", nargs="*", help="key=value settings that replace the config's")
    ap.add_argument("--print-config", action="store_true", help="print the resolved config and exit")
    return ap


def _message(e: BaseException) -> str:
    if isinstance(e, OSError) and e.filename is not None:  # a path no check of ours caught: say what to do
        return (
            f"{e.strerror}: {str(e.filename)!r}. Check the config key or file that names this path: an input must "
            "exist and be readable, an output folder (output.dir) must be one this process can create and write"
        )
    text = e.args[0] if isinstance(e, KeyError) and e.args else str(e)
    return str(text)


def _main(args: argparse.Namespace, load, run, resumes: str) -> int:
    """Load the config, then run; a user-fixable error prints one ``error:`` line and returns 2.

    SIGTERM or SIGINT stops the run with one ``error:`` line saying what finished and that a rerun resumes
    (``resumes`` says from where), and returns 128 + the signal's number (143 for SIGTERM), never 0.
    """
    try:
        with stop_on_signals():
            loaded = load(args.config, args.overrides)
            if args.print_config:
                from omegaconf import OmegaConf

                cfg = loaded[0] if isinstance(loaded, tuple) else loaded
                print(OmegaConf.to_yaml(cfg), end="")
                return 0
            summary = run(*loaded) if isinstance(loaded, tuple) else run(loaded)
    except Interrupted as e:
        finished = f" ({e.finished})" if e.finished else ""
        print(
            f"error: stopped by {e.name} before the run finished{finished}. Rerun the same command to resume {resumes}",
            file=sys.stderr,
        )
        return e.exit_status
    except ConfigError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except USER_ERRORS as e:
        print(f"error: {_message(e)}", file=sys.stderr)
        return 2
    if summary is not None:
        print(summary.line())
    return 0


def explain_main(argv: list[str] | None = None) -> int:
    """``python explain.py --config <yaml> [key=value ...]``; returns the process exit status."""
    ap = _parser(
        "explain.py",
        "Explain a classifier's decisions on a dataset with HDM, DM or MDM saliency maps.",
        "Overrides use dotted keys, e.g.: explain.py --config configs/cub.yaml data.root=/data/CUB_200_2011 "
        "batch_size=8 wandb.mode=disabled. The config's `imports:` modules are imported (their code runs) first.",
        "configs/*.yaml",
    )

    def run(cfg, settings):
        t = cfg.trainer
        shard = launch(cfg.device, t.devices, t.num_nodes, t.timeout_hours)
        summary = run_explain(cfg, settings, shard)
        return summary if shard.is_main else None  # one summary line, from rank 0

    resumes = "(finished images are kept; the batch in flight continues from its last checkpoint)"
    return _main(ap.parse_args(argv), load_run_config, run, resumes)


def train_classifier_main(argv: list[str] | None = None) -> int:
    """``python train_classifier.py --config <yaml> [key=value ...]``; returns the process exit status."""
    ap = _parser(
        "train_classifier.py",
        "Fine-tune the classifier that explain.py explains (checkpoint carries classes + preprocessing).",
        "Example: train_classifier.py --config configs/classifier/cub_resnet50.yaml data.root=/data/CUB",
        "configs/classifier/*.yaml",
    )

    def run(cfg):
        summary = run_training(cfg)
        return summary if rank_zero_only.rank == 0 else None  # one summary line, from rank 0

    return _main(ap.parse_args(argv), load_train_config, run, "from the last finished epoch (checkpoints/last.ckpt)")


def train_explainer_main(argv: list[str] | None = None) -> int:
    """``python train_explainer.py --config <yaml> [key=value ...]``; returns the process exit status."""
    ap = _parser(
        "train_explainer.py",
        "Train an amortised explainer: a network that predicts DM's mask vectors for a classifier in one pass.",
        "Example: train_explainer.py --config configs/explainer/synthetic.yaml trainer.max_epochs=5",
        "configs/explainer/*.yaml",
    )

    def run(cfg):
        summary = run_explainer(cfg)
        return summary if rank_zero_only.rank == 0 else None  # one summary line, from rank 0

    resumes = "from the last finished epoch (checkpoints/last.ckpt)"
    return _main(ap.parse_args(argv), load_explainer_config, run, resumes)
