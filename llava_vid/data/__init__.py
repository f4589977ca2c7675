"""Training data: LLaVA JSON/JSONL datasets, mixing, lazy per-sample processing, and the collator."""

from llava_vid.data.collator import SkipCounter, TrainingCollator, pop_skipped
from llava_vid.data.dataset import ConversationDataset, SkippedSample, SkipReason, epoch_plan
from llava_vid.data.formats import DatasetSpec, MediaRoots, read_records, record_to_conversation, resolve_media_path
from llava_vid.data.sampler import MODALITIES, Modality, ModalityLengthGroupedSampler

__all__ = [
    "MODALITIES",
    "ConversationDataset",
    "DatasetSpec",
    "MediaRoots",
    "Modality",
    "ModalityLengthGroupedSampler",
    "SkipCounter",
    "SkipReason",
    "SkippedSample",
    "TrainingCollator",
    "epoch_plan",
    "pop_skipped",
    "read_records",
    "record_to_conversation",
    "resolve_media_path",
]
