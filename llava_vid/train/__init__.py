"""Training: stage configs, freezing, optimizer parameter groups and LoRA (the model knows nothing of these)."""

from llava_vid.train.stages import (
    DataEntry,
    LoraSpec,
    StageConfig,
    VideoOptions,
    apply_lora,
    apply_trainable,
    gradient_accumulation_steps,
    load_stage_config,
    merge_lora,
    parameter_groups,
)

__all__ = [
    "DataEntry",
    "LoraSpec",
    "StageConfig",
    "VideoOptions",
    "apply_lora",
    "apply_trainable",
    "gradient_accumulation_steps",
    "load_stage_config",
    "merge_lora",
    "parameter_groups",
]
