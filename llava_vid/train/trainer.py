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
  checks ``max_skip_fraction`` once per optimizer step. With several processes each checks its own
  share of the data (the counts are not all-reduced).
* empty batches (every sample skipped): :meth:`StageTrainer.compute_loss` returns ``0 × Σ trainable
  parameters`` — a zero loss that still has a graph over every trainable parameter, so the backward
  pass, DeepSpeed's micro-step count and DDP's gradient reduction stay in step across processes. The
  logged loss of that step is averaged with this zero (it reads slightly low); the gradient is exact.
* the final save: LoRA merged, weights (safetensors) + processor + the resolved ``train_config.yaml``
  written into a temporary sibling folder and renamed to ``output_dir/final``, so a crash never leaves
  a folder that looks complete.
"""

from __future__ import annotations

import os
from collections import Counter
from pathlib import Path
from typing import Any, Iterator

import torch
import yaml
from torch import nn
from transformers import Trainer, TrainingArguments

from llava_vid.atomic import write_folder_atomically
from llava_vid.data.collator import SkipCounter, TrainingCollator, pop_skipped
from llava_vid.data.dataset import ConversationDataset
from llava_vid.data.formats import DatasetSpec
from llava_vid.processing.processor import IGNORE_INDEX
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
    stage's ``final``) or a model preset YAML (fresh multimodal layers)."""
    import llava_vid  # noqa: F401  (registers the Auto classes)
    from llava_vid.modeling import LlavaVidForConditionalGeneration
    from llava_vid.processing.processor import LlavaVidProcessor

    source = Path(config.model)
    attention = _resolved_attention(config)
    if source.is_dir():
        model = LlavaVidForConditionalGeneration.from_pretrained(
            str(source), dtype=torch.float32, attn_implementation=attention
        )
        processor = LlavaVidProcessor.from_pretrained(str(source))
    elif source.is_file():
        from llava_vid.build import build_model_and_processor, load_model_spec

        model, processor = build_model_and_processor(load_model_spec(source))
        model.set_attn_implementation(attention)
    else:
        raise ValueError(f"model: {source} is neither a model preset YAML nor a saved model folder")
    return model, processor


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
        save_total_limit=config.save_total_limit,
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
class StageTrainer(Trainer):
    """``Trainer`` with our parameter groups and skip accounting (see the module docstring)."""

    def __init__(self, *args: Any, stage_config: StageConfig, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.stage_config = stage_config
        self.skip_counter = SkipCounter()
        self.input_tokens = 0  # non-padding tokens of the batches trained on (text + visual placeholders)
        self.target_tokens = 0  # tokens with a loss (unmasked labels)

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

    def get_batch_samples(
        self, epoch_iterator: Iterator, num_batches: int, device: torch.device
    ) -> tuple[list, torch.Tensor | int | None]:
        """Take the micro-batches of one optimizer step, count and strip their skips, check the skip
        fraction, then let the Trainer count the target tokens as usual."""
        batches = []
        for _ in range(num_batches):
            try:
                batches.append(next(epoch_iterator))
            except StopIteration:
                break
        for batch in batches:
            skipped = pop_skipped(batch)
            self.skip_counter.update_from_batch(batch, skipped)
            if not batch.get("empty"):
                self.input_tokens += int(batch["attention_mask"].sum())
                self.target_tokens += int((batch["labels"] != IGNORE_INDEX).sum())
        self.skip_counter.check(self.stage_config.max_skip_fraction)
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
        return super().compute_loss(model, inputs, return_outputs=return_outputs, num_items_in_batch=num_items_in_batch)


# ------------------------------------------------------------------------------------------ the stage
def train(config: StageConfig) -> Path:
    """Run one training stage; returns ``output_dir/final`` (weights, processor, ``train_config.yaml``)."""
    output_dir = Path(config.output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    args = build_training_arguments(config)  # first: it sets up the distributed state DeepSpeed needs

    model, processor = load_model_and_processor(config)
    saved_max_length = processor.tokenizer.model_max_length
    processor.tokenizer.model_max_length = config.max_length  # longer samples are skipped as too_long
    if config.lora is not None:
        apply_lora(model, config.lora)
    counts = apply_trainable(model, config.trainable)
    if config.gradient_checkpointing:
        # Non-reentrant checkpointing needs no input that requires grad; the hook keeps reentrant
        # checkpointing (if a library picks it) correct when the embeddings are frozen.
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        if not model.get_input_embeddings().weight.requires_grad:
            model.enable_input_require_grads()

    specs = [
        DatasetSpec(path=entry.path, image_root=entry.image_root, video_root=entry.video_root, ratio=entry.ratio)
        for entry in config.data
    ]
    if not specs:
        raise ValueError("data is empty: a stage needs at least one data set")
    dataset = ConversationDataset(specs, processor, template=config.template, seed=config.seed)
    collator = TrainingCollator(processor.tokenizer.pad_token_id, max_skip_fraction=config.max_skip_fraction)

    trainer = StageTrainer(
        model=model, args=args, train_dataset=dataset, data_collator=collator, stage_config=config
    )
    if trainer.is_world_process_zero():
        (output_dir / CONFIG_FILE).write_text(yaml.safe_dump(config.to_dict(), sort_keys=False))
    trainer.train()
    trainer.save_state()  # output_dir/trainer_state.json: the loss log
    if trainer.is_world_process_zero():
        plot_loss_curve(trainer.state.log_history, output_dir / LOSS_CURVE, title=f"{config.stage}: {output_dir.name}")

    final = output_dir / FINAL_DIR
    if config.lora is not None:
        merge_lora(model)
    processor.tokenizer.model_max_length = saved_max_length
    if trainer.is_world_process_zero():
        _save_final(model, processor, config, final)
        _print_summary(trainer, counts, final)
    trainer.accelerator.wait_for_everyone()
    return final


def _save_final(model: nn.Module, processor: Any, config: StageConfig, final: Path) -> None:
    """Weights (safetensors) + processor + resolved config, written atomically."""

    def write(folder: Path) -> None:
        model.save_pretrained(folder)
        processor.save_pretrained(folder)
        (folder / CONFIG_FILE).write_text(yaml.safe_dump(config.to_dict(), sort_keys=False))

    write_folder_atomically(final, write)


def _print_summary(trainer: StageTrainer, counts: dict[str, int], final: Path) -> None:
    skips = trainer.skip_counter
    reasons = ", ".join(f"{reason}: {n}" for reason, n in sorted(Counter(skips.reasons).items())) or "none"
    trainable = ", ".join(f"{part} {n:,}" for part, n in counts.items())
    print(
        f"trained {trainer.state.global_step} steps: {skips.seen} samples seen, {skips.total} skipped ({reasons}); "
        f"{trainer.input_tokens:,} tokens trained ({trainer.target_tokens:,} with a loss); "
        f"trainable parameters: {trainable}; saved {final}"
    )


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
