"""One training stage end to end: :func:`train` turns a :class:`~llava_vid.train.stages.StageConfig` into a
saved model folder.

The transformers ``Trainer`` runs the loop (DDP, DeepSpeed, accumulation, schedules, checkpoints); this
module only adds what is ours:

* building the model and processor (a preset YAML or a saved folder), LoRA, freezing, checkpointing;
* the optimizer from :func:`~llava_vid.train.stages.parameter_groups` (two learning rates, no decay on
  1-D parameters) — :meth:`StageTrainer.create_optimizer`;
* skipped samples: each collated batch carries its skip counts (``batch["skipped"]``, counted in the
  DataLoader workers); :meth:`StageTrainer.get_batch_samples` pops them before the model sees the
  batch, adds them to one :class:`~llava_vid.data.collator.SkipCounter` in the training process and
  checks ``max_skip_fraction`` once per optimizer step. The step's counts (samples, skips by reason,
  tokens) are summed over all processes first (one small all-reduce per optimizer step), so every
  process checks — and the summary reports — the run's totals.
* the order of samples: :class:`~llava_vid.data.sampler.ModalityLengthGroupedSampler` over the
  dataset's real token lengths and modalities (``group_by_modality_length``) —
  :meth:`StageTrainer._get_train_sampler`.
* periodic logs: each training log also carries samples/s and tokens/s since the previous log and the
  running skip count (:meth:`StageTrainer.log`); the Trainer's progress bar prints them.
* checkpoints: :mod:`llava_vid.train.checkpoints` marks each one complete after every process wrote it
  and rotates old ones; a run resumes from the newest *complete* checkpoint (``resume_from_checkpoint``).
* the loss from the logits of the labelled positions only (``logits_to_keep`` =
  :func:`~llava_vid.modeling.llava_vid.labelled_positions`): the same loss without projecting every
  visual and prompt token onto the vocabulary — :meth:`StageTrainer.compute_loss`.
* empty batches (every sample skipped): :meth:`StageTrainer.compute_loss` returns ``0 × Σ trainable
  parameters`` — a zero loss that still has a graph over every trainable parameter, so the backward
  pass, DeepSpeed's micro-step count and DDP's gradient reduction stay in step across processes. The
  logged loss of that step is averaged with this zero (it reads slightly low); the gradient is exact.
* the final save: LoRA merged, the full state dict gathered from every process (ZeRO-3: its 16-bit
  weights), then weights (safetensors; all of them, or only the multimodal layers with
  ``final_weights: multimodal``) + processor + the resolved ``train_config.yaml`` written into a
  temporary sibling folder and renamed to ``output_dir/final``, so a crash never leaves a folder that
  looks complete.
"""

from __future__ import annotations

import json
import os
import time
from collections import Counter
from pathlib import Path
from typing import Any, Iterator

import torch
import yaml
from torch import nn
from transformers import Trainer, TrainerCallback, TrainingArguments

from llava_vid.atomic import write_folder_atomically
from llava_vid.data.collator import SkipCounter, TrainingCollator, pop_skipped
from llava_vid.data.dataset import SKIP_REASONS, ConversationDataset
from llava_vid.data.formats import DatasetSpec
from llava_vid.data.sampler import ModalityLengthGroupedSampler
from llava_vid.modeling.llava_vid import labelled_positions
from llava_vid.modeling.vision import VisionFeatureCache
from llava_vid.processing.processor import IGNORE_INDEX
from llava_vid.train.checkpoints import (
    CheckpointCompletion,
    describe_base,
    latest_complete_checkpoint,
    load_trained_folder,
    read_progress,
    save_final_folder,
)
from llava_vid.train.stages import StageConfig, apply_lora, apply_trainable, merge_lora, parameter_groups

__all__ = ["StageTrainer", "build_training_arguments", "load_model_and_processor", "train"]

FINAL_DIR = "final"
CONFIG_FILE = "train_config.yaml"
LOSS_CURVE = "loss_curve.png"


# ------------------------------------------------------------------------------------------ building
def _resolved_attention(config: StageConfig) -> str:
    if config.attn_implementation != "auto":
        return config.attn_implementation
    from llava_vid.inference.runtime import pick_runtime

    return pick_runtime().attn_implementation


