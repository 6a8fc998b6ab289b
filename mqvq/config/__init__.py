"""Typed configs: the schema (dataclasses with the paper's defaults), reading them from TOML and
dotted overrides, validation across fields, and a run's identity. Invalid values fail at load time
with the field's dotted name, the bad value and what is allowed."""
from mqvq.config.identity import config_hash, identity
from mqvq.config.load import (deep_merge, field_help, flatten, from_dict, get_dotted, parse_override, set_dotted,
                              to_dict)
from mqvq.config.schema import (STACKFORMER_PRESETS, DataConfig, DemaskConfig, EvalConfig, ExperimentConfig, LossConfig,
                                MaskConfig, MQVAEConfig, QuantizerConfig, SamplingConfig, Stage1Config, Stage2Config,
                                Stage2TrainConfig, StackformerConfig, TrackingConfig, TrainConfig, num_kept, opt, sub)
from mqvq.config.validate import validate_eval, validate_sampling, validate_stage1, validate_stage2, validate_tracking

__all__ = ["STACKFORMER_PRESETS", "DataConfig", "DemaskConfig", "EvalConfig", "ExperimentConfig", "LossConfig", "MaskConfig",
           "MQVAEConfig", "QuantizerConfig", "SamplingConfig", "Stage1Config", "Stage2Config", "Stage2TrainConfig",
           "StackformerConfig", "TrackingConfig", "TrainConfig", "config_hash", "deep_merge", "field_help", "flatten", "from_dict", "get_dotted",
           "identity", "num_kept", "opt", "parse_override", "set_dotted", "sub", "to_dict", "validate_eval", "validate_sampling",
           "validate_stage1", "validate_stage2", "validate_tracking"]
