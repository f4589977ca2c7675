"""``ConversationDataset``: a mix of LLaVA-format datasets → per-sample processor outputs, lazily.

Construction reads and validates every record (text only, fast): every malformed record fails here,
before training starts, naming its file and index. Media files are not opened until
:meth:`ConversationDataset.__getitem__`, which runs in the DataLoader workers.

A sample that cannot be used is returned as a :class:`SkippedSample` with a reason — never replaced by a
zero image or a neighbouring sample, never kept with every label masked. The collator drops and counts
them; anything that is not one of these data problems (a bug) propagates.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, Sequence

import numpy as np
from PIL import Image
from torch.utils.data import Dataset

from llava_vid.data.formats import DatasetSpec, read_records, record_to_conversation
from llava_vid.data.sampler import Modality
from llava_vid.geometry import ImagePlan, VideoPlan, num_image_tokens, num_video_tokens
from llava_vid.modes import ImageTreatment
from llava_vid.processing.media import MediaError
from llava_vid.processing.planning import (
    image_treatment_beside_videos,
    plan_request,
    plan_request_videos,
    request_tokens,
)
from llava_vid.processing.processor import IGNORE_INDEX, LlavaVidProcessor, NoTargetError, PromptTooLongError
from llava_vid.processing.templates import RenderedPrompt, TemplateName, VideoPart, check_template_name, render
from llava_vid.processing.video import FrameSampling, count_sampled_frames

__all__ = [
    "ConversationDataset",
    "SkipReason",
    "SkippedSample",
    "epoch_plan",
    "sampled_frame_count",
]

SkipReason = Literal["unreadable_media", "too_long", "no_target"]
SKIP_REASONS: tuple[str, ...] = ("unreadable_media", "too_long", "no_target")

# Per-sample text tensors: the processor returns them as (1, L); the dataset returns (L,).
TEXT_KEYS = ("input_ids", "attention_mask", "labels")

@dataclass(frozen=True)
class SkippedSample:
    """A sample that was not used: why (``reason``), the details (file, record, error), its dataset index."""

    reason: SkipReason
    detail: str
    index: int


@dataclass(frozen=True)
class _Source:
    dataset: int  # index into the specs
    record: int  # index of the record in its file


def epoch_plan(sizes: Sequence[int], ratios: Sequence[float], seed: int) -> list[tuple[int, int]]:
    """The (dataset, record) pairs of one epoch: dataset ``d`` contributes ``round(ratio_d × size_d)``.

    ``⌊count / size⌋`` full copies of every record, plus ``count mod size`` records drawn without
    replacement (seeded, so the same ``seed`` gives the same plan). Pairs are in dataset order, records
    ascending within a dataset; shuffling is the sampler's job.
    """
    rng = np.random.default_rng(seed)
    pairs: list[tuple[int, int]] = []
    for dataset, (size, ratio) in enumerate(zip(sizes, ratios, strict=True)):
        count = int(round(ratio * size))
        if size == 0 or count == 0:
            continue
        repeats, remainder = divmod(count, size)
        chosen = np.sort(rng.choice(size, size=remainder, replace=False)) if remainder else np.empty(0, dtype=np.int64)
        records = np.concatenate([np.tile(np.arange(size), repeats), chosen])
        pairs += [(dataset, int(record)) for record in np.sort(records, kind="stable")]
    return pairs


class ConversationDataset(Dataset):
    """One or more LLaVA-format datasets, mixed by their ratios, as processor outputs.

    Args:
        specs: the datasets (:class:`~llava_vid.data.formats.DatasetSpec`).
        processor: the :class:`~llava_vid.processing.processor.LlavaVidProcessor` (its tokenizer's
            ``model_max_length`` is the maximum sample length after visual expansion).
        template: ``plain`` (stage 1) or ``vicuna_v1`` (stage 2).
        seed: seeds the mixing (which records a subsampled dataset contributes).
        image_treatment, max_visual_tokens: passed to the processor for every sample.

    ``__getitem__`` returns a dict of the processor's outputs for one sample — ``input_ids``,
    ``attention_mask``, ``labels`` as ``(L,)``; media tensors as the processor gives them (images
    ``pixel_values (V, 3, S, S)``, ``image_sizes (N, 2)``, ``image_grids (N, 2)``,
    ``image_token_counts (N,)``; videos ``pixel_values_videos (F, 3, S, S)``, ``video_frames``,
    ``video_grids``, ``video_token_counts`` ``(M,)``, ``qformer_input_ids``/``qformer_attention_mask``
    ``(M, Q)``) — or a :class:`SkippedSample`.
    """

    def __init__(
        self,
        specs: Sequence[DatasetSpec],
        processor: LlavaVidProcessor,
        *,
        template: TemplateName,
        seed: int = 0,
        image_treatment: ImageTreatment = "auto",
        max_visual_tokens: int | None = None,
    ) -> None:
        if not specs:
            raise ValueError("ConversationDataset needs at least one DatasetSpec")
        self.specs = list(specs)
        self.processor = processor
        self.template = check_template_name(template)
        self.seed = seed
        self.image_treatment = image_treatment
        self.max_visual_tokens = max_visual_tokens
        # Converted and validated up front: all malformed-record errors surface here. No media is read.
        self.conversations: list[list[list[dict]]] = []
        for spec in self.specs:
            records = read_records(spec.path)
            self.conversations.append(
                [
                    record_to_conversation(
                        record, roots=spec.roots, source_file=spec.path, index=index, video_options=spec.video_options
                    )
                    for index, record in enumerate(records)
                ]
            )
        self.pairs = epoch_plan([len(c) for c in self.conversations], [s.ratio for s in self.specs], seed)
        if not self.pairs:
            raise ValueError(f"the dataset mix is empty: {[str(s.path) for s in self.specs]} give no samples at their ratios")

    def __len__(self) -> int:
        return len(self.pairs)

    def dataset_counts(self) -> list[int]:
        """Samples each dataset contributes to the epoch (in spec order)."""
        counts = [0] * len(self.specs)
        for dataset, _ in self.pairs:
            counts[dataset] += 1
        return counts

    def conversation(self, index: int) -> list[dict]:
        dataset, record = self.pairs[index]
        return self.conversations[dataset][record]

    def describe(self, index: int) -> str:
        dataset, record = self.pairs[index]
        return f"{self.specs[dataset].path}: record {record}"

    # ------------------------------------------------------------------ loading (in the workers)
    def __getitem__(self, index: int) -> dict[str, Any] | SkippedSample:
        conversation = self.conversation(index)
        try:
            encoded = self.processor.apply_chat_template(
                conversation,
                template=self.template,
                tokenize=True,
                return_dict=True,
                image_treatment=self.image_treatment,
                max_visual_tokens=self.max_visual_tokens,
            )
        except MediaError as exc:
            return SkippedSample("unreadable_media", f"{self.describe(index)}: {exc}", index)
        except PromptTooLongError as exc:
            return SkippedSample("too_long", f"{self.describe(index)}: {exc}", index)
        except NoTargetError as exc:
            return SkippedSample("no_target", f"{self.describe(index)}: {exc}", index)
        sample = dict(encoded)
        for key in TEXT_KEYS:
            sample[key] = sample[key].squeeze(0)  # (1, L) → (L,)
        if bool((sample["labels"] == IGNORE_INDEX).all()):
            return SkippedSample("no_target", f"{self.describe(index)}: every label is masked", index)
        return sample

    # ------------------------------------------------------------------ length estimates
    def sample_lengths(self) -> list[int | None]:
        """Cheap per-sample length estimates (tokens) for a length-grouped sampler, in dataset order.

        Every number comes from the functions the processor itself uses, fed with metadata instead of
        pixels. Text: the tokenized length of the conversation rendered with the template (exact; one
        batched fast-tokenizer call), each ``<image>`` / ``<video>`` placeholder counted as its expansion.
        Images: the exact visual token count of the processor's plan, from the image size read from the
        file header (PIL opens lazily; no pixel is decoded; EXIF rotation is not applied, so a rotated
        photo's plan may differ). Videos: the frames the processor would sample, from the container's
        frame count and rate (one PyAV probe; nothing is decoded; Matroska/WebM files without a stored
        count are demuxed to count packets) or a frame folder's file count, planned under the request's
        budget like the processor does (exact, for the dataset's default ``video_timestamps=False``).
        ``None`` where a header cannot be read or the plan fails (loading the sample will report it).
        Computed once per record; each video file is probed once.
        """
        eos = self.processor.tokenizer.eos_token
        sampled_frames: dict[str, int | None] = {}  # video source → sampled frame count (None: unreadable)
        per_record: list[list[int | None]] = []
        for conversations in self.conversations:
            # Rendering is text only: media parts become their one-token placeholders, nothing is read.
            prompts = [render(conv, self.template, eos_token=eos) for conv in conversations]
            ids = self.processor.tokenizer([p.text for p in prompts], add_special_tokens=True)["input_ids"] if prompts else []
            per_record.append([self._estimate(prompt, len(row), sampled_frames) for prompt, row in zip(prompts, ids)])
        return [per_record[dataset][record] for dataset, record in self.pairs]

    def sample_modalities(self) -> list[Modality]:
        """Each sample's modality, in dataset order: ``video`` (any video), ``multi_image`` (several
        images), ``image`` (one image) or ``text`` (no media). Text only; no file is opened."""
        eos = self.processor.tokenizer.eos_token
        per_record = [
            [_modality(render(conv, self.template, eos_token=eos)) for conv in conversations]
            for conversations in self.conversations
        ]
        return [per_record[dataset][record] for dataset, record in self.pairs]

    def _estimate(self, prompt: RenderedPrompt, text_length: int, sampled_frames: dict[str, int | None]) -> int | None:
        sizes = []
        for path in prompt.images:
            size = _header_size(path)
            if size is None:
                return None
            sizes.append(size)
        frame_counts = []
        for part in prompt.videos:
            key = os.fspath(part.source)
            if key not in sampled_frames:
                sampled_frames[key] = _sampled_frames_or_none(part)
            if sampled_frames[key] is None:
                return None
            frame_counts.append(sampled_frames[key])
        treatment = image_treatment_beside_videos(self.image_treatment, bool(prompt.videos))
        geometry = self.processor.geometry
        try:
            image_plans: list[ImagePlan] = plan_request(
                sizes,  # plan() reads only .width/.height
                self.processor.image_processor,
                geometry,
                treatment=treatment,
                max_visual_tokens=self.max_visual_tokens,
                max_images=self.processor.max_images,
            )
            budget = None if self.max_visual_tokens is None else self.max_visual_tokens - request_tokens(image_plans, geometry)
            video_plans = plan_request_videos(
                frame_counts,
                [part.options.get("content_grid") for part in prompt.videos],
                budget=budget,
                default_grid=self.processor.video_content_grid,
                context_token=self.processor.video_context_token,
                max_grid=geometry.patches_per_side,
            )
        except ValueError:
            return None  # loading the sample raises the same error
        placeholders = len(image_plans) + len(video_plans)  # each counted once in text_length
        visual = request_tokens(image_plans, geometry) + sum(num_video_tokens(plan) for plan in video_plans)
        return text_length - placeholders + visual


def sampled_frame_count(source: str | os.PathLike, options: dict[str, Any]) -> int:
    """How many frames :func:`~llava_vid.processing.video.load_video` samples from ``source`` (a video
    file or a folder of frame images) with a video part's ``options`` (``fps`` / ``num_frames`` /
    ``max_frames``; ``content_grid`` is ignored), from metadata only: the PyAV probe of the container
    (frame count and rate) or the folder's frame files. Raises MediaError for an unreadable source.
    """
    sampling = FrameSampling(**{key: value for key, value in options.items() if key != "content_grid"})
    return count_sampled_frames(source, sampling)


def _sampled_frames_or_none(part: VideoPart) -> int | None:
    if not isinstance(part.source, (str, os.PathLike)):
        return None  # a list of frames: not a dataset record's form
    try:
        return sampled_frame_count(part.source, part.options)
    except (MediaError, OSError, ValueError):
        return None  # unknown; loading the sample reports (and counts) the real problem


def _modality(prompt: RenderedPrompt) -> Modality:
    if prompt.videos:
        return "video"
    return "text" if not prompt.images else "image" if len(prompt.images) == 1 else "multi_image"


@dataclass(frozen=True)
class _ImageSize:
    """What an image plan needs of an image: its size."""

    width: int
    height: int


def _header_size(path: str | os.PathLike) -> _ImageSize | None:
    try:
        with Image.open(Path(path)) as image:  # lazy: reads the header only
            width, height = image.size
    except (OSError, ValueError, SyntaxError, EOFError, Image.DecompressionBombError):
        return None  # unknown; loading the sample reports (and counts) the real problem
    return _ImageSize(width, height)
