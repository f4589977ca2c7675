"""Contrastive pretraining of a tiny CLIP vision tower on the synthetic world's image/caption pairs.

The LLaVA recipe freezes a pretrained CLIP tower; without downloads there is none, so this trains one on
``vision_pairs.jsonl`` (written by :func:`llava_vid.data.synthetic.generate_world`) with transformers'
:class:`~transformers.CLIPModel` and CLIP's contrastive loss, then saves only
the vision half as a :class:`~transformers.CLIPVisionModel` folder. A preset then uses it with
``vision: {pretrained: <folder>}`` (the projector and Q-Former read its width from the saved config).

Choices, and why:

* Batches hold distinct captions (one random image per caption). The world has few distinct captions
  (92), so random batches would often put two "a red circle on the left" images in one batch and CLIP's
  loss would push them apart as negatives. With distinct captions the loss is an exact softmax over the
  batch's captions, and a batch of every caption is zero-shot classification itself. Captions are drawn
  in proportion to their pairs, so each kind keeps its share of the batch (drawn uniformly, the 72 shape
  captions crowded out the 10 words: zero-shot word accuracy 0.63 against 0.79 on the same pairs).
* Texts use a word-level vocabulary built from the captions, not the project's byte-level BPE: every
  label word is one token, so the text tower separates captions trivially and all the learning
  pressure lands on the vision tower (which is all we keep; the text tower is thrown away). It is built
  in microseconds and depends on nothing but the captions.
* A plain loop, not transformers' Trainer: the custom batch sampling, the tiny model (a step is a few
  milliseconds, so Trainer's per-step overhead would dominate) and the zero-shot evaluation at the end
  fit a 40-line loop better; tqdm shows progress.
* The image embedding is, by default, the mean of the last layer's patch tokens (``pooling="patch_mean"``),
  not CLIP's CLS token: downstream the model reads patch tokens (``vision_feature_select: patch``) and a
  video frame's content token *is* their mean (LLaMA-VID, ``g = 1``), so the contrastive loss should shape
  exactly that. With ``"cls"`` the last layer's patch tokens get no gradient of their own (only the CLS
  output is read) and carry what they carry by accident. The CLIP loss is then the symmetric
  cross-entropy over the batch's image–caption similarities, as ``CLIPModel`` computes it.
* Images are normalised by :class:`~llava_vid.processing.image_processor.LlavaVidImageProcessor` (its
  ``fit`` and ``normalize_views``), exactly as a 56 px view is downstream.
* Two processes share each batch by default (``processes``), each on one thread: the matrices are too
  small for two threads to help one process (they made it slower), but two processes each embed and
  differentiate half the batch in a little over half the time (on 2 shared cores, batches of 64: 37 ms
  against 65 ms a step; with the two exchanges and the optimizer step 50 ms against 69 ms, plus ~5 s to
  start the processes). Each gathers the other's embeddings, so the loss still contrasts
  all of the batch's captions, and the gradients are combined into the whole batch's: the same step as
  one process takes, to rounding (tested). As with any spawned processes, a script that calls
  :func:`pretrain_vision_tower` with ``processes > 1`` must guard its entry point
  (``if __name__ == "__main__":``).
"""

from __future__ import annotations

import json
import math
import sys
import tempfile
import time
from collections import defaultdict
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
import torch.distributed as dist
from PIL import Image
from torch.nn import functional as F
from transformers import CLIPConfig, CLIPModel, CLIPTextConfig, CLIPVisionConfig, get_cosine_schedule_with_warmup

from llava_vid.atomic import write_folder_atomically
from llava_vid.checks import check_int, check_number
from llava_vid.modes import check_choice
from llava_vid.processing.image_processor import LlavaVidImageProcessor

__all__ = [
    "Pooling",
    "VisionPretrainConfig",
    "WordVocabulary",
    "contrastive_loss",
    "format_eval_table",
    "image_text_embeddings",
    "image_text_logits",
    "load_pairs",
    "pretrain_vision_tower",
]

