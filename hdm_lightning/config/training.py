"""The config of ``train_classifier.py`` (OmegaConf dataclasses) and its loading."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from omegaconf import DictConfig

from hdm_lightning.config.layers import choice, load_layers, run_imports
from hdm_lightning.config.run import WANDB_MODES, DataConfig, OutputConfig, PreprocessConfig, WandbConfig
from hdm_lightning.errors import ConfigError

__all__ = [
    "InitConfig",
    "ModelConfig",
    "OptimConfig",
    "PrototypeConfig",
    "TrainClassifierConfig",
    "TrainerRunConfig",
    "load_train_config",
    "AUGMENTS",
]


@dataclass
class InitConfig:
    """Where the backbone's starting weights come from (``train_classifier.py``)."""

    kind: str = "imagenet"  # imagenet (torchvision weights from the hub cache) | file | random
    weights: str = "DEFAULT"  # kind imagenet: the torchvision weight enum, e.g. ResNet50_Weights.IMAGENET1K_V2
    file: str | None = None  # kind file: a state dict (torch.save) of the same backbone; the head may differ


@dataclass
class OptimConfig:
    """Optimiser and schedule: cosine decay over the epochs after a linear warm-up."""

    name: str = "sgd"  # sgd (momentum 0.9, nesterov) | adamw
    lr: float = 0.01  # peak learning rate
    weight_decay: float = 1e-4  # decoupled (adamw) or L2 (sgd) weight decay
    warmup_epochs: int = 0  # linear warm-up epochs before the cosine decay
    label_smoothing: float = 0.0  # cross-entropy label smoothing


@dataclass
class PrototypeConfig:
    """ProtoPNet's phases and loss weights (``model.head: prototype``; arXiv 1806.10574, §2.2)."""

    warm_epochs: int = 5  # add-on layers and prototypes only, the backbone frozen (before the joint epochs)
    last_layer_epochs: int = 20  # the last layer alone, after the push
    cluster: float = 0.8  # weight of the cluster cost (pull each image's patch to a prototype of its class)
    separation: float = 0.08  # weight of the separation cost (push patches away from other classes' prototypes)
    l1: float = 1e-4  # last-layer phase: L1 weight on the connections from a prototype to the other classes
    lr_features: float = 1e-4  # joint phase: the backbone's learning rate (Adam)
    lr_add_on: float = 3e-3  # warm-up and joint: the add-on layers'
    lr_prototypes: float = 3e-3  # warm-up and joint: the prototypes'
    lr_last_layer: float = 1e-4  # last-layer phase


@dataclass
class ModelConfig:
    """The classification head on the backbone."""

    head: str = "linear"  # linear (the backbone's own classifier) | prototype (ProtoPNet: prototypes, push, ...)
    prototypes_per_class: int = 10  # head prototype: prototypes of each class
    prototype_shape: list[int] = field(default_factory=lambda: [128, 1, 1])  # head prototype: [channels, 1, 1]
    prototype: PrototypeConfig = field(default_factory=PrototypeConfig)


@dataclass
class TrainerRunConfig:
    """The Lightning Trainer of a training run."""

    accelerator: str = "auto"  # auto | cpu | gpu
    devices: int = 1  # devices (processes) per node; > 1 trains with DDP
    num_nodes: int = 1  # nodes (torchrun --nnodes, SLURM --nodes)
    precision: str = "auto"  # auto: 16-mixed on GPUs, 32-true on CPUs; or any Lightning precision
    max_epochs: int = 30  # training epochs
    early_stopping_patience: int | None = None  # epochs without a better val/acc1; null: no early stop
    limit_train_batches: float | None = None  # share or number of training batches per epoch (smoke tests)
    limit_val_batches: float | None = None  # share or number of validation batches per epoch
    log_every_n_steps: int = 20  # logging interval in steps


