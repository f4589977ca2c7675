"""Training stages: the typed stage config (``configs/train/*.yaml``), freezing, optimizer parameter
groups and LoRA.

The model knows nothing about training; everything here acts on it from outside:

* :func:`load_stage_config` reads a stage YAML plus ``key=value`` overrides into a :class:`StageConfig`
  (unknown keys are errors naming the key and the file).
* :func:`apply_trainable` sets ``requires_grad`` per model part (everything else frozen).
* :func:`parameter_groups` splits the trainable parameters into optimizer groups: the new multimodal
  layers at ``multimodal_learning_rate``, the pretrained backbones at ``learning_rate``; no weight
  decay on biases, norms and other 1-D parameters.
* :func:`apply_lora` / :func:`merge_lora` put PEFT LoRA adapters on the language model only and merge
  them back into a plain language model for saving.

Order in a training run: build the model → :func:`apply_lora` (if ``lora``) → :func:`apply_trainable`
→ :func:`parameter_groups` → the optimizer.
"""

from __future__ import annotations

import dataclasses
import re
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Union, get_args, get_origin, get_type_hints

import yaml
from torch import nn
from transformers.pytorch_utils import ALL_LAYERNORM_LAYERS
from transformers.trainer_pt_utils import get_parameter_names

from llava_vid.modes import ImageTreatment
from llava_vid.processing.templates import TemplateName
from llava_vid.yaml_files import read_yaml_mapping

StageName = Literal["pretrain", "finetune", "long_video"]
Part = Literal["projector", "compressor", "image_newline", "language_model", "vision_tower"]
PARTS: tuple[str, ...] = get_args(Part)
# The layers this project adds (freshly initialised, trained at multimodal_learning_rate); the other
# parts are pretrained backbones trained (if at all) at learning_rate, as LLaVA's mm_projector_lr does.
MULTIMODAL_PARTS: frozenset[str] = frozenset({"projector", "compressor", "image_newline"})
# Where each part lives on LlavaVidForConditionalGeneration (attribute name = state-dict prefix).
PART_ATTRIBUTES: dict[str, str] = {
    "vision_tower": "vision_tower",
    "projector": "projector",
    "compressor": "video_compressor",
    "image_newline": "image_newline",
    "language_model": "language_model",
}
LrScheduler = Literal["cosine", "linear", "constant", "constant_with_warmup"]
Precision = Literal["auto", "bf16", "fp16", "fp32"]
AttentionImplementation = Literal["auto", "flash_attention_2", "sdpa", "eager"]
FinalWeights = Literal["full", "multimodal"]


# ------------------------------------------------------------------------------------------ config
@dataclass
class VideoOptions:
    """How the videos of one data set are sampled (every video part of it gets these)."""

    fps: float | None = None
    """Frames per second of video time (default 1.0 when neither ``fps`` nor ``num_frames`` is given)."""
    num_frames: int | None = None
    """Frames spread evenly over the whole video (instead of ``fps``)."""
    max_frames: int | None = None
    """Upper bound on the frames of one video (thinned evenly)."""
    content_grid: int | None = None
    """Content tokens per frame side (g: 1 + g² tokens per frame); ``None``: the model's default."""

    def __post_init__(self) -> None:
        from llava_vid.processing.video import FrameSampling

        FrameSampling(fps=self.fps, num_frames=self.num_frames, max_frames=self.max_frames)  # raises naming the field
        if self.content_grid is not None and self.content_grid < 1:
            raise ValueError(f"content_grid must be at least 1, got {self.content_grid}")

    def as_options(self) -> dict[str, Any]:
        """The set fields, as a video part's options."""
        return {key: value for key, value in dataclasses.asdict(self).items() if value is not None}


@dataclass
class DataEntry:
    """One training data set; the data layer reads these (formats are its business)."""

    path: str
    """Annotation file (LLaVA JSON / JSONL) or data set folder."""
    image_root: str | None = None
    """Folder the entries' image paths are relative to."""
    video_root: str | None = None
    """Folder the entries' video paths are relative to."""
    ratio: float = 1.0
    """Fraction of this data set to use per epoch (1.0 = all of it; >1 repeats it)."""
    video: VideoOptions = field(default_factory=VideoOptions)
    """Frame sampling of this data set's videos."""