EVAL_FILE = "vision_eval.json"
SETTINGS_FILE = "vision_pretrain.json"
Pooling = Literal["patch_mean", "cls"]


@dataclass(frozen=True)
class VisionPretrainConfig:
    """Sizes and optimisation of the contrastive pretraining. The first six fields become the saved
    tower's :class:`~transformers.CLIPVisionConfig`; downstream a view costs ``(image_size / patch_size)²``
    tokens.

    Defaults were measured on 2 shared CPU cores (6000 pairs): patch 7 (64 tokens per view) reads the
    11 px words that patch 14 (16 tokens) barely does — 4000 steps of patch 7 gave 0.975 word accuracy
    (10-way) in ~3 min, 4000 / 8000 steps of patch 14 only 0.52 / 0.68 (whole words, CLS pooling). Pass
    ``patch_size=14`` to keep the tiny preset's token count at the price of the words. With 92 captions
    (positions added) a batch of 64 beat one of 44 clearly (position 0.86 against 0.44, symbol 0.78 against
    0.68, same pairs and steps), for ~1.5× the time.

    Four layers, not two (56 000 pairs, 4000 steps): the 2-layer tower counts circles by their area
    (a linear probe on its pooled tokens reads the count 0.85 of the time, the circles' area alone
    0.83), the 4-layer one reads it 0.91 and the word 0.87 against 0.73, for ~1.4× the pretraining time
    (263 s against 186 s; downstream the frozen tower's share of a step is small). Twice the width
    instead took twice the time and read less (count 0.85, position 0.51). BENCHMARKS.md has the runs.
    """

    hidden_size: int = 64
    intermediate_size: int = 128
    num_hidden_layers: int = 4
    num_attention_heads: int = 4
    image_size: int = 56
    patch_size: int = 7
    text_hidden_size: int = 32
    text_intermediate_size: int = 64
    text_layers: int = 1
    text_heads: int = 2
    projection_dim: int = 32
    steps: int = 4000
    batch_size: int = 64
    """Captions per batch, all distinct; capped at the number of distinct captions in the pairs file."""
    learning_rate: float = 2e-3
    weight_decay: float = 0.01
    warmup_steps: int = 50
    seed: int = 0
    eval_batch_size: int = 256
    pooling: Pooling = "patch_mean"
    """The image embedding the contrastive loss trains: the mean of the last layer's patch tokens (what the
    LLM reads downstream; see the module docstring) or CLIP's own CLS token (``"cls"``)."""
    threads: int = 1
    """torch threads of each process while training (0 keeps torch's setting). One: the matrices are tiny,
    and two threads on two shared cores ran 3–4× slower than one (spinning threads wait for each other)."""
    processes: int = 2
    """Processes that share each batch (data parallel over gloo): each embeds its share of the batch,
    the embeddings are gathered so the loss still contrasts every caption of the batch, and the
    gradients are combined: the same step as one process's, to rounding (the module docstring has the
    timings). The result depends on this number only through rounding."""

    def __post_init__(self) -> None:
        positive = (
            "hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads", "image_size", "patch_size",
            "text_hidden_size", "text_intermediate_size", "text_layers", "text_heads", "projection_dim", "steps",
            "eval_batch_size",
        )
        for name in positive:
            _check_int(name, getattr(self, name), minimum=1)
        _check_int("batch_size", self.batch_size, minimum=2)  # a contrastive batch needs a negative
        _check_int("warmup_steps", self.warmup_steps, minimum=0)
        _check_int("seed", self.seed, minimum=0)
        _check_int("threads", self.threads, minimum=0)
        _check_int("processes", self.processes, minimum=1)
        if self.processes > self.batch_size:
            raise ValueError(f"VisionPretrainConfig.processes={self.processes} must be at most batch_size={self.batch_size}: each process takes a share of a batch")
        for name in ("learning_rate", "weight_decay"):
            check_number(f"VisionPretrainConfig.{name}", getattr(self, name), minimum=0.0)
        check_choice("VisionPretrainConfig.pooling", self.pooling, Pooling)
        if self.learning_rate == 0:
            raise ValueError("VisionPretrainConfig.learning_rate must be > 0, got 0")
        if self.image_size % self.patch_size:
            raise ValueError(f"VisionPretrainConfig.patch_size={self.patch_size} must divide image_size={self.image_size}")
        if self.hidden_size % self.num_attention_heads:
            raise ValueError(f"VisionPretrainConfig.hidden_size={self.hidden_size} must be a multiple of num_attention_heads={self.num_attention_heads}")
        if self.text_hidden_size % self.text_heads:
            raise ValueError(f"VisionPretrainConfig.text_hidden_size={self.text_hidden_size} must be a multiple of text_heads={self.text_heads}")

    def vision_config(self) -> CLIPVisionConfig:
        return CLIPVisionConfig(
            hidden_size=self.hidden_size,
            intermediate_size=self.intermediate_size,
            num_hidden_layers=self.num_hidden_layers,
            num_attention_heads=self.num_attention_heads,
            image_size=self.image_size,
            patch_size=self.patch_size,
            projection_dim=self.projection_dim,
        )

    def clip_config(self, vocabulary: WordVocabulary) -> CLIPConfig:
        text = CLIPTextConfig(
            vocab_size=len(vocabulary),
            hidden_size=self.text_hidden_size,
            intermediate_size=self.text_intermediate_size,
            num_hidden_layers=self.text_layers,
            num_attention_heads=self.text_heads,
            max_position_embeddings=vocabulary.max_length,
            projection_dim=self.projection_dim,
            pad_token_id=vocabulary.pad_id,
            bos_token_id=vocabulary.eos_id,  # unused: captions start with their first word
            eos_token_id=vocabulary.eos_id,  # pooled position; must not be 2 (CLIP's legacy argmax pooling)
        )
        return CLIPConfig(text_config=text.to_dict(), vision_config=self.vision_config().to_dict(), projection_dim=self.projection_dim)