def load_model_and_processor(config: StageConfig):
    """The stage's starting model (fp32 master weights) and processor: a saved folder (e.g. the previous
    stage's ``final``, full or multimodal-only) or a model preset YAML (fresh multimodal layers)."""
    source = Path(config.model)
    attention = _resolved_attention(config)
    if source.is_dir():
        return load_trained_folder(source, dtype=torch.float32, attn_implementation=attention)
    if source.is_file():
        from llava_vid.build import build_model_and_processor, load_model_spec

        model, processor = build_model_and_processor(load_model_spec(source))
        model.set_attn_implementation(attention)
        return model, processor
    raise ValueError(f"model: {source} is neither a model preset YAML nor a saved model folder")


def _precision_flags(config: StageConfig) -> dict[str, bool]:
    """``bf16``/``fp16`` for TrainingArguments (mixed precision over fp32 master weights)."""
    cuda = torch.cuda.is_available()
    precision = config.precision
    if precision == "auto":
        precision = "bf16" if cuda and torch.cuda.is_bf16_supported() else "fp32"
    if precision == "fp16" and not cuda:
        raise ValueError("precision: fp16 needs a CUDA GPU; use fp32 (or bf16) on a CPU")
    return {"bf16": precision == "bf16", "fp16": precision == "fp16"}


def build_training_arguments(config: StageConfig, world_size: int | None = None) -> TrainingArguments:
    """transformers ``TrainingArguments`` for a stage; accumulation makes every optimizer step see
    exactly ``global_batch_size`` samples over ``world_size`` processes (default ``$WORLD_SIZE`` or 1)."""
    world_size = int(os.environ.get("WORLD_SIZE", "1")) if world_size is None else world_size
    return TrainingArguments(
        output_dir=config.output_dir,
        per_device_train_batch_size=config.per_device_batch_size,
        gradient_accumulation_steps=config.gradient_accumulation_steps(world_size),
        learning_rate=config.learning_rate,
        weight_decay=config.weight_decay,
        warmup_steps=float(config.warmup_ratio),  # a float in [0, 1) is a fraction of the steps
        lr_scheduler_type=config.lr_scheduler,
        num_train_epochs=config.num_train_epochs,
        max_steps=config.max_steps,
        logging_steps=config.logging_steps,
        save_steps=config.save_steps,
        save_total_limit=None,  # CheckpointCompletion rotates: only ever after the new one is complete
        seed=config.seed,
        data_seed=config.seed,
        dataloader_num_workers=config.dataloader_num_workers,
        remove_unused_columns=False,  # the model takes media keys the Trainer cannot see in the signature
        report_to=[],
        use_cpu=not torch.cuda.is_available(),
        deepspeed=config.deepspeed,
        **_precision_flags(config),
    )


# ------------------------------------------------------------------------------------------ trainer
class RunTotals:
    """The run's counters over all processes: samples seen, skipped by reason, tokens trained."""

    FIELDS = ("seen", *SKIP_REASONS, "input_tokens", "target_tokens")

    def __init__(self, min_samples: int = 20) -> None:
        self.skips = SkipCounter(min_samples)
        self.input_tokens = 0  # non-padding tokens of the batches trained on (text + visual placeholders)
        self.target_tokens = 0  # tokens with a loss (unmasked labels)

    def step_vector(self, batches: list[dict[str, Any]], skipped: list[dict[str, int]]) -> list[int]:
        """One process's counts for one optimizer step, in :attr:`FIELDS` order."""
        counts = dict.fromkeys(self.FIELDS, 0)
        for batch, batch_skips in zip(batches, skipped, strict=True):
            for reason, count in batch_skips.items():
                counts[reason] += int(count)
            counts["seen"] += sum(batch_skips.values())
            if not batch.get("empty"):
                counts["seen"] += len(batch["input_ids"])
                counts["input_tokens"] += int(batch["attention_mask"].sum())
                counts["target_tokens"] += int((batch["labels"] != IGNORE_INDEX).sum())
        return [counts[name] for name in self.FIELDS]

    def add(self, vector: list[int]) -> None:
        counts = dict(zip(self.FIELDS, vector, strict=True))
        skipped = {reason: counts[reason] for reason in SKIP_REASONS if counts[reason]}
        self.skips.update(skipped, kept=counts["seen"] - sum(skipped.values()))
        self.input_tokens += counts["input_tokens"]
        self.target_tokens += counts["target_tokens"]

    def to_dict(self) -> dict[str, Any]:
        return {
            "seen": self.skips.seen,
            "skipped": dict(self.skips.reasons),
            "input_tokens": self.input_tokens,
            "target_tokens": self.target_tokens,
        }

    def load(self, saved: dict[str, Any]) -> None:
        """Continue from a checkpoint's counters (:meth:`to_dict`)."""
        self.skips.reasons = Counter(saved["skipped"])
        self.skips.seen = int(saved["seen"])
        self.input_tokens = int(saved["input_tokens"])
        self.target_tokens = int(saved["target_tokens"])


