"""A synthetic world's held-out tasks (``tasks.json`` + ``heldout/<task>.jsonl``) as question
conversations with their reference answers, ready for the processor's chat template."""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from llava_vid.data.formats import MediaRoots, read_records, record_to_conversation
from llava_vid.eval.scoring import normalize_answer
from llava_vid.processing.templates import PLACEHOLDERS, VIDEO_OPTION_KEYS

__all__ = ["EvalSample", "EvalTask", "load_tasks"]


@dataclass(frozen=True)
class EvalSample:
    """One held-out question: the chat messages up to (not including) the answer, and the answer."""

    id: str
    conversation: list[dict[str, Any]]
    reference: str

    @property
    def question(self) -> str:
        """The last user turn as one line for reports, each media part shown as ``<image>`` or
        ``<video>`` where it stands and runs of white space made one space ("First image: <image>
        Second image: <image> Which …")."""
        parts = self.conversation[-1]["content"]
        pieces = [part["text"] if part["type"] == "text" else PLACEHOLDERS[part["type"]] for part in parts]
        return " ".join(" ".join(pieces).split())


@dataclass(frozen=True)
class EvalTask:
    """One closed-answer task of the world and its held-out samples (file order)."""

    name: str
    question: str
    """As in ``tasks.json``: a template where each sample names its image (``{image}``, the pick tasks);
    each sample's own question is :attr:`EvalSample.question`."""
    answers: tuple[str, ...]
    chance: float
    media: str
    video_options: dict[str, Any] | None
    samples: list[EvalSample]


def _read_task_table(world_dir: Path) -> dict[str, dict[str, Any]]:
    path = world_dir / "tasks.json"
    if not path.is_file():
        raise ValueError(f"{world_dir} holds no tasks.json; is it a folder written by `llava-vid world`?")
    try:
        table = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as error:
        raise ValueError(f"{path}: not valid JSON ({error})") from error
    if not isinstance(table, dict) or not table:
        raise ValueError(f"{path}: expected an object of tasks, got {type(table).__name__}")
    return table


def _samples(entry: dict[str, Any], world_dir: Path, limit: int | None, video_options: dict[str, Any] | None) -> list[EvalSample]:
    source = world_dir / entry["heldout_file"]
    records = read_records(source)[:limit]
    allowed = {normalize_answer(answer) for answer in entry["answers"]}
    samples = []
    for index, record in enumerate(records):
        # Media paths are relative to the JSONL's own folder (MediaRoots() = no explicit root), and the
        # task's video options are those the world was trained with, so frames are sampled the same way.
        messages = record_to_conversation(
            record, roots=MediaRoots(), source_file=source, index=index, video_options=video_options
        )
        if messages[-1]["role"] != "assistant" or len(messages) < 2:
            raise ValueError(f"{source}: record {index} has no question before its answer")
        reference = record.get("answer", messages[-1]["content"][0]["text"])
        if normalize_answer(reference) not in allowed:  # a closed-set task scored against an answer it cannot have
            raise ValueError(f"{source}: record {index} answers {reference!r}, not one of {entry['answers']}")
        samples.append(EvalSample(id=str(record.get("id", index)), conversation=messages[:-1], reference=reference))
    return samples


def load_tasks(
    world_dir: str | os.PathLike,
    tasks: Sequence[str] | None = None,
    *,
    limit: int | None = None,
    video_overrides: dict[str, Any] | None = None,
) -> list[EvalTask]:
    """The world's tasks (all, or those named in ``tasks``, in that order), each with at most ``limit``
    held-out samples (the first ones of the file). ``video_overrides`` (``content_grid``, ``fps``, …)
    replace those keys of every video task's options, e.g. to evaluate a model trained with ``g = 2``.

    Raises:
        ValueError: no ``tasks.json``, an unknown task name, a bad ``limit`` or override, or a malformed record.
    """
    if limit is not None and limit < 1:
        raise ValueError(f"limit must be at least 1, got {limit}")
    unknown_options = sorted(set(video_overrides or {}) - set(VIDEO_OPTION_KEYS))
    if unknown_options:
        raise ValueError(f"unknown video option(s) {unknown_options}; expected some of {list(VIDEO_OPTION_KEYS)}")
    root = Path(world_dir)
    table = _read_task_table(root)
    names = list(table) if tasks is None else list(dict.fromkeys(tasks))  # keep order, drop repeats
    unknown = [name for name in names if name not in table]
    if unknown:
        raise ValueError(f"unknown task(s) {unknown}; {root / 'tasks.json'} has {list(table)}")
    if not names:
        raise ValueError("no tasks to evaluate")
    loaded = []
    for name in names:
        entry = table[name]
        video_options = entry.get("video_options")
        if video_options is not None and video_overrides:
            video_options = {**video_options, **video_overrides}
        loaded.append(
            EvalTask(
                name=name,
                question=entry["question"],
                answers=tuple(entry["answers"]),
                chance=float(entry["chance"]),
                media=entry["media"],
                video_options=video_options,
                samples=_samples(entry, root, limit, video_options),
            )
        )
    return loaded