@dataclass
class LoraSpec:
    """PEFT LoRA on the language model only (the multimodal parts stay full-rank)."""

    r: int = 128
    """Rank of the adapters (LLaVA-1.5's LoRA recipe: 128)."""
    alpha: int = 256
    """LoRA scaling numerator: updates are scaled by alpha / r."""
    dropout: float = 0.05
    """Dropout on the adapters' input."""
    target_modules: list[str] | str = "all-linear"
    """Module names to adapt, or PEFT's ``"all-linear"`` (every Linear except the LM head)."""


@dataclass
class StageConfig:
    """One training stage, as written in ``configs/train/*.yaml``; unknown keys are errors."""

    stage: StageName
    """Which stage this is: ``pretrain`` (alignment), ``finetune`` (instructions) or ``long_video``."""
    model: str
    """Model preset YAML (``configs/model/*.yaml``) or a saved model folder (e.g. the previous stage's output)."""
    output_dir: str
    """Where checkpoints, the final weights and the resolved config are written."""
    data: list[DataEntry] = field(default_factory=list)
    """Training data sets, mixed by their ``ratio``."""
    template: TemplateName = "vicuna_v1"
    """Chat template: ``plain`` (stage 1 captions) or ``vicuna_v1``."""
    image_treatment: ImageTreatment = "auto"
    """How images are shown: ``auto`` (AnyRes tiles for a lone image, global views beside other media),
    ``anyres`` or ``global`` (global views only — e.g. the AnyRes ablation)."""
    trainable: list[Part] = field(default_factory=lambda: ["projector", "compressor"])
    """Parts that train; every other parameter is frozen (the vision tower unless listed)."""
    learning_rate: float = 2e-5
    """Peak learning rate of the pretrained backbones (language model, and the vision tower if it trains)."""
    multimodal_learning_rate: float | None = None
    """Peak learning rate of projector, compressor and image newline; ``None`` means ``learning_rate``."""
    weight_decay: float = 0.0
    """AdamW weight decay (never applied to biases, norms or other 1-D parameters)."""
    warmup_ratio: float = 0.03
    """Fraction of the steps spent warming the learning rate up linearly."""
    lr_scheduler: LrScheduler = "cosine"
    """Learning-rate schedule after warmup (a transformers ``SchedulerType`` name)."""
    num_train_epochs: float = 1.0
    """Passes over the data."""
    max_steps: int = -1
    """Stop after this many optimizer steps (overrides ``num_train_epochs`` when positive)."""
    global_batch_size: int = 128
    """Samples per optimizer step over all processes: per_device × world size × accumulation."""
    per_device_batch_size: int = 16
    """Samples per forward pass on one device."""
    max_length: int = 2048
    """Longest sample in tokens (text + visual); longer ones are skipped and counted."""
    max_skip_fraction: float = 0.01
    """Fail the run when more than this fraction of samples is skipped (unreadable, too long)."""
    gradient_checkpointing: bool = True
    """Recompute activations in the backward pass to save memory."""
    precision: Precision = "auto"
    """``auto``: bf16 on a GPU that supports it, else fp32."""
    attn_implementation: AttentionImplementation = "auto"
    """``auto``: flash_attention_2 on a GPU when installed, else sdpa."""
    lora: LoraSpec | None = None
    """LoRA on the language model instead of full fine-tuning; merged before the final save."""
    deepspeed: str | None = None
    """DeepSpeed JSON (``configs/deepspeed/zero2.json`` / ``zero3.json``) or ``None`` for plain DDP."""
    seed: int = 42
    """Seed of data order, dropout and fresh layers."""
    logging_steps: int = 1
    """Log every this many optimizer steps."""
    save_steps: int = 1000
    """Checkpoint every this many optimizer steps."""
    save_total_limit: int | None = 1
    """Keep at most this many checkpoints (``None``: all)."""
    dataloader_num_workers: int = 4
    """Worker processes per device that load and preprocess samples."""
    group_by_modality_length: bool = True
    """Batch samples of one modality (text / image / images / video) and similar length together
    (lengths from the real visual-token counts); ``false``: plain random order."""
    length_group_steps: int = 1
    """With ``group_by_modality_length``: how many optimizer steps' samples of one modality are sorted by
    length together before they are cut into steps. 1 (LLaVA's grouping): a step is a random draw from
    its modality; more: a step's samples are alike in length too (less padding where one modality mixes
    short and long samples, e.g. clips and hour-long videos); the steps stay in random order."""
    resume_from_checkpoint: str | None = "auto"
    """``auto``: continue from the newest *complete* checkpoint in ``output_dir`` if there is one;
    a checkpoint folder: continue from it; ``null``: start afresh."""
    final_weights: FinalWeights = "full"
    """``full``: the whole model in ``final/``; ``multimodal``: only the trained multimodal layers
    (projector, compressor, newline) plus what rebuilds the frozen rest (stage 1; stage 2 starts from it)."""

    vision_feature_cache_gib: float = 0.0
    """Memory (GiB) for the frozen vision tower's output, computed in the first epoch and looked up in
    the later ones (keyed by each view's pixels; see :class:`~llava_vid.modeling.vision.VisionFeatureCache`);
    0: off. For small towers (the embedded demo); needs a frozen tower and cannot be used with ZeRO-3."""

    def __post_init__(self) -> None:
        if not self.trainable:
            raise ValueError("trainable is empty: at least one part must train")
        if len(set(self.trainable)) != len(self.trainable):
            raise ValueError(f"trainable lists a part twice: {self.trainable}")
        if self.lora is not None and "language_model" not in self.trainable:
            raise ValueError("lora adapts the language model, so trainable must include 'language_model'")
        if self.multimodal_learning_rate is None:
            self.multimodal_learning_rate = self.learning_rate
        for name in ("global_batch_size", "per_device_batch_size", "max_length", "logging_steps", "save_steps", "length_group_steps"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be at least 1, got {getattr(self, name)}")
        if not 0.0 <= self.warmup_ratio < 1.0:
            raise ValueError(f"warmup_ratio must be in [0, 1), got {self.warmup_ratio}")
        if not 0.0 <= self.max_skip_fraction <= 1.0:
            raise ValueError(f"max_skip_fraction must be in [0, 1], got {self.max_skip_fraction}")
        if self.vision_feature_cache_gib < 0:
            raise ValueError(f"vision_feature_cache_gib must be 0 (off) or more, got {self.vision_feature_cache_gib}")
        if self.vision_feature_cache_gib > 0 and "vision_tower" in self.trainable:
            raise ValueError(
                "vision_feature_cache_gib reuses the frozen vision tower's output, but trainable lists "
                "vision_tower; set vision_feature_cache_gib: 0"
            )
        backbones = sorted(set(self.trainable) - MULTIMODAL_PARTS)
        if self.final_weights == "multimodal" and backbones:
            raise ValueError(
                f"final_weights: multimodal saves only {sorted(MULTIMODAL_PARTS)}, but {backbones} train too "
                "and would be lost; use final_weights: full"
            )

    def gradient_accumulation_steps(self, world_size: int) -> int:
        """``global_batch_size / (per_device_batch_size × world_size)``; an error unless it divides exactly."""
        return gradient_accumulation_steps(self.global_batch_size, self.per_device_batch_size, world_size)

    def to_dict(self) -> dict[str, Any]:
        """Plain data, for saving the resolved config beside the weights (``yaml.safe_dump`` it)."""
        return dataclasses.asdict(self)


def gradient_accumulation_steps(global_batch_size: int, per_device_batch_size: int, world_size: int) -> int:
    """Micro-batches per optimizer step so that every step sees exactly ``global_batch_size`` samples."""
    if world_size < 1 or per_device_batch_size < 1:
        raise ValueError(f"world_size ({world_size}) and per_device_batch_size ({per_device_batch_size}) must be ≥ 1")
    per_pass = per_device_batch_size * world_size
    if global_batch_size % per_pass:
        raise ValueError(
            f"global_batch_size={global_batch_size} is not a multiple of per_device_batch_size="
            f"{per_device_batch_size} × world_size={world_size} = {per_pass}; change per_device_batch_size "
            f"or the number of processes"
        )
    return global_batch_size // per_pass


def load_stage_config(path: str | Path, overrides: typing.Sequence[str] = ()) -> StageConfig:
    """Read a stage YAML and apply ``key=value`` overrides.

    Keys are dotted for nested sections (``lora.r=16``, ``data.0.ratio=0.5``); values are parsed as
    YAML (``learning_rate=1e-4``, ``trainable=[projector,language_model]``, ``lora=null``). Every
    value is checked against the field's type; errors name the file and the key.
    """
    path = Path(path)
    raw = read_yaml_mapping(path, "stage config")
    for override in overrides:
        key, value = _parse_override(override, path)
        _set_dotted(raw, key, value, path)
    return _build(StageConfig, raw, str(path))


def _parse_override(override: str, path: Path) -> tuple[str, Any]:
    key, sep, text = override.partition("=")
    key = key.strip()
    if not sep or not key:
        raise ValueError(f"{path}: override {override!r} is not key=value")
    try:
        value = yaml.safe_load(text) if text.strip() else None
    except yaml.YAMLError as error:
        raise ValueError(f"{path}: override {key}: cannot parse value {text!r} ({error})") from error
    return key, value


def _set_dotted(raw: dict, key: str, value: Any, path: Path) -> None:
    """Set ``raw[a][b]… = value`` for ``key = "a.b…"``, checking each step against the dataclasses."""
    parts = key.split(".")
    node: Any = raw
    cls: Any = StageConfig
    for depth, part in enumerate(parts):
        last = depth == len(parts) - 1
        if isinstance(node, list):
            if not part.isdigit() or int(part) >= len(node):
                raise ValueError(f"{path}: override {key}: {part!r} is not an index of a {len(node)}-entry list")
            index: Any = int(part)
            cls = _list_item_type(cls)
        else:
            hints = get_type_hints(cls)
            if part not in hints:
                where = ".".join(parts[:depth]) or "the top level"
                raise ValueError(
                    f"{path}: unknown key {key!r} ({part!r} is not a field of {where}; allowed: {sorted(hints)})"
                )
            index = part
            cls = hints[part]
        if last:
            node[index] = value
            return
        child = node[index] if isinstance(node, list) else node.get(index)
        if child is None:  # e.g. lora.r=16 where the YAML says lora: null — start the section afresh
            child = {}
            node[index] = child
        node = child
        cls = _strip_optional(cls)


def _strip_optional(annotation: Any) -> Any:
    if get_origin(annotation) in (Union, types.UnionType):
        args = [arg for arg in get_args(annotation) if arg is not type(None)]
        if len(args) == 1:
            return args[0]
    return annotation


def _list_item_type(annotation: Any) -> Any:
    annotation = _strip_optional(annotation)
    return get_args(annotation)[0] if get_origin(annotation) is list else Any


def _build(cls: type, data: Any, where: str) -> Any:
    if not isinstance(data, dict):
        raise ValueError(f"{where}: expected a mapping, got {type(data).__name__}")
    hints = get_type_hints(cls)
    unknown = sorted(set(data) - set(hints))
    if unknown:
        raise ValueError(f"{where}: unknown key(s) {unknown}; allowed: {sorted(hints)}")
    values = {name: _coerce(value, hints[name], f"{where}: {name}") for name, value in data.items()}
    try:
        return cls(**values)
    except (TypeError, ValueError) as error:
        raise ValueError(f"{where}: {error}") from error


def _coerce(value: Any, annotation: Any, where: str) -> Any:
    """Check ``value`` against a field annotation (and turn ints / YAML-1.1 strings like ``1e-3`` into floats)."""
    origin = get_origin(annotation)
    if origin in (Union, types.UnionType):
        errors = []
        for option in get_args(annotation):
            try:
                return _coerce(value, option, where)
            except ValueError as error:
                errors.append(str(error).removeprefix(f"{where}: "))
        raise ValueError(f"{where}: {value!r} matches none of: {'; '.join(errors)}")
    if annotation is type(None):
        if value is not None:
            raise ValueError(f"{where}: expected null, got {value!r}")
        return None
    if annotation is Any:
        return value
    if origin is Literal:
        if value not in get_args(annotation):
            raise ValueError(f"{where}: {value!r} is not one of {list(get_args(annotation))}")
        return value
    if origin is list:
        if not isinstance(value, list):
            raise ValueError(f"{where}: expected a list, got {value!r}")
        (item,) = get_args(annotation)
        return [_coerce(entry, item, f"{where}[{index}]") for index, entry in enumerate(value)]
    if dataclasses.is_dataclass(annotation):
        return _build(annotation, value, where)
    if annotation is bool:
        if not isinstance(value, bool):
            raise ValueError(f"{where}: expected true/false, got {value!r}")
        return value
    if annotation is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ValueError(f"{where}: expected an integer, got {value!r}")
        return value
    if annotation is float:
        if isinstance(value, bool):
            raise ValueError(f"{where}: expected a number, got {value!r}")
        if isinstance(value, (int, float)):
            return float(value)
        if isinstance(value, str):  # PyYAML (YAML 1.1) reads 1e-3 as a string
            try:
                return float(value)
            except ValueError:
                pass
        raise ValueError(f"{where}: expected a number, got {value!r}")
    if annotation is str:
        if not isinstance(value, str):
            raise ValueError(f"{where}: expected a string, got {value!r}")
        return value
    raise TypeError(f"{where}: unsupported annotation {annotation!r}")  # a bug in this module, not in the YAML


# ------------------------------------------------------------------------------------------ freezing
def _part_tensors(model: nn.Module, part: str) -> list[tuple[str, nn.Parameter]] | None:
    """``(name, parameter)`` of one part (names as in ``model.named_parameters()``), or ``None`` when absent."""
    attribute = PART_ATTRIBUTES[part]
    value = getattr(model, attribute, None)
    if value is None:
        return None
    if isinstance(value, nn.Parameter):
        return [(attribute, value)]
    return [(f"{attribute}.{name}", parameter) for name, parameter in value.named_parameters()]


def part_of(name: str) -> str | None:
    """The part a parameter name (``model.named_parameters()``) belongs to, or ``None``."""
    for part, attribute in PART_ATTRIBUTES.items():
        if name == attribute or name.startswith(attribute + "."):
            return part
    return None


def _lora_prefix(module: nn.Module) -> str | None:
    """PEFT's adapter-parameter prefix (``"lora_"``) when ``module`` is a PEFT model, else ``None``."""
    try:
        from peft import PeftModel
    except ImportError:  # peft is optional; without it no module can be a PeftModel
        return None
    if not isinstance(module, PeftModel):
        return None
    return getattr(module.base_model, "prefix", "lora_")


def apply_trainable(model: nn.Module, trainable: typing.Iterable[str]) -> dict[str, int]:
    """Make exactly the listed parts trainable and freeze everything else.

    With LoRA applied (:func:`apply_lora`), ``"language_model"`` trains the adapters only, not the base
    weights. Returns the number of trainable parameter elements per listed part.

    Raises:
        ValueError: ``trainable`` is empty, names an unknown part, or a part this model lacks (e.g.
            ``"compressor"`` on a model without videos).
    """
    trainable = list(trainable)
    if not trainable:
        raise ValueError("trainable is empty: at least one part must train")
    unknown = sorted(set(trainable) - set(PARTS))
    if unknown:
        raise ValueError(f"unknown part(s) {unknown}; expected some of {list(PARTS)}")
    tensors = {part: _part_tensors(model, part) for part in trainable}
    absent = [part for part, found in tensors.items() if found is None]
    if absent:
        attributes = [PART_ATTRIBUTES[part] for part in absent]
        raise ValueError(f"trainable lists {absent}, but this model has no {attributes} (it is None or missing)")

    model.requires_grad_(False)
    counts = {}
    for part in trainable:
        lora_prefix = _lora_prefix(model.language_model) if part == "language_model" else None
        count = 0
        for name, parameter in tensors[part]:
            if lora_prefix is None or lora_prefix in name:
                parameter.requires_grad_(True)
                # Under ZeRO-3 a parameter built inside zero.Init is a shard here; ds_numel is its full size.
                count += getattr(parameter, "ds_numel", parameter.numel())
        counts[part] = count
    return counts


# ------------------------------------------------------------------------------------------ optimizer groups
# Names the Trainer keeps out of weight decay (transformers 5: Trainer.get_decay_parameter_names).
NO_DECAY_NAME_PATTERNS = [r"bias", r"layernorm", r"rmsnorm", r"(?:^|\.)norm(?:$|\.)", r"_norm(?:$|\.)"]


def decay_parameter_names(model: nn.Module) -> set[str]:
    """Parameters that get weight decay: the Trainer's rule (not inside a LayerNorm, no bias/norm in the
    name) plus ours: no 1-D parameter decays either (norm scales under other names, the image newline)."""
    by_trainer = get_parameter_names(model, [nn.LayerNorm, *ALL_LAYERNORM_LAYERS], NO_DECAY_NAME_PATTERNS)
    dims = {name: parameter.ndim for name, parameter in model.named_parameters()}
    return {name for name in by_trainer if dims.get(name, 0) >= 2}


def parameter_groups(
    model: nn.Module, *, learning_rate: float, multimodal_learning_rate: float, weight_decay: float
) -> list[dict[str, Any]]:
    """Optimizer parameter groups of the trainable parameters.

    Up to four groups, ``{"name", "params", "lr", "weight_decay"}``: multimodal parts (projector,
    compressor, image newline) at ``multimodal_learning_rate``, the backbones (language model, vision
    tower) at ``learning_rate``, each split into decayed and not-decayed parameters. Empty groups are
    left out; every trainable parameter is in exactly one group.
    """
    decayed = decay_parameter_names(model)
    groups: dict[tuple[bool, bool], list[nn.Parameter]] = {}
    for name, parameter in model.named_parameters():
        if not parameter.requires_grad:
            continue
        part = part_of(name)
        if part is None:
            raise ValueError(f"trainable parameter {name!r} belongs to no known part {list(PART_ATTRIBUTES.values())}")
        groups.setdefault((part in MULTIMODAL_PARTS, name in decayed), []).append(parameter)
    result = []
    for multimodal in (True, False):
        for decay in (True, False):
            params = groups.get((multimodal, decay))
            if params:
                result.append(
                    {
                        "name": f"{'multimodal' if multimodal else 'backbone'}_{'decay' if decay else 'no_decay'}",
                        "params": params,
                        "lr": multimodal_learning_rate if multimodal else learning_rate,
                        "weight_decay": weight_decay if decay else 0.0,
                    }
                )
    if not result:
        raise ValueError("the model has no trainable parameters; call apply_trainable first")
    return result


# ------------------------------------------------------------------------------------------ LoRA
def apply_lora(model: nn.Module, lora: LoraSpec) -> nn.Module:
    """Wrap ``model.language_model`` in PEFT LoRA adapters (in place; returns ``model``).

    Only the language model is adapted, so the projector and compressor stay ordinary full-rank
    parameters; :func:`apply_trainable` then decides what trains.
    """
    from peft import LoraConfig, get_peft_model

    if _lora_prefix(model.language_model) is not None:
        raise ValueError("the language model already has LoRA adapters")
    config = LoraConfig(
        r=lora.r,
        lora_alpha=lora.alpha,
        lora_dropout=lora.dropout,
        target_modules=lora.target_modules,
        bias="none",
    )
    model.language_model = get_peft_model(model.language_model, config)
    return model


def merge_lora(model: nn.Module) -> nn.Module:
    """Fold the LoRA adapters into the language model's weights and drop the PEFT wrapper (in place;
    returns ``model``), so the state dict has the plain keys again and saves like a fully fine-tuned model."""
    if _lora_prefix(model.language_model) is None:
        raise ValueError("the language model has no LoRA adapters to merge")
    model.language_model = model.language_model.merge_and_unload()
    return model