class StageTrainer(Trainer):
    """``Trainer`` with our parameter groups, sampler, skip accounting and logs (see the module docstring)."""

    def __init__(self, *args: Any, stage_config: StageConfig, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.stage_config = stage_config
        self.totals = RunTotals()
        self._last_log = (time.perf_counter(), 0, 0)  # (time, samples seen, tokens) at the previous log

    # ---------------------------------------------------------------- optimizer and data order
    def create_optimizer(self, model: nn.Module | None = None) -> torch.optim.Optimizer:
        if self.optimizer is None:
            groups = parameter_groups(
                self.model,
                learning_rate=self.stage_config.learning_rate,
                multimodal_learning_rate=self.stage_config.multimodal_learning_rate,
                weight_decay=self.stage_config.weight_decay,
            )
            # torch's AdamW keeps extra group keys ("name"), which makes logs and checkpoints readable.
            self.optimizer = torch.optim.AdamW(
                groups,
                lr=self.stage_config.learning_rate,
                betas=(self.args.adam_beta1, self.args.adam_beta2),
                eps=self.args.adam_epsilon,
            )
        return self.optimizer

    def _get_train_sampler(self, train_dataset: Any = None) -> torch.utils.data.Sampler | None:
        dataset = self.train_dataset if train_dataset is None else train_dataset
        if not self.stage_config.group_by_modality_length or not isinstance(dataset, ConversationDataset):
            return super()._get_train_sampler(train_dataset)
        return ModalityLengthGroupedSampler(
            dataset.sample_lengths(),
            dataset.sample_modalities(),
            batch_size=self.args.per_device_train_batch_size,
            world_size=self.args.world_size,
            accumulation_steps=self.args.gradient_accumulation_steps,
            seed=self.args.seed,
            length_group_steps=self.stage_config.length_group_steps,
        )

    # ---------------------------------------------------------------- skips and counters
    def get_batch_samples(
        self, epoch_iterator: Iterator, num_batches: int, device: torch.device
    ) -> tuple[list, torch.Tensor | int | None]:
        """Take the micro-batches of one optimizer step, strip their skip counts, add the step's counts of
        all processes to the run's totals and check the skip fraction; then let the Trainer count the
        target tokens as usual."""
        batches = []
        for _ in range(num_batches):
            try:
                batches.append(next(epoch_iterator))
            except StopIteration:
                break
        skipped = [pop_skipped(batch) for batch in batches]
        local = torch.tensor(self.totals.step_vector(batches, skipped), dtype=torch.long, device=self.args.device)
        self.totals.add(self.accelerator.reduce(local, reduction="sum").tolist())  # same totals on every process
        self.totals.skips.check(self.stage_config.max_skip_fraction)
        # The Trainer reads batch["labels"] of every micro-batch to normalise the loss by the step's
        # target tokens; an empty batch holds none, so it gets an empty label tensor (0 targets).
        for batch in batches:
            if batch.get("empty"):
                batch["labels"] = torch.empty(0, 1, dtype=torch.long)
        return super().get_batch_samples(iter(batches), num_batches, device)

    def compute_loss(
        self,
        model: nn.Module,
        inputs: dict[str, Any],
        return_outputs: bool = False,
        num_items_in_batch: torch.Tensor | int | None = None,
    ):
        if inputs.get("empty"):
            # Zero, but with a graph over every trainable parameter (see the module docstring).
            loss = sum((parameter * 0).sum() for parameter in model.parameters() if parameter.requires_grad)
            return (loss, None) if return_outputs else loss
        if "labels" in inputs:
            # Logits only where the loss reads them: most positions are visual or prompt tokens.
            inputs = {**inputs, "logits_to_keep": labelled_positions(inputs["labels"])}
        return super().compute_loss(model, inputs, return_outputs=return_outputs, num_items_in_batch=num_items_in_batch)

    def log(self, logs: dict[str, float], start_time: float | None = None) -> None:
        """Add throughput since the previous log and the running skip count to training logs."""
        if "loss" in logs:
            now, seen, tokens = time.perf_counter(), self.totals.skips.seen, self.totals.input_tokens
            then, seen_before, tokens_before = self._last_log
            elapsed = max(now - then, 1e-9)
            logs["samples_per_second"] = round((seen - seen_before) / elapsed, 2)
            logs["tokens_per_second"] = round((tokens - tokens_before) / elapsed, 1)
            logs["samples_skipped"] = self.totals.skips.total
            self._last_log = (now, seen, tokens)
        super().log(logs, start_time)


# ------------------------------------------------------------------------------------------ the stage
def _resume_point(config: StageConfig, output_dir: Path) -> Path | None:
    """The checkpoint to continue from (``resume_from_checkpoint``), or ``None`` to start afresh."""
    setting = config.resume_from_checkpoint
    if setting is None:
        return None
    if setting == "auto":
        return latest_complete_checkpoint(output_dir)
    checkpoint = Path(setting)
    read_progress(checkpoint)  # refuses a folder that was cut off mid-save
    return checkpoint


def _deepspeed_stage(config: StageConfig) -> int | None:
    if config.deepspeed is None:
        return None
    with open(config.deepspeed) as file:
        return int(json.load(file).get("zero_optimization", {}).get("stage", 0))


def train(config: StageConfig, callbacks: list[TrainerCallback] | None = None) -> Path:
    """Run one training stage; returns ``output_dir/final`` (weights, processor, ``train_config.yaml``).

    ``callbacks``: extra transformers ``TrainerCallback`` objects (logging, early stopping, …).
    """
    output_dir = Path(config.output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    if config.vision_feature_cache_gib > 0 and _deepspeed_stage(config) == 3:
        raise ValueError(
            "vision_feature_cache_gib with ZeRO-3: every process must run the sharded vision tower together, "
            "so one process cannot skip it for cached views; use configs/deepspeed/zero2.json or set "
            "vision_feature_cache_gib: 0"
        )
    if config.lora is not None and _deepspeed_stage(config) == 3:
        raise ValueError(
            "lora with ZeRO-3: the adapters cannot be merged into sharded weights; use "
            "configs/deepspeed/zero2.json with LoRA (LoRA's memory saving makes ZeRO-3 unnecessary)"
        )
    args = build_training_arguments(config)  # first: it sets up the distributed state DeepSpeed needs
    resume_from = _resume_point(config, output_dir)

    model, processor = load_model_and_processor(config)
    saved_max_length = processor.tokenizer.model_max_length
    processor.tokenizer.model_max_length = config.max_length  # longer samples are skipped as too_long
    if config.lora is not None:
        apply_lora(model, config.lora)
    counts = apply_trainable(model, config.trainable)
    if config.vision_feature_cache_gib > 0:
        model.vision_feature_cache = VisionFeatureCache(int(config.vision_feature_cache_gib * 2**30))
    if config.gradient_checkpointing:
        # Non-reentrant checkpointing needs no input that requires grad; the hook keeps reentrant
        # checkpointing (if a library picks it) correct when the embeddings are frozen.
        model.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})
        if not model.get_input_embeddings().weight.requires_grad:
            model.enable_input_require_grads()

    specs = [
        DatasetSpec(
            path=entry.path,
            image_root=entry.image_root,
            video_root=entry.video_root,
            ratio=entry.ratio,
            video_options=entry.video.as_options(),
        )
        for entry in config.data
    ]
    if not specs:
        raise ValueError("data is empty: a stage needs at least one data set")
    dataset = ConversationDataset(
        specs, processor, template=config.template, seed=config.seed, image_treatment=config.image_treatment
    )
    collator = TrainingCollator(processor.tokenizer.pad_token_id, max_skip_fraction=config.max_skip_fraction)

    trainer = StageTrainer(
        model=model,
        args=args,
        train_dataset=dataset,
        data_collator=collator,
        stage_config=config,
        callbacks=list(callbacks or []),
    )
    trainer.add_callback(
        CheckpointCompletion(
            output_dir,
            keep=config.save_total_limit,
            progress=trainer.totals.to_dict,
            barrier=trainer.accelerator.wait_for_everyone,
            is_main_process=trainer.is_world_process_zero,
        )
    )
    if resume_from is not None:
        trainer.totals.load(read_progress(resume_from))
        if trainer.is_world_process_zero():
            print(f"resuming from {resume_from} (step {read_progress(resume_from)['global_step']})")
    if trainer.is_world_process_zero():
        (output_dir / CONFIG_FILE).write_text(yaml.safe_dump(config.to_dict(), sort_keys=False))
    trainer.train(resume_from_checkpoint=str(resume_from) if resume_from is not None else None)
    trainer.save_state()  # output_dir/trainer_state.json: the loss log
    if trainer.is_world_process_zero():
        plot_loss_curve(trainer.state.log_history, output_dir / LOSS_CURVE, title=f"{config.stage}: {output_dir.name}")

    final = output_dir / FINAL_DIR
    if config.lora is not None:
        merge_lora(model)
    processor.tokenizer.model_max_length = saved_max_length
    # Every process takes part: under ZeRO-3 this gathers the shards (16-bit weights) onto rank 0.
    state_dict = trainer.accelerator.get_state_dict(trainer.model_wrapped)
    if trainer.is_world_process_zero():
        base = describe_base(Path(config.model)) if config.final_weights == "multimodal" else None

        def write(folder: Path) -> None:
            save_final_folder(
                folder, model=model, state_dict=state_dict, processor=processor, weights=config.final_weights, base=base
            )
            (folder / CONFIG_FILE).write_text(yaml.safe_dump(config.to_dict(), sort_keys=False))

        write_folder_atomically(final, write)
        _print_summary(trainer, counts, final, model.vision_feature_cache)
    trainer.accelerator.wait_for_everyone()
    return final


