"""Train an amortised explainer (a mask predictor on the DM loss): ``python train_explainer.py --config ...``."""

from hdm_lightning.cli import train_explainer_main

if __name__ == "__main__":
    raise SystemExit(train_explainer_main())
