"""Batching for training: drop skipped samples (counting why), right-pad text, concatenate media.

Where counts live: with ``num_workers > 0`` the collator runs in the DataLoader worker processes, so
a counter kept in it would only ever see that worker's share. Each batch therefore carries its own
skip counts under ``batch["skipped"]`` (``{reason: n}``); the trainer pops that key before calling the
model (:func:`pop_skipped`) and aggregates it into one :class:`SkipCounter` in the main process, whose
:meth:`SkipCounter.check` stops the run when too many samples are skipped. The collator also keeps a
process-local counter and checks it, which catches a bad dataset early even per worker.

A batch in which every sample was skipped is ``{"empty": True, "skipped": {...}}``: the trainer counts
the skips and moves on to the next batch (there is nothing to train on).
"""

from __future__ import annotations

from collections import Counter
from typing import Any, Mapping, Sequence

import torch

from llava_vid.data.dataset import SkippedSample
from llava_vid.processing.processor import IGNORE_INDEX

__all__ = ["SkipCounter", "TrainingCollator", "pop_skipped"]

# Media tensors concatenated along dim 0 in sample order (their per-item metadata keeps the boundaries).
MEDIA_KEYS = (
    "pixel_values",  # (V, 3, S, S)
    "image_sizes",  # (N, 2)
    "image_grids",  # (N, 2)
    "image_token_counts",  # (N,)
    "pixel_values_videos",  # (F, 3, S, S)
    "video_frames",  # (M,)
    "video_grids",  # (M,)
    "video_token_counts",  # (M,)
)
# Q-Former text of each video, (M_i, Q_i) per sample: right-padded to the longest Q, then concatenated.
QFORMER_KEYS = ("qformer_input_ids", "qformer_attention_mask")


class SkipCounter:
    """Counts of samples seen and skipped (by reason) over a run.

    Args:
        min_samples: :meth:`check` never fails before this many samples were seen, so one bad sample
            at the start does not stop a run.
    """

    def __init__(self, min_samples: int = 20) -> None:
        self.min_samples = min_samples
        self.reasons: Counter[str] = Counter()
        self.seen = 0

    @property
    def total(self) -> int:
        """Samples skipped so far."""
        return sum(self.reasons.values())

    def update(self, skipped: Mapping[str, int], kept: int = 0) -> None:
        """Add one batch's skip counts; ``kept``: the samples of the batch that were used."""
        for reason, count in skipped.items():
            self.reasons[reason] += int(count)
        self.seen += int(kept) + sum(int(count) for count in skipped.values())

    def update_from_batch(self, batch: Mapping[str, Any], skipped: Mapping[str, int] | None = None) -> None:
        """Add a collated batch (``skipped``: its counts if they were already popped)."""
        skipped = batch.get("skipped", {}) if skipped is None else skipped
        kept = 0 if batch.get("empty") else len(batch["input_ids"])
        self.update(skipped, kept)

    def check(self, max_fraction: float) -> None:
        """Raise ``RuntimeError`` naming the counts when more than ``max_fraction`` of the samples seen
        (once at least ``min_samples``) were skipped."""
        if self.seen < self.min_samples or self.seen == 0:
            return
        fraction = self.total / self.seen
        if fraction > max_fraction:
            reasons = ", ".join(f"{reason}: {count}" for reason, count in sorted(self.reasons.items()))
            raise RuntimeError(
                f"{self.total} of {self.seen} samples ({fraction:.1%}) were skipped, more than the allowed "
                f"{max_fraction:.1%} ({reasons}); fix the data (missing/corrupt media, over-long samples) "
                "or raise max_skip_fraction"
            )

    def __repr__(self) -> str:
        return f"SkipCounter(seen={self.seen}, skipped={dict(self.reasons)})"


def pop_skipped(batch: dict[str, Any]) -> dict[str, int]:
    """Remove and return a batch's skip counts (the model must not receive them)."""
    return batch.pop("skipped", {})


def _pad_right(rows: Sequence[torch.Tensor], value: int) -> torch.Tensor:
    """Rows of shape ``(L_i, ...)`` → ``(B, max L_i, ...)``, padded at the end with ``value``."""
    length = max(row.shape[0] for row in rows)
    out = rows[0].new_full((len(rows), length, *rows[0].shape[1:]), value)
    for index, row in enumerate(rows):
        out[index, : row.shape[0]] = row
    return out


class TrainingCollator:
    """Collate :class:`~llava_vid.data.dataset.ConversationDataset` samples into a training batch.

    Args:
        pad_token_id: id that pads ``input_ids`` (``attention_mask`` pads with 0, ``labels`` with -100).
        max_skip_fraction: the fraction of skipped samples this process tolerates (checked after
            ``min_samples``; see the module docstring for the global check in the trainer).
        min_samples: samples seen before the fraction is checked.
        qformer_pad_token_id: pads ``qformer_input_ids`` (default ``pad_token_id``; masked out either way).
    """

    def __init__(
        self,
        pad_token_id: int,
        max_skip_fraction: float = 0.05,
        min_samples: int = 20,
        qformer_pad_token_id: int | None = None,
    ) -> None:
        if not 0.0 <= max_skip_fraction <= 1.0:
            raise ValueError(f"max_skip_fraction must be in [0, 1], got {max_skip_fraction}")
        self.pad_token_id = pad_token_id
        self.qformer_pad_token_id = pad_token_id if qformer_pad_token_id is None else qformer_pad_token_id
        self.max_skip_fraction = max_skip_fraction
        self.counter = SkipCounter(min_samples)  # process-local (a worker's share when num_workers > 0)

    def __call__(self, samples: Sequence[dict[str, Any] | SkippedSample]) -> dict[str, Any]:
        kept = [sample for sample in samples if not isinstance(sample, SkippedSample)]
        skipped = dict(Counter(sample.reason for sample in samples if isinstance(sample, SkippedSample)))
        self.counter.update(skipped, len(kept))
        self.counter.check(self.max_skip_fraction)
        if not kept:
            return {"empty": True, "skipped": skipped}
        batch: dict[str, Any] = {
            "input_ids": _pad_right([s["input_ids"] for s in kept], self.pad_token_id),  # (B, L)
            "attention_mask": _pad_right([s["attention_mask"] for s in kept], 0),  # (B, L)
            "labels": _pad_right([s["labels"] for s in kept], IGNORE_INDEX),  # (B, L)
        }
        for key in MEDIA_KEYS:
            parts = [s[key] for s in kept if key in s]
            if parts:
                batch[key] = torch.cat(parts)
        if any(QFORMER_KEYS[0] in s for s in kept):
            width = max(s[QFORMER_KEYS[0]].shape[1] for s in kept if QFORMER_KEYS[0] in s)
            for key, value in zip(QFORMER_KEYS, (self.qformer_pad_token_id, 0)):
                # (M_i, Q_i) → (M_i, Q) each, then (M, Q): right padding, the Q-Former's positions start at 0
                padded = [
                    torch.nn.functional.pad(s[key], (0, width - s[key].shape[1]), value=value) for s in kept if key in s
                ]
                batch[key] = torch.cat(padded)
        batch["skipped"] = skipped
        return batch