def _print_summary(
    trainer: StageTrainer, counts: dict[str, int], final: Path, cache: VisionFeatureCache | None
) -> None:
    totals = trainer.totals
    reasons = ", ".join(f"{reason}: {n}" for reason, n in sorted(totals.skips.reasons.items()) if n) or "none"
    trainable = ", ".join(f"{part} {n:,}" for part, n in counts.items())
    print(
        f"trained {trainer.state.global_step} steps: {totals.skips.seen} samples seen, {totals.skips.total} skipped "
        f"({reasons}); {totals.input_tokens:,} tokens trained ({totals.target_tokens:,} with a loss); "
        f"trainable parameters: {trainable}; saved {final}"
    )
    if cache is not None:
        print(cache.describe())


def plot_loss_curve(log_history: list[dict], path: Path, *, title: str) -> Path:
    """Training loss (and learning rate, on a second axis) per logged step, as a PNG a person can glance at."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    logged = [entry for entry in log_history if "loss" in entry and "step" in entry]
    figure = Figure(figsize=(7, 4), dpi=100)
    FigureCanvasAgg(figure)
    axes = figure.add_subplot()
    axes.plot([e["step"] for e in logged], [float(e["loss"]) for e in logged], color="tab:blue", label="loss")
    axes.set_xlabel("optimizer step")
    axes.set_ylabel("training loss", color="tab:blue")
    with_lr = [e for e in logged if "learning_rate" in e]
    if with_lr:
        lr_axes = axes.twinx()
        lr_axes.plot([e["step"] for e in with_lr], [float(e["learning_rate"]) for e in with_lr], color="tab:gray", lw=1)
        lr_axes.set_ylabel("learning rate", color="tab:gray")
    axes.set_title(title if logged else f"{title} (no loss logged)")
    figure.tight_layout()
    figure.savefig(path)
    return path
