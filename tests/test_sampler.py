"""ModalityLengthGroupedSampler: a permutation per epoch, deterministic, modality-pure megabatches,
length-balanced device batches, unknown lengths, argument errors."""

from __future__ import annotations

import random

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from llava_vid.data import MODALITIES, ModalityLengthGroupedSampler

# Lengths that follow the modality, as in real data: texts short, videos long.
TYPICAL = {"text": (20, 300), "image": (600, 900), "multi_image": (1200, 2500), "video": (2000, 8000)}


def _mixed(count: int, seed: int = 0) -> tuple[list[int], list[str]]:
    rng = random.Random(seed)
    modalities = [rng.choice(MODALITIES) for _ in range(count)]
    return [rng.randint(*TYPICAL[m]) for m in modalities], modalities


def _batches(order: list[int], batch_size: int) -> list[list[int]]:
    return [order[i : i + batch_size] for i in range(0, len(order), batch_size)]


def _padding(order: list[int], lengths: list[int], batch_size: int) -> int:
    """Pad tokens when every batch is padded to its longest sample."""
    return sum(len(b) * max(lengths[i] for i in b) - sum(lengths[i] for i in b) for b in _batches(order, batch_size))


@settings(max_examples=60, deadline=None)
@given(
    items=st.lists(st.tuples(st.one_of(st.none(), st.integers(0, 10_000)), st.sampled_from(MODALITIES)), max_size=80),
    batch_size=st.integers(1, 7),
    world_size=st.integers(1, 4),
    seed=st.integers(0, 2**40),
    epoch=st.integers(0, 5),
)
def test_every_index_exactly_once(items, batch_size: int, world_size: int, seed: int, epoch: int) -> None:
    lengths, modalities = [i[0] for i in items], [i[1] for i in items]
    sampler = ModalityLengthGroupedSampler(lengths, modalities, batch_size, world_size, seed)
    sampler.set_epoch(epoch)
    order = list(sampler)
    assert len(sampler) == len(items)
    assert sorted(order) == list(range(len(items)))


def test_same_seed_and_epoch_same_order_other_epoch_or_seed_differs() -> None:
    lengths, modalities = _mixed(200)
    first = ModalityLengthGroupedSampler(lengths, modalities, batch_size=4, world_size=2, seed=7)
    again = ModalityLengthGroupedSampler(lengths, modalities, batch_size=4, world_size=2, seed=7)
    assert list(first) == list(again) == list(first)  # iterating twice does not advance anything
    epoch0 = list(first)
    first.set_epoch(1)
    epoch1 = list(first)
    assert epoch1 != epoch0 and sorted(epoch1) == sorted(epoch0)
    first.set_epoch(0)
    assert list(first) == epoch0
    other_seed = ModalityLengthGroupedSampler(lengths, modalities, batch_size=4, world_size=2, seed=8)
    assert list(other_seed) != epoch0


def test_megabatches_hold_one_modality_except_the_last() -> None:
    lengths, modalities = _mixed(203, seed=1)
    batch_size, world_size = 3, 2
    megabatch = batch_size * world_size
    order = list(ModalityLengthGroupedSampler(lengths, modalities, batch_size, world_size, seed=0))
    counts = {m: modalities.count(m) for m in MODALITIES}
    tail = sum(c % megabatch for c in counts.values())  # the remainders, all at the end
    complete = len(order) - tail
    assert complete == sum(c // megabatch * megabatch for c in counts.values())
    kinds = [{modalities[i] for i in order[start : start + megabatch]} for start in range(0, complete, megabatch)]
    assert all(len(k) == 1 for k in kinds)
    # Every modality's complete megabatches appear, interleaved (shuffled across modalities).
    sequence = [next(iter(k)) for k in kinds]
    assert {m for m in MODALITIES if counts[m] >= megabatch} == set(sequence)
    assert sequence != sorted(sequence, key=MODALITIES.index)
    # The tail is sorted longest first: each of its megabatches (dealt to the devices) is no shorter
    # than the next.
    assert len({modalities[i] for i in order[complete:]}) > 1
    tail = [[lengths[i] for i in chunk] for chunk in _batches(order[complete:], megabatch)]
    assert all(min(a) >= max(b) for a, b in zip(tail, tail[1:]))


def test_device_batches_are_length_sorted_and_balanced() -> None:
    lengths, modalities = _mixed(800, seed=2)
    batch_size, world_size = 4, 4
    megabatch = batch_size * world_size
    sampler = ModalityLengthGroupedSampler(lengths, modalities, batch_size, world_size, seed=3)
    order = list(sampler)
    shuffled = torch.randperm(len(lengths), generator=torch.Generator().manual_seed(0)).tolist()

    def spread(sequence: list[int]) -> float:
        """Mean over steps of (heaviest − lightest device batch), in tokens."""
        gaps = []
        for start in range(0, len(sequence) - megabatch + 1, megabatch):
            totals = [sum(lengths[i] for i in b) for b in _batches(sequence[start : start + megabatch], batch_size)]
            gaps.append(max(totals) - min(totals))
        return sum(gaps) / len(gaps)

    assert spread(order) < spread(shuffled) / 10
    for batch in _batches(order, batch_size):
        batch_lengths = [lengths[i] for i in batch]
        assert batch_lengths == sorted(batch_lengths, reverse=True)
    # Modality-homogeneous batches waste far less padding than a random order.
    assert _padding(order, lengths, batch_size) < _padding(shuffled, lengths, batch_size) / 3


def test_greedy_dealing_exact() -> None:
    # One megabatch of 4, two devices of 2: 10 → d0, 9 → d1, 8 → d1 (lighter), 1 → d0.
    sampler = ModalityLengthGroupedSampler([1, 8, 10, 9], ["text"] * 4, batch_size=2, world_size=2)
    assert list(sampler) == [2, 0, 3, 1]


def test_single_device_batches_are_sorted_runs() -> None:
    lengths = [5, 1, 4, 2, 3, 6]
    order = list(ModalityLengthGroupedSampler(lengths, ["image"] * 6, batch_size=3, seed=4))
    for batch in _batches(order, 3):
        assert [lengths[i] for i in batch] == sorted((lengths[i] for i in batch), reverse=True)


def test_unknown_lengths_use_the_modality_median() -> None:
    lengths = [10, 20, 30, None, 1000, 3000, None]
    modalities = ["text", "text", "text", "text", "video", "video", "image"]
    sampler = ModalityLengthGroupedSampler(lengths, modalities, batch_size=2)
    # text median of 10, 20, 30 is 20; video's unknown-free; image has no known length → 0.
    assert sampler.lengths.tolist() == [10, 20, 30, 20, 1000, 3000, 0]
    assert sorted(sampler) == list(range(7))


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"batch_size": 0}, r"batch_size must be an int >= 1, got 0"),
        ({"world_size": -1}, r"world_size must be an int >= 1, got -1"),
        ({"lengths": [1, 2, 3]}, r"3 lengths and 2 modalities"),
        ({"modalities": ["text", "audio"]}, r"unknown names \['audio'\]"),
        ({"lengths": [1, -5]}, r"lengths must be >= 0"),
        ({"length_group_steps": 0}, r"length_group_steps must be an int >= 1, got 0"),
    ],
)
def test_errors_name_the_argument_and_numbers(kwargs: dict, message: str) -> None:
    arguments = {"lengths": [1, 2], "modalities": ["text", "image"], "batch_size": 2, **kwargs}
    with pytest.raises(ValueError, match=message):
        ModalityLengthGroupedSampler(**arguments)


