"""Every config of the package, read in one place: schemas (OmegaConf dataclasses), loaders and their checks.

- :mod:`~hdm_lightning.config.layers`: how any config is loaded (schema <- YAML <- values <- ``key=value``
  overrides), ``imports:``, presets, and the method settings a run or a training config gives (one merge).
- :mod:`~hdm_lightning.config.methods`: DM, HDM and MDM's settings (one base, :class:`MaskMethodConfig`) and the
  registry of methods configured by a structured config.
- :mod:`~hdm_lightning.config.run`: ``explain.py``'s run config; :mod:`~hdm_lightning.config.training`:
  ``train_classifier.py``'s; :mod:`~hdm_lightning.config.explainer`: ``train_explainer.py``'s.
- :mod:`~hdm_lightning.config.reference`: docs/configuration.md's key reference, generated from the schemas'
  comments (``python -m hdm_lightning.config.reference --write``).

Unknown keys and wrongly typed values are rejected with the key's name and every value is checked when the config
is loaded, before any data or model; every error is a :class:`ConfigError` whose message names the fix.
"""

from hdm_lightning.config.explainer import (
    EXPLAINER_CHECKS,
    ExplainerOptimConfig,
    PredictorConfig,
    TrainExplainerConfig,
    load_explainer_config,
    register_explainer_check,
)
from hdm_lightning.config.layers import choice, find_preset, load_layers, method_settings, parse_overrides, run_imports
from hdm_lightning.config.methods import (
    CONFIG_CHECKS,
    METHOD_CONFIGS,
    DMConfig,
    EarlyStopConfig,
    EngineConfig,
    HDMConfig,
    MaskMethodConfig,
    MaskOptimConfig,
    MDMConfig,
    MixingConfig,
    ScheduleConfig,
    ThresholdConfig,
    load_preset,
    method_config,
    register_method_config,
)
from hdm_lightning.config.run import (
    WANDB_MODES,
    ClassifierConfig,
    DataConfig,
    EvaluationConfig,
    ExplainRunConfig,
    MethodEntry,
    OutputConfig,
    PreprocessConfig,
    ProcessesConfig,
    SyntheticConfig,
    WandbConfig,
    load_run_config,
    run_defaults,
)
from hdm_lightning.config.training import (
    AUGMENTS,
    InitConfig,
    ModelConfig,
    OptimConfig,
    PrototypeConfig,
    TrainClassifierConfig,
    TrainerRunConfig,
    load_train_config,
)
from hdm_lightning.errors import ConfigError

__all__ = [
    "AUGMENTS",
    "CONFIG_CHECKS",
    "EXPLAINER_CHECKS",
    "METHOD_CONFIGS",
    "WANDB_MODES",
    "ClassifierConfig",
    "ConfigError",
    "DMConfig",
    "DataConfig",
    "EarlyStopConfig",
    "EngineConfig",
    "EvaluationConfig",
    "ExplainRunConfig",
    "ExplainerOptimConfig",
    "HDMConfig",
    "InitConfig",
    "MDMConfig",
    "MaskMethodConfig",
    "MaskOptimConfig",
    "MethodEntry",
    "MixingConfig",
    "ModelConfig",
    "OptimConfig",
    "OutputConfig",
    "PredictorConfig",
    "PrototypeConfig",
    "PreprocessConfig",
    "ProcessesConfig",
    "ScheduleConfig",
    "SyntheticConfig",
    "ThresholdConfig",
    "TrainClassifierConfig",
    "TrainExplainerConfig",
    "TrainerRunConfig",
    "WandbConfig",
    "choice",
    "find_preset",
    "load_explainer_config",
    "load_layers",
    "load_preset",
    "load_run_config",
    "load_train_config",
    "method_config",
    "method_settings",
    "parse_overrides",
    "register_explainer_check",
    "register_method_config",
    "run_defaults",
    "run_imports",
]
