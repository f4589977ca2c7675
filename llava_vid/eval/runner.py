"""Batched greedy generation over a world's held-out tasks, scored by exact match."""

from __future__ import annotations

import os
import sys
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from llava_vid.eval.scoring import is_exact_match, normalize_answer
from llava_vid.eval.tasks import EvalSample, EvalTask, load_tasks
from llava_vid.modes import ImageTreatment

if TYPE_CHECKING:
    from llava_vid.modeling import LlavaVidForConditionalGeneration
    from llava_vid.processing.processor import LlavaVidProcessor

__all__ = ["EvalReport", "Example", "TaskResult", "evaluate"]

EXAMPLES_PER_TASK = 3


@dataclass(frozen=True)
class Example:
    id: str
    question: str
    reference: str
    prediction: str
    correct: bool


@dataclass(frozen=True)
class TaskResult:
    """One task's score. ``predictions`` counts the normalised answers given (a model stuck on one
    answer shows up here at a glance, whatever its accuracy); ``confusion`` splits them by the right
    answer (reference → normalised answer given → count), so a rule the model follows instead of the
    question, e.g. "no" only to one kind of sample, shows too."""

    task: str
    n: int
    correct: int
    chance: float
    answers: tuple[str, ...]
    seconds: float
    examples: list[Example] = field(default_factory=list)
    predictions: dict[str, int] = field(default_factory=dict)
    confusion: dict[str, dict[str, int]] = field(default_factory=dict)

    @property
    def accuracy(self) -> float:
        return self.correct / self.n

    @property
    def times_chance(self) -> float:
        return self.accuracy / self.chance

    @property
    def samples_per_second(self) -> float:
        return self.n / self.seconds if self.seconds > 0 else float("inf")