def test_empty_and_is_a_torch_sampler() -> None:
    sampler = ModalityLengthGroupedSampler([], [], batch_size=4, world_size=2)
    assert len(sampler) == 0 and list(sampler) == []
    assert isinstance(sampler, torch.utils.data.Sampler)
    loader = torch.utils.data.DataLoader(list(range(10)), batch_size=2, sampler=ModalityLengthGroupedSampler([1] * 10, ["text"] * 10, 2))
    assert sorted(torch.cat(list(loader)).tolist()) == list(range(10))


def test_accumulation_steps_group_similar_lengths_within_an_optimizer_step() -> None:
    """The megabatch spans an optimizer step (B × W × A samples), sorted by length before it is cut into
    micro-batches: with 8 accumulation steps the micro-batches of one modality pad far less than with 1."""
    lengths, modalities = _mixed(2048, seed=5)
    batch_size = 4
    per_step = ModalityLengthGroupedSampler(lengths, modalities, batch_size, accumulation_steps=8, seed=1)
    per_batch = ModalityLengthGroupedSampler(lengths, modalities, batch_size, accumulation_steps=1, seed=1)
    assert sorted(per_step) == list(range(len(lengths)))
    assert _padding(list(per_step), lengths, batch_size) < _padding(list(per_batch), lengths, batch_size) / 3
    # Each optimizer step's 32 samples are still one modality (up to the final remainder group).
    order = list(per_step)
    for start in range(0, len(order) - 5 * 32, 32):  # the remainder group at the end is < 4 × 32
        assert len({modalities[i] for i in order[start : start + 32]}) == 1


def test_length_groups_keep_short_and_long_samples_of_a_modality_apart() -> None:
    """Clips and long videos of one modality: in random steps nearly every batch holds a long video (and
    pads its clips to it); with steps pooled by length the long ones fill batches of their own. Still a
    permutation, in another order each epoch."""
    rng = random.Random(3)
    lengths = [rng.randint(100, 130) if rng.random() < 0.8 else rng.randint(500, 520) for _ in range(1600)]
    modalities = ["video"] * len(lengths)
    random_steps = ModalityLengthGroupedSampler(lengths, modalities, batch_size=16, seed=2)
    pooled = ModalityLengthGroupedSampler(lengths, modalities, batch_size=16, seed=2, length_group_steps=25)
    order = list(pooled)
    assert sorted(order) == list(range(len(lengths)))

    def mixed_batches(order: list[int]) -> int:
        return sum(min(lengths[i] for i in b) < 300 < max(lengths[i] for i in b) for b in _batches(order, 16))

    assert mixed_batches(list(random_steps)) > 50  # of 100 batches
    assert mixed_batches(order) <= 1600 // (16 * 25)  # at most one a group: where the long ones end
    assert _padding(order, lengths, 16) < _padding(list(random_steps), lengths, 16) / 5
    pooled.set_epoch(1)
    assert list(pooled) != order
