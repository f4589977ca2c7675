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
from llava_vid.geometry import ImagePlan, num_image_tokens
from llava_vid.modes import ImageTreatment
from llava_vid.processing.media import MediaError
from llava_vid.processing.planning import plan_request
from llava_vid.processing.processor import IGNORE_INDEX, LlavaVidProcessor, NoTargetError, PromptTooLongError
from llava_vid.processing.templates import TemplateName, check_template_name

__all__ = ["ConversationDataset", "SkipReason", "SkippedSample", "epoch_plan"]

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

        Text: the tokenized length of the conversation rendered with the template (exact; a batched
        fast-tokenizer call), each ``<image>`` placeholder counted as its expansion. Images: the exact visual token count of
        the processor's plan, from the image size read from the file header (PIL opens lazily; no pixel
        is decoded; EXIF rotation is not applied, so a rotated photo's plan may differ). Videos: unknown without decoding, so a sample holding a video is ``None``; so is one
        whose image header cannot be read (it will be skipped when loaded). Computed once per record.
        """
        tokenizer = self.processor.tokenizer
        per_record: list[list[int | None]] = []
        for conversations in self.conversations:
            # Rendering is text only: media parts become their one-token placeholders, nothing is read.
            texts = [self.processor.apply_chat_template(conv, template=self.template) for conv in conversations]
            ids = tokenizer(texts, add_special_tokens=True)["input_ids"] if texts else []
            per_record.append([self._estimate(conv, len(row)) for conv, row in zip(conversations, ids)])
        return [per_record[dataset][record] for dataset, record in self.pairs]

    def _estimate(self, conversation: list[dict], text_length: int) -> int | None:
        parts = [part for message in conversation for part in message["content"]]
        if any(part["type"] == "video" for part in parts):
            return None
        paths = [part["path"] for part in parts if part["type"] == "image"]
        if not paths:
            return text_length
        sizes = []
        for path in paths:
            size = _header_size(path)
            if size is None:
                return None
            sizes.append(size)
        try:
            plans: list[ImagePlan] = plan_request(
                sizes,  # plan() reads only .width/.height
                self.processor.image_processor,
                self.processor.geometry,
                treatment=self.image_treatment,
                max_visual_tokens=self.max_visual_tokens,
                max_images=self.processor.max_images,
            )
        except ValueError:
            return None
        return text_length - len(plans) + sum(num_image_tokens(self.processor.geometry, plan) for plan in plans)


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