@dataclass(frozen=True)
class EvalReport:
    """Per-task results plus the settings they were obtained with."""

    world_dir: str
    tasks: list[TaskResult]
    image_treatment: str
    batch_size: int
    max_new_tokens: int
    seconds: float
    video_overrides: dict[str, Any] = field(default_factory=dict)

    @property
    def n(self) -> int:
        return sum(result.n for result in self.tasks)

    @property
    def accuracy(self) -> float:
        """Micro average: every sample counts once, whatever its task."""
        return sum(result.correct for result in self.tasks) / self.n

    @property
    def chance(self) -> float:
        """Expected accuracy of uniform guessing over the same samples (the n-weighted chance levels)."""
        return sum(result.chance * result.n for result in self.tasks) / self.n

    def to_json(self) -> dict[str, Any]:
        """A JSON-ready dict: the settings, the overall score and, per task, its score, throughput and examples."""
        return {
            "world_dir": self.world_dir,
            "image_treatment": self.image_treatment,
            "batch_size": self.batch_size,
            "max_new_tokens": self.max_new_tokens,
            "video_overrides": self.video_overrides,
            "seconds": round(self.seconds, 3),
            "overall": {"n": self.n, "accuracy": self.accuracy, "chance": self.chance},
            "tasks": {
                result.task: {
                    "n": result.n,
                    "correct": result.correct,
                    "accuracy": result.accuracy,
                    "chance": result.chance,
                    "times_chance": result.times_chance,
                    "answers": list(result.answers),
                    "predictions": result.predictions,
                    "confusion": result.confusion,
                    "seconds": round(result.seconds, 3),
                    "samples_per_second": round(result.samples_per_second, 3),
                    "examples": [asdict(example) for example in result.examples],
                }
                for result in self.tasks
            },
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> EvalReport:
        """The report :meth:`to_json` wrote (``eval.json``), e.g. to print its table again."""
        results = [
            TaskResult(
                task=name,
                n=entry["n"],
                correct=entry["correct"],
                chance=entry["chance"],
                answers=tuple(entry["answers"]),
                seconds=entry["seconds"],
                examples=[Example(**example) for example in entry["examples"]],
                predictions=dict(entry["predictions"]),
                confusion={reference: dict(given) for reference, given in entry.get("confusion", {}).items()},  # absent before it was added
            )
            for name, entry in data["tasks"].items()
        ]
        return cls(
            world_dir=data["world_dir"],
            tasks=results,
            image_treatment=data["image_treatment"],
            batch_size=data["batch_size"],
            max_new_tokens=data["max_new_tokens"],
            seconds=data["seconds"],
            video_overrides=dict(data.get("video_overrides") or {}),
        )


def _batches(samples: Sequence[EvalSample], batch_size: int) -> list[Sequence[EvalSample]]:
    return [samples[start : start + batch_size] for start in range(0, len(samples), batch_size)]


@torch.inference_mode()
def _generate_batch(
    model: LlavaVidForConditionalGeneration,
    processor: LlavaVidProcessor,
    batch: Sequence[EvalSample],
    *,
    image_treatment: ImageTreatment,
    max_new_tokens: int,
) -> list[str]:
    """Greedy answers to one batch of questions (left-padded by the processor's tokenizer)."""
    from llava_vid.inference.generate import prepare_prompts

    inputs = prepare_prompts(
        model,
        processor,
        [sample.conversation for sample in batch],
        max_new_tokens=max_new_tokens,
        image_treatment=image_treatment,
    )
    prompt_length = inputs["input_ids"].shape[1]
    output = model.generate(
        **inputs,
        max_new_tokens=max_new_tokens,
        do_sample=False,
        num_beams=1,
        pad_token_id=processor.tokenizer.pad_token_id,
    )
    # Left padding puts every prompt's end at the same column, so the answers start there for all rows.
    return processor.tokenizer.batch_decode(output[:, prompt_length:], skip_special_tokens=True)


def _evaluate_task(
    model: LlavaVidForConditionalGeneration,
    processor: LlavaVidProcessor,
    task: EvalTask,
    *,
    image_treatment: ImageTreatment,
    batch_size: int,
    max_new_tokens: int,
    examples: int | None,
    bar: Any,
) -> TaskResult:
    started = time.perf_counter()
    predictions: list[str] = []
    bar.set_description(task.name)
    for batch in _batches(task.samples, batch_size):
        predictions += _generate_batch(
            model, processor, batch, image_treatment=image_treatment, max_new_tokens=max_new_tokens
        )
        bar.update(len(batch))
    seconds = time.perf_counter() - started
    matches = [is_exact_match(p, s.reference) for p, s in zip(predictions, task.samples)]
    given = [normalize_answer(p) for p in predictions]
    confusion: dict[str, Counter[str]] = {}
    for sample, answer in zip(task.samples, given):
        confusion.setdefault(sample.reference, Counter())[answer] += 1
    kept = [
        Example(sample.id, sample.question, sample.reference, prediction, match)
        for sample, prediction, match in list(zip(task.samples, predictions, matches))[:examples]
    ]
    return TaskResult(
        task=task.name,
        n=len(task.samples),
        correct=sum(matches),
        chance=task.chance,
        answers=task.answers,
        seconds=seconds,
        examples=kept,
        predictions=dict(Counter(given).most_common()),
        confusion={reference: dict(counts.most_common()) for reference, counts in sorted(confusion.items())},
    )


def evaluate(
    model: LlavaVidForConditionalGeneration,
    processor: LlavaVidProcessor,
    world_dir: str | os.PathLike,
    *,
    tasks: Sequence[str] | None = None,
    limit: int | None = None,
    video_overrides: dict[str, Any] | None = None,
    image_treatment: ImageTreatment = "auto",
    batch_size: int = 8,
    max_new_tokens: int = 8,
    examples: int | None = EXAMPLES_PER_TASK,
    progress: bool = True,
) -> EvalReport:
    """Exact-match accuracy of ``model`` on the held-out samples of ``world_dir``'s tasks.

    Each task's samples are answered in batches of ``batch_size`` (one task per batch, so prompts
    share their layout and padding stays small) with greedy decoding of at most ``max_new_tokens``.

    Args:
        tasks: task names to run (default: every task of ``tasks.json``, in its order).
        limit: at most this many samples per task (the first ones).
        video_overrides: video options replacing the world's for every video task (``content_grid``, …).
        image_treatment: per-request image handling passed to the processor.
        examples: how many of each task's answers the report keeps, with their ids (``None``: every one,
            e.g. to split a task's score by something about its samples).
        progress: a tqdm bar on stderr.

    Raises:
        ValueError: an unknown task, no ``tasks.json``, a bad batch size, or a prompt the model cannot hold.
    """
    from tqdm import tqdm

    if batch_size < 1:
        raise ValueError(f"batch_size must be at least 1, got {batch_size}")
    if max_new_tokens < 1:
        raise ValueError(f"max_new_tokens must be at least 1, got {max_new_tokens}")
    if examples is not None and examples < 0:
        raise ValueError(f"examples must be at least 0 or None (every answer), got {examples}")
    loaded = load_tasks(world_dir, tasks, limit=limit, video_overrides=video_overrides)
    empty = [task.name for task in loaded if not task.samples]
    if empty:
        raise ValueError(f"no held-out samples for task(s) {empty} in {world_dir}")
    started = time.perf_counter()
    was_training = model.training
    model.eval()  # dropout off: greedy answers must be reproducible
    results = []
    try:
        with tqdm(total=sum(len(task.samples) for task in loaded), unit="sample", disable=not progress, file=sys.stderr) as bar:
            for task in loaded:
                results.append(
                    _evaluate_task(
                        model,
                        processor,
                        task,
                        image_treatment=image_treatment,
                        batch_size=batch_size,
                        max_new_tokens=max_new_tokens,
                        examples=examples,
                        bar=bar,
                    )
                )
    finally:
        model.train(was_training)
    return EvalReport(
        world_dir=str(Path(world_dir)),
        tasks=results,
        image_treatment=image_treatment,
        batch_size=batch_size,
        max_new_tokens=max_new_tokens,
        seconds=time.perf_counter() - started,
        video_overrides=dict(video_overrides or {}),
    )