@dataclass
class TrainClassifierConfig:
    """``python train_classifier.py --config <yaml> [key=value ...]``: fine-tune the classifier to explain."""

    imports: list[str] = field(default_factory=list)  # modules imported first (user backbones); runs their code
    backbone: str = "resnet50"  # torchvision name, timm/<name>, or small_cnn
    model: ModelConfig = field(default_factory=ModelConfig)
    init: InitConfig = field(default_factory=InitConfig)
    preprocess: PreprocessConfig = field(default_factory=PreprocessConfig)  # overrides of the backbone's own
    augment: str = "standard"  # standard (random resized crop + flip) | flip | none
    train_split: str = "train"  # data.split used for training
    val_split: str = "test"  # ... and for validation (CUB has train/test; synthetic train/val/test)
    val_fraction: float = 0.1  # image folders without train/ and val/ sub-folders: share held out
    val_limit: int | None = None  # validate on the first N images of the validation split only
    batch_size: int = 32  # images per step (per process under DDP)
    num_workers: int = 0  # DataLoader worker processes
    seed: int = 0  # seed of weights init, split and shuffling
    optim: OptimConfig = field(default_factory=OptimConfig)
    trainer: TrainerRunConfig = field(default_factory=TrainerRunConfig)
    data: DataConfig = field(default_factory=lambda: DataConfig(kind="cub"))
    output: OutputConfig = field(default_factory=lambda: OutputConfig(dir="outputs/classifier"))
    wandb: WandbConfig = field(default_factory=WandbConfig)


INIT_KINDS = ("imagenet", "file", "random")
AUGMENTS = ("standard", "flip", "none")
HEADS = ("linear", "prototype")
OPTIMIZERS = ("sgd", "adamw")


def load_train_config(path: str | Path | None, overrides: list[str] | None = None) -> DictConfig:
    """Load a ``train_classifier.py`` config (schema <- YAML <- overrides), run its imports, check its values.

    Raises:
        ConfigError: missing or unparsable file, unknown key, wrong type, malformed override, bad value.
    """
    cfg = load_layers(TrainClassifierConfig, path, overrides)
    run_imports(list(cfg.imports))
    choice(cfg.init.kind, INIT_KINDS, "init.kind")
    choice(cfg.augment, AUGMENTS, "augment")
    choice(cfg.optim.name, OPTIMIZERS, "optim.name")
    choice(cfg.model.head, HEADS, "model.head")
    _check_prototype(cfg.model)
    choice(cfg.wandb.mode, WANDB_MODES, "wandb.mode")
    if cfg.init.kind == "file" and not cfg.init.file:
        raise ConfigError("init.kind=file needs init.file=<state dict saved with torch.save(model.state_dict())>")
    if cfg.batch_size < 1 or cfg.trainer.max_epochs < 1:
        raise ConfigError(
            f"batch_size and trainer.max_epochs must be >= 1, got {cfg.batch_size}, {cfg.trainer.max_epochs}"
        )
    if not 0.0 < cfg.val_fraction < 1.0:
        raise ConfigError(f"val_fraction must be in (0, 1), got {cfg.val_fraction!r}")
    if cfg.optim.lr <= 0:
        raise ConfigError(f"optim.lr must be > 0, got {cfg.optim.lr!r}")
    return cfg


def _check_prototype(model: DictConfig) -> None:
    """The prototype head's settings, named in the message (checked whatever the head, so a typo waits for no one)."""
    shape = list(model.prototype_shape)
    if len(shape) != 3 or shape[0] < 1 or shape[1:] != [1, 1]:
        raise ConfigError(f"model.prototype_shape must be [channels, 1, 1] (1x1 prototypes, as ProtoPNet), got {shape}")
    if model.prototypes_per_class < 1:
        raise ConfigError(f"model.prototypes_per_class must be >= 1, got {model.prototypes_per_class}")
    p = model.prototype
    if p.warm_epochs < 0 or p.last_layer_epochs < 0:
        raise ConfigError(
            "model.prototype.warm_epochs and last_layer_epochs must be >= 0, got "
            f"{p.warm_epochs}, {p.last_layer_epochs}"
        )
    for key in ("cluster", "separation", "l1"):
        if p[key] < 0:
            raise ConfigError(f"model.prototype.{key} must be >= 0, got {p[key]!r}")
    for key in ("lr_features", "lr_add_on", "lr_prototypes", "lr_last_layer"):
        if p[key] <= 0:
            raise ConfigError(f"model.prototype.{key} must be > 0, got {p[key]!r}")
