"""``ModalityLengthGroupedSampler``: batches of one modality and similar length, balanced across ranks.

Why group at all:

* **Padding.** A batch is padded to its longest sample; a 3 000-token video next to a 60-token text
  wastes ~3 000 tokens of compute and memory on the text row. Keeping modalities apart removes the
  worst of it; sorting each megabatch (all samples of one optimizer step: ``batch_size × world_size ×
  accumulation_steps``) by length puts similar lengths in the same micro-batch — the more
  accumulation steps, the tighter the micro-batches. ``length_group_steps`` pools several steps'
  samples of a modality before sorting, so that a step's samples are also alike in length: a 16-frame
  clip then rarely shares a batch with (and is padded to) a 256-frame video of the same modality.
* **Even vision work per step.** A batch that mixes modalities makes the vision tower's load per step
  jump (a text batch encodes nothing, a video batch hundreds of frames), which shows as memory peaks
  and stragglers; modality-homogeneous batches keep each step's work alike.
* **DDP ranks wait for the slowest.** The per-device batches of one step come from the same megabatch
  and are balanced by total length, so no rank gets all the long samples of the step.

The order is random across megabatches (and within a modality before cutting), so training still
sees the data shuffled; only what lands in the same step is grouped. The remainders of every
modality (fewer than one megabatch each) form one mixed, length-sorted group at the very end.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Literal, get_args

import numpy as np
import torch
from torch.utils.data import Sampler

__all__ = ["MODALITIES", "Modality", "ModalityLengthGroupedSampler"]

Modality = Literal["text", "image", "multi_image", "video"]
MODALITIES: tuple[str, ...] = get_args(Modality)


class ModalityLengthGroupedSampler(Sampler[int]):
    """Dataset indices ordered so that each run of ``batch_size`` is one device's batch of one modality.

    Per epoch (a ``torch.Generator`` seeded from ``(seed, epoch)``): each modality's indices are
    shuffled; runs of ``length_group_steps`` megabatches of them are sorted by length, longest first, and
    cut into megabatches of ``batch_size × world_size × accumulation_steps`` (one optimizer step);
    inside a megabatch the samples are sorted longest first and cut into rounds of
    ``batch_size × world_size`` (one micro-batch per device), and each round is dealt to ``world_size``
    device batches of ``batch_size``, each sample to the device with the smallest total length so far
    that still has room; the device batches are emitted one after another (the DataLoader / accelerate
    give batch ``k`` to rank ``k % world_size``). The
    complete megabatches of all modalities are then shuffled together, and the incomplete remainders
    follow as one final group, sorted by length (dealt the same way in full megabatches, the last
    partial one simply longest first).

    Args:
        lengths: per-sample length estimates in tokens; ``None`` (unknown, e.g. an unreadable header)
            counts as the median known length of the same modality (the lower median; 0 if none is known).
        modalities: per-sample modality, one of :data:`MODALITIES`.
        batch_size: samples per device batch.
        world_size: data-parallel ranks sharing the stream.
        accumulation_steps: micro-batches per optimizer step (the megabatch spans them all).
        seed: the base seed; :meth:`set_epoch` picks the epoch.
        length_group_steps: megabatches of one modality sorted by length together before they are cut
            (1: each megabatch is a random draw from its modality, as in LLaVA; more: a step's samples are
            alike in length, less padding, steps still in random order).
    """

    def __init__(
        self,
        lengths: Sequence[int | None],
        modalities: Sequence[str],
        batch_size: int,
        world_size: int = 1,
        seed: int = 0,
        accumulation_steps: int = 1,
        length_group_steps: int = 1,
    ) -> None:
        for name, value in (
            ("batch_size", batch_size),
            ("world_size", world_size),
            ("accumulation_steps", accumulation_steps),
            ("length_group_steps", length_group_steps),
        ):
            if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
                raise ValueError(f"{name} must be an int >= 1, got {value!r}")
        if len(lengths) != len(modalities):
            raise ValueError(
                f"lengths and modalities must be equally long, got {len(lengths)} lengths and {len(modalities)} modalities"
            )
        unknown = sorted(set(modalities) - set(MODALITIES))
        if unknown:
            raise ValueError(f"modalities holds unknown names {unknown}; expected some of {list(MODALITIES)}")
        negative = [length for length in lengths if length is not None and length < 0]
        if negative:
            raise ValueError(f"lengths must be >= 0, got {len(negative)} negative (e.g. {negative[0]})")
        self.batch_size = int(batch_size)
        self.world_size = int(world_size)
        self.accumulation_steps = int(accumulation_steps)
        self.length_group_steps = int(length_group_steps)
        self.seed = seed
        self.epoch = 0
        modality_ids = torch.tensor([MODALITIES.index(m) for m in modalities], dtype=torch.long)  # (N,)
        self.groups = [torch.nonzero(modality_ids == m).flatten() for m in range(len(MODALITIES))]  # indices per modality
        self.lengths = _fill_unknown(lengths, modality_ids)  # (N,) int64

    def __len__(self) -> int:
        return len(self.lengths)

    def set_epoch(self, epoch: int) -> None:
        """Use the order of ``epoch`` from the next ``iter()`` on (call it at the start of every epoch)."""
        self.epoch = epoch

    def __iter__(self) -> Iterator[int]:
        return iter(self.order().tolist())

    def order(self) -> torch.Tensor:
        """The epoch's order: a permutation of ``range(len(self))``, ``(N,)`` int64."""
        generator = torch.Generator().manual_seed(_mix_seed(self.seed, self.epoch))
        megabatch_size = self.batch_size * self.world_size * self.accumulation_steps
        complete: list[torch.Tensor] = []  # (M_modality, megabatch_size) each
        remainders: list[torch.Tensor] = []
        for indices in self.groups:  # fixed modality order: the generator is used reproducibly
            shuffled = indices[torch.randperm(len(indices), generator=generator)]
            full = len(shuffled) // megabatch_size * megabatch_size
            complete.append(self._sorted_in_groups(shuffled[:full]).view(-1, megabatch_size))
            remainders.append(shuffled[full:])
        megabatches = torch.cat(complete)  # (M, megabatch_size)
        megabatches = megabatches[torch.randperm(len(megabatches), generator=generator)]
        tail = torch.cat(remainders)  # (R,), R < 4 × megabatch_size
        tail = tail[torch.sort(self.lengths[tail], descending=True, stable=True).indices]
        tail_full = len(tail) // megabatch_size * megabatch_size
        parts = [
            self._deal(megabatches),
            self._deal(tail[:tail_full].view(-1, megabatch_size)),
            tail[tail_full:],  # fewer than one megabatch: longest first, the last batch may be short
        ]
        return torch.cat([part.flatten() for part in parts])

    def _sorted_in_groups(self, indices: torch.Tensor) -> torch.Tensor:
        """``indices`` (shuffled, a whole number of megabatches) with each run of ``length_group_steps``
        megabatches sorted longest first (stable: equal lengths keep their shuffled order)."""
        if self.length_group_steps == 1:
            return indices  # each megabatch is sorted when it is dealt
        group = self.length_group_steps * self.batch_size * self.world_size * self.accumulation_steps
        runs = [indices[start : start + group] for start in range(0, len(indices), group)]
        return torch.cat([run[torch.sort(self.lengths[run], descending=True, stable=True).indices] for run in runs] or [indices])

    def _deal(self, megabatches: torch.Tensor) -> torch.Tensor:
        """Each row sorted longest first, cut into rounds of ``W·B`` and each round dealt to ``world_size``
        device batches of ``batch_size``, longest sample to the lightest device that has room;
        ``(M, A·W·B)`` → ``(M·A, W·B)``, device batches consecutive. Vectorised over rounds: a loop over
        the ``W·B`` positions only."""
        by_length = torch.sort(self.lengths[megabatches], dim=1, descending=True, stable=True).indices
        megabatches = torch.gather(megabatches, 1, by_length)  # (M, A·W·B), longest first
        megabatches = megabatches.reshape(-1, self.batch_size * self.world_size)  # (M·A, W·B) rounds
        count, width = megabatches.shape
        if self.world_size == 1 or count == 0:
            return megabatches
        lengths = self.lengths[megabatches]  # (M, W·B)
        rows = torch.arange(count)
        totals = torch.zeros(count, self.world_size, dtype=torch.long)  # (M, W) tokens dealt
        filled = torch.zeros(count, self.world_size, dtype=torch.long)  # (M, W) samples dealt
        slots = torch.empty(count, width, dtype=torch.long)  # (M, W·B) output position of each sample
        full = torch.iinfo(torch.long).max
        for position in range(width):
            device = totals.masked_fill(filled >= self.batch_size, full).argmin(dim=1)  # (M,), ties → lowest rank
            slots[:, position] = device * self.batch_size + filled[rows, device]
            totals[rows, device] += lengths[:, position]
            filled[rows, device] += 1
        return torch.empty_like(megabatches).scatter_(1, slots, megabatches)


def _fill_unknown(lengths: Sequence[int | None], modality_ids: torch.Tensor) -> torch.Tensor:
    """``lengths`` as ``(N,)`` int64, each ``None`` replaced by its modality's lower median known length."""
    known = torch.tensor([length is not None for length in lengths], dtype=torch.bool)  # (N,)
    values = torch.tensor([0 if length is None else int(length) for length in lengths], dtype=torch.long)  # (N,)
    for modality in range(len(MODALITIES)):
        in_modality = modality_ids == modality
        reference = values[in_modality & known]
        fill = int(reference.median()) if len(reference) else 0
        values[in_modality & ~known] = fill
    return values


def _mix_seed(seed: int, epoch: int) -> int:
    """One 63-bit generator seed from ``(seed, epoch)``: nearby pairs give unrelated streams."""
    return int(np.random.SeedSequence([seed, epoch]).generate_state(2, dtype=np.uint64)[0] >> np.uint64(1))