def _check_int(name: str, value: object, *, minimum: int) -> None:
    check_int(f"VisionPretrainConfig.{name}", value, minimum=minimum)


# ------------------------------------------------------------------------------------------ text
class WordVocabulary:
    """Word-level tokenizer over a fixed set of captions: ``<pad>``=0, ``<eos>``=1, ``<unk>``=2, words."""

    pad_id, eos_id, unk_id = 0, 1, 2

    def __init__(self, captions: list[str]) -> None:
        words = sorted({word for caption in captions for word in caption.split()})
        self.tokens = ["<pad>", "<eos>", "<unk>", *words]
        self.ids = {token: index for index, token in enumerate(self.tokens)}
        self.max_length = max((len(caption.split()) for caption in captions), default=0) + 1  # + <eos>

    def __len__(self) -> int:
        return len(self.tokens)

    def encode(self, captions: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        """(input_ids, attention_mask), both long ``(len(captions), max_length)``: words, ``<eos>``, padding."""
        input_ids = torch.full((len(captions), self.max_length), self.pad_id, dtype=torch.long)
        for row, caption in enumerate(captions):
            ids = [self.ids.get(word, self.unk_id) for word in caption.split()][: self.max_length - 1] + [self.eos_id]
            input_ids[row, : len(ids)] = torch.tensor(ids)
        return input_ids, (input_ids != self.pad_id).long()


# ------------------------------------------------------------------------------------------ data
@dataclass(frozen=True)
class _Pairs:
    views: np.ndarray
    """uint8 ``(N, S, S, 3)`` 56 px views as the processor makes them (before normalisation)."""
    captions: list[str]
    groups: list[str]
    labels: list[dict[str, str]]


def load_pairs(pairs_file: str | Path, processor: LlavaVidImageProcessor) -> _Pairs:
    """Read a vision pairs JSONL (image paths relative to its folder) into uint8 views."""
    pairs_file = Path(pairs_file)
    records = [json.loads(line) for line in pairs_file.read_text(encoding="utf-8").splitlines() if line.strip()]
    if not records:
        raise ValueError(f"{pairs_file} holds no image/caption pairs")
    side = processor.image_size
    views = np.empty((len(records), side, side, 3), dtype=np.uint8)  # (N, S, S, 3)
    for row, record in enumerate(records):
        with Image.open(pairs_file.parent / record["image"]) as image:
            views[row] = np.asarray(processor.fit(image.convert("RGB")))  # the global-view resize (a no-op at 56 px)
    return _Pairs(views, [r["caption"] for r in records], [r.get("group", "all") for r in records], [r.get("labels", {}) for r in records])


def _distinct_caption_batches(captions: list[str], batch_size: int, steps: int, rng: np.random.Generator) -> list[np.ndarray]:
    """Per step, the row indices of ``batch_size`` pairs with pairwise different captions. Captions are
    drawn (without replacement) in proportion to how many pairs have them, so a batch still mirrors the
    pairs file: a caption of a rare kind ("the word cat": 200 pairs) is not crowded out by the many
    combinations of a common one ("a red circle on the left": ~20 pairs each)."""
    rows_by_caption: dict[str, list[int]] = defaultdict(list)
    for row, caption in enumerate(captions):
        rows_by_caption[caption].append(row)
    groups = [np.asarray(rows) for rows in rows_by_caption.values()]
    weights = np.asarray([len(rows) for rows in groups], dtype=np.float64)
    size = min(batch_size, len(groups))
    batches = []
    for _ in range(steps):
        chosen = rng.choice(len(groups), size=size, replace=False, p=weights / weights.sum())
        batches.append(np.asarray([groups[k][rng.integers(len(groups[k]))] for k in chosen]))
    return batches


# ------------------------------------------------------------------------------------------ the loss
def image_text_embeddings(
    model: CLIPModel, pooling: Pooling, pixel_values: torch.Tensor, input_ids: torch.Tensor, attention_mask: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Unit-length image ``(B, E)`` and caption ``(C, E)`` embeddings, the image pooled as ``pooling``
    says (``"cls"``: CLIP's own, the post-layernorm CLS token)."""
    hidden = model.vision_model(pixel_values=pixel_values)
    if pooling == "cls":
        pooled = hidden.pooler_output  # (B, D)
    else:
        pooled = model.vision_model.post_layernorm(hidden.last_hidden_state[:, 1:].mean(dim=1))  # (B, D): patches, no CLS
    images = model.visual_projection(pooled)  # (B, E)
    texts = model.text_projection(model.text_model(input_ids=input_ids, attention_mask=attention_mask).pooler_output)  # (C, E)
    return F.normalize(images, dim=-1), F.normalize(texts, dim=-1)


def image_text_logits(
    model: CLIPModel, pooling: Pooling, pixel_values: torch.Tensor, input_ids: torch.Tensor, attention_mask: torch.Tensor
) -> torch.Tensor:
    """``(images, captions)`` scaled cosine similarities, the image embedding pooled as ``pooling`` says."""
    images, texts = image_text_embeddings(model, pooling, pixel_values, input_ids, attention_mask)
    return model.logit_scale.exp() * images @ texts.T  # (B, C)


def contrastive_loss(logits_per_image: torch.Tensor) -> torch.Tensor:
    """CLIP's loss: image ``k`` goes with caption ``k``; cross-entropy both ways, averaged."""
    targets = torch.arange(len(logits_per_image), device=logits_per_image.device)
    return (F.cross_entropy(logits_per_image, targets) + F.cross_entropy(logits_per_image.T, targets)) / 2


# ------------------------------------------------------------------------------------------ evaluation
@torch.no_grad()
def zero_shot_eval(model: CLIPModel, vocabulary: WordVocabulary, pairs: _Pairs, candidates: list[str],
                   caption_labels: dict[str, dict[str, str]], processor: LlavaVidImageProcessor, batch_size: int,
                   pooling: Pooling) -> dict[str, Any]:
    """Classify every pair's image among all ``candidates`` captions; accuracy per attribute (colour,
    shape, symbol, count, word, empty, blank: the predicted caption's value must match) and per group
    (the exact caption)."""
    model.eval()
    input_ids, attention_mask = vocabulary.encode(candidates)
    predictions = []
    for start in range(0, len(pairs.captions), batch_size):
        pixel_values = processor.normalize_views(pairs.views[start : start + batch_size])  # (B, 3, S, S)
        logits = image_text_logits(model, pooling, pixel_values, input_ids, attention_mask)  # (B, C)
        predictions += logits.argmax(dim=1).tolist()  # (B,)
    hits: dict[str, list[bool]] = defaultdict(list)
    exact: dict[str, list[bool]] = defaultdict(list)
    for caption, group, labels, predicted in zip(pairs.captions, pairs.groups, pairs.labels, predictions):
        guess = candidates[predicted]
        exact[group].append(guess == caption)
        for attribute, value in labels.items():
            hits[attribute].append(caption_labels.get(guess, {}).get(attribute) == value)
    values_per_attribute: dict[str, set[str]] = defaultdict(set)
    for labels in caption_labels.values():
        for attribute, value in labels.items():
            values_per_attribute[attribute].add(value)
    return {
        "candidates": len(candidates),
        "pairs": len(pairs.captions),
        "attributes": {
            attribute: {"accuracy": float(np.mean(results)), "count": len(results), "classes": len(values_per_attribute[attribute])}
            for attribute, results in sorted(hits.items())
        },
        "groups": {group: {"caption_accuracy": float(np.mean(results)), "count": len(results)} for group, results in sorted(exact.items())},
        "caption_accuracy": float(np.mean([hit for results in exact.values() for hit in results])),
    }


def format_eval_table(report: dict[str, Any]) -> str:
    """The per-attribute accuracies of :func:`zero_shot_eval` as a plain-text table."""
    rows = [("attribute", "classes", "pairs", "accuracy")]
    for attribute, result in report["attributes"].items():
        rows.append((attribute, str(result["classes"]), str(result["count"]), f"{result['accuracy']:.3f}"))
    rows.append(("exact caption", str(report["candidates"]), str(report["pairs"]), f"{report['caption_accuracy']:.3f}"))
    widths = [max(len(row[column]) for row in rows) for column in range(4)]
    lines = ["  ".join(cell.ljust(width) if column == 0 else cell.rjust(width) for column, (cell, width) in enumerate(zip(row, widths))) for row in rows]
    lines.insert(1, "  ".join("-" * width for width in widths))
    return "\n".join(lines)


# ------------------------------------------------------------------------------------------ training
def pretrain_vision_tower(
    pairs_file: str | Path,
    out_dir: str | Path,
    config: VisionPretrainConfig | None = None,
    *,
    eval_file: str | Path | None = None,
    progress: bool = True,
) -> Path:
    """Train a tiny CLIP on ``pairs_file`` and save its vision tower to ``out_dir`` (atomically).

    ``out_dir`` then loads with ``CLIPVisionModel.from_pretrained`` and as a preset's
    ``vision: {pretrained: ...}``; it also holds ``vision_eval.json`` (zero-shot accuracies on
    ``eval_file``, by default ``heldout/<pairs_file name>`` next to ``pairs_file``, else the training
    pairs themselves, flagged as such) and ``vision_pretrain.json`` (settings, loss curve, timing).
    With ``config.processes > 1`` that many processes share each batch (see :class:`VisionPretrainConfig`).
    Returns ``out_dir``.
    """
    config = config or VisionPretrainConfig()
    pairs_file, out_dir = Path(pairs_file), Path(out_dir)
    started = time.perf_counter()
    # Read and checked here, so a bad file or setting fails as itself before any process starts.
    processor = LlavaVidImageProcessor(image_size=config.image_size, aspect_mode="anyres")
    train = load_pairs(pairs_file, processor)
    if eval_file is None and (pairs_file.parent / "heldout" / pairs_file.name).is_file():
        eval_file = pairs_file.parent / "heldout" / pairs_file.name
    eval_file = Path(eval_file) if eval_file is not None else None
    evaluation = load_pairs(eval_file, processor) if eval_file is not None else train
    batch = min(config.batch_size, len(set(train.captions)))  # a batch's captions are distinct
    if batch < config.processes:
        raise ValueError(
            f"VisionPretrainConfig.processes={config.processes} is more than a batch holds: {pairs_file} has "
            f"{len(set(train.captions))} distinct captions (batch_size={config.batch_size})"
        )
    run = _Run(config, pairs_file, out_dir, processor, train, evaluation, eval_file, progress, started)
    if config.processes == 1:
        with torch.random.fork_rng(devices=[]):  # the run seeds torch; the caller's random state is left as it was
            _pretrain_process(0, run, None)
    else:
        with tempfile.TemporaryDirectory() as rendezvous:  # a file only this run knows: no port to race for
            torch.multiprocessing.spawn(_pretrain_process, args=(run, f"file://{rendezvous}/group"), nprocs=config.processes)
    return out_dir


@dataclass(frozen=True)
class _Run:
    """What every process of one pretraining run gets (pickled to each)."""

    config: VisionPretrainConfig
    pairs_file: Path
    out_dir: Path
    processor: LlavaVidImageProcessor
    train: _Pairs
    evaluation: _Pairs
    eval_file: Path | None
    progress: bool
    started: float


def _pretrain_process(rank: int, run: _Run, rendezvous: str | None) -> None:
    """One process's share of :func:`pretrain_vision_tower` (``rendezvous``: the process group's
    ``file://`` address, ``None`` for one process); process 0 evaluates and saves."""
    config, processor, train, evaluation = run.config, run.processor, run.train, run.evaluation
    world_size = config.processes if rendezvous is not None else 1
    previous_threads = torch.get_num_threads()
    if config.threads:
        torch.set_num_threads(config.threads)
    if rendezvous is not None:
        dist.init_process_group("gloo", init_method=rendezvous, rank=rank, world_size=world_size)
    try:
        torch.manual_seed(config.seed)  # every process builds the same model and draws the same batches
        candidates = sorted(set(train.captions) | set(evaluation.captions))
        vocabulary = WordVocabulary(candidates)
        caption_labels = {caption: labels for pairs in (train, evaluation) for caption, labels in zip(pairs.captions, pairs.labels)}
        model = CLIPModel(config.clip_config(vocabulary))
        model.train()

        decay = [p for name, p in model.named_parameters() if p.ndim >= 2 and "embedding" not in name]
        no_decay = [p for name, p in model.named_parameters() if not (p.ndim >= 2 and "embedding" not in name)]
        optimizer = torch.optim.AdamW(
            [{"params": decay, "weight_decay": config.weight_decay}, {"params": no_decay, "weight_decay": 0.0}], lr=config.learning_rate
        )
        schedule = get_cosine_schedule_with_warmup(optimizer, config.warmup_steps, config.steps)
        batches = _distinct_caption_batches(train.captions, config.batch_size, config.steps, np.random.default_rng(config.seed))
        text_ids, text_mask = vocabulary.encode(train.captions)  # (N, L) each, indexed per batch

        from tqdm import tqdm

        losses: list[float] = []
        bar = tqdm(batches, desc="vision pretrain", unit="step", disable=not run.progress or rank > 0, file=sys.stderr)
        for rows in bar:
            shares = np.array_split(rows, world_size)  # this process's pairs: shares[rank]
            mine = shares[rank]
            pixel_values = processor.normalize_views(train.views[mine])  # (b, 3, S, S)
            sizes = [len(share) for share in shares]
            loss = _contrastive_backward(model, config.pooling, pixel_values, text_ids[mine], text_mask[mine], sizes, rank)
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            optimizer.step()
            schedule.step()
            optimizer.zero_grad(set_to_none=True)
            with torch.no_grad():  # CLIP's clamp: a temperature below 1/100 makes the softmax brittle
                model.logit_scale.clamp_(0, math.log(100))
            losses.append(loss.item())
            if len(losses) % 25 == 0:
                bar.set_postfix(loss=f"{np.mean(losses[-25:]):.3f}")
        bar.close()
        train_seconds = time.perf_counter() - run.started
        if rank > 0:
            return

        report = zero_shot_eval(model, vocabulary, evaluation, candidates, caption_labels, processor, config.eval_batch_size, config.pooling)
        report["eval_file"] = str(run.eval_file) if run.eval_file is not None else None
        report["evaluated_on_training_pairs"] = run.eval_file is None
        report["seconds"] = {"train": round(train_seconds, 2), "total": round(time.perf_counter() - run.started, 2)}
        settings = {
            "config": asdict(config),
            "pairs_file": str(run.pairs_file),
            "train_pairs": len(train.captions),
            "distinct_captions": len(set(train.captions)),
            "vocabulary": vocabulary.tokens,
            "loss_every_step": [round(loss, 4) for loss in losses],
            "tokens_per_view": (config.image_size // config.patch_size) ** 2,
        }

        def write(folder: Path) -> None:
            model.vision_model.save_pretrained(folder)  # the CLIPVisionModel half only
            (folder / EVAL_FILE).write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
            (folder / SETTINGS_FILE).write_text(json.dumps(settings) + "\n", encoding="utf-8")

        write_folder_atomically(run.out_dir, write)
    finally:
        torch.set_num_threads(previous_threads)
        if rendezvous is not None:
            dist.destroy_process_group()
    if run.progress:
        print(format_eval_table(report))
        print(f"vision tower: {run.out_dir} ({train_seconds:.1f} s training, {settings['tokens_per_view']} tokens per view)")


def _contrastive_backward(
    model: CLIPModel,
    pooling: Pooling,
    pixel_values: torch.Tensor,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor,
    sizes: list[int],
    rank: int,
) -> torch.Tensor:
    """The whole batch's loss and its gradients in ``model``, from this process's share of it
    (``sizes``: every process's share, in process order; one process: ``[len(pixel_values)]``).
    Returns the loss."""
    images, texts = image_text_embeddings(model, pooling, pixel_values, input_ids, attention_mask)  # (b, E) each
    if len(sizes) > 1:  # the whole batch's embeddings: the loss contrasts every caption of the batch
        images, texts = _gather_rows(torch.cat([images, texts], dim=1), sizes, rank).chunk(2, dim=1)  # (B, E) each
    loss = contrastive_loss(model.logit_scale.exp() * images @ texts.T)  # the same loss in every process
    loss.backward()
    if len(sizes) > 1:
        _combine_gradients(model, len(sizes))
    return loss.detach()


def _gather_rows(local: torch.Tensor, sizes: list[int], rank: int) -> torch.Tensor:
    """Every process's ``(sizes[k], E)`` rows in process order: ``(sum(sizes), E)``. The others' rows
    arrive as constants; this process's are its own tensor, so its gradient flows back through them."""
    padded = F.pad(local.detach(), (0, 0, 0, max(sizes) - len(local)))  # all_gather wants equal shapes
    parts = [torch.empty_like(padded) for _ in sizes]
    dist.all_gather(parts, padded)
    rows = [part[:size] for part, size in zip(parts, sizes)]
    rows[rank] = local
    return torch.cat(rows)


def _combine_gradients(model: CLIPModel, world_size: int) -> None:
    """Make every process's gradients the whole batch's, in one all-reduce. Each process computed the
    whole batch's loss, differentiated through its own rows only: the towers' gradients of the processes
    add up to the whole batch's; the temperature, which each loss reads directly, is counted once per
    process, so its sum is divided by their number."""
    grads = [parameter.grad for parameter in model.parameters() if parameter.grad is not None]
    flat = torch.cat([grad.flatten() for grad in grads])
    dist.all_reduce(flat)
    for grad, part in zip(grads, flat.split([grad.numel() for grad in grads])):
        grad.copy_(part.view_as(grad))
    model.logit_scale.grad /= world_size
