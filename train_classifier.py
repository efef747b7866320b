"""Fine-tune the classifier to explain: ``python train_classifier.py --config configs/classifier/<name>.yaml``."""

from hdm_lightning.cli import train_classifier_main

if __name__ == "__main__":
    raise SystemExit(train_classifier_main())
