"""What a training run leaves on disk, and how the next run (or stage) picks it up.

Intermediate checkpoints (``output_dir/checkpoint-N``) are written by the transformers ``Trainer``
(model, optimizer, scheduler, RNG states, ``trainer_state.json``; with DeepSpeed its own shards).
The Trainer writes them in place, file by file, so a kill mid-save leaves a folder that *looks* like a
checkpoint. Ours are complete only once :class:`CheckpointCompletion` has written
:data:`COMPLETE_MARKER` into the folder — after every process finished writing, atomically (temp file
+ rename) — and only complete checkpoints are ever resumed from (:func:`latest_complete_checkpoint`) or
kept when old ones are rotated out. The marker also carries the run's counters (samples seen, skipped
by reason, tokens), so a resumed run reports the same totals as an uninterrupted one.

Final weights (``output_dir/final``) come in two kinds (``final_weights`` in the stage config):

* ``full``: an ordinary ``save_pretrained`` folder (under ZeRO-3 the 16-bit weights gathered from
  every process), loadable with ``LlavaVidForConditionalGeneration.from_pretrained``.
* ``multimodal`` (stage 1): only the trained multimodal layers in :data:`MULTIMODAL_WEIGHTS`
  (safetensors) + ``config.json`` + the processor + :data:`BASE_FILE`, which says how to rebuild the
  frozen rest (the model preset, or a saved full-model folder) and holds a fingerprint of it.
  :func:`load_trained_folder` rebuilds the vision tower and LLM from there, checks the fingerprint
  (a different base would silently pair the projector with weights it was never trained on) and puts
  the multimodal weights in — stage 2 starts from exactly what stage 1 trained against.
"""

from __future__ import annotations

import json
import math
import os
import re
import shutil
import tempfile
from pathlib import Path
from typing import Any, Callable, Mapping

import torch
from torch import nn
from transformers import TrainerCallback, TrainerControl, TrainerState, TrainingArguments

__all__ = [
    "BASE_FILE",
    "COMPLETE_MARKER",
    "MULTIMODAL_WEIGHTS",
    "CheckpointCompletion",
    "complete_checkpoints",
    "is_complete",
    "latest_complete_checkpoint",
    "load_trained_folder",
    "read_progress",
    "save_final_folder",
]

COMPLETE_MARKER = "llava_vid_checkpoint.json"
MULTIMODAL_WEIGHTS = "multimodal.safetensors"
BASE_FILE = "base.json"
_CHECKPOINT_NAME = re.compile(r"^checkpoint-(\d+)$")
# Parts rebuilt from the base when a multimodal-only folder is loaded (attribute names on the model).
_BASE_PARTS = ("vision_tower", "language_model")
_MULTIMODAL_PREFIXES = ("projector.", "video_compressor.", "image_newline")


# ------------------------------------------------------------------------------------------ completion
def _write_json_atomically(path: Path, payload: Mapping[str, Any]) -> None:
    handle, temp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    with os.fdopen(handle, "w") as file:
        json.dump(payload, file, indent=1, sort_keys=True)
        file.flush()
        os.fsync(file.fileno())
    os.replace(temp, path)


def is_complete(checkpoint: Path) -> bool:
    """Whether ``checkpoint`` was marked complete after every file of it was written."""
    return (Path(checkpoint) / COMPLETE_MARKER).is_file()


def _checkpoints(output_dir: Path) -> list[tuple[int, Path]]:
    found = []
    for entry in Path(output_dir).glob("checkpoint-*"):
        match = _CHECKPOINT_NAME.match(entry.name)
        if match and entry.is_dir():
            found.append((int(match.group(1)), entry))
    return sorted(found)


def complete_checkpoints(output_dir: Path) -> list[Path]:
    """Complete checkpoints in ``output_dir``, oldest (lowest step) first."""
    return [path for _, path in _checkpoints(output_dir) if is_complete(path)]


def latest_complete_checkpoint(output_dir: Path) -> Path | None:
    """The newest complete checkpoint, or ``None``; partial folders (a kill mid-save) are ignored."""
    complete = complete_checkpoints(output_dir)
    return complete[-1] if complete else None


def read_progress(checkpoint: Path) -> dict[str, Any]:
    """The counters stored in a complete checkpoint's marker."""
    marker = Path(checkpoint) / COMPLETE_MARKER
    if not marker.is_file():
        raise ValueError(f"{checkpoint} is not a complete checkpoint (no {COMPLETE_MARKER}); it was cut off mid-save")
    return json.loads(marker.read_text())


def _rotate(output_dir: Path, keep: int | None) -> None:
    """Keep the newest ``keep`` complete checkpoints; delete older ones and partial folders older than
    the newest complete one (a newer partial one may still be being written by another process)."""
    found = _checkpoints(output_dir)
    complete = [step for step, path in found if is_complete(path)]
    if not complete:
        return
    kept = set(complete[-keep:]) if keep else set(complete)
    newest = complete[-1]
    for step, path in found:
        if step not in kept and step <= newest:
            shutil.rmtree(path, ignore_errors=True)


class CheckpointCompletion(TrainerCallback):
    """Marks each checkpoint complete once every process has written its part, then rotates old ones.

    Args:
        output_dir: the run's output folder (where the Trainer writes ``checkpoint-N``).
        keep: checkpoints to keep (``None``: all); the Trainer's own rotation must be off
            (``save_total_limit=None``), since it may delete the last complete checkpoint before the new
            one is complete.
        progress: returns the counters to store (called on every process; they must agree).
        barrier: waits for every process (``Accelerator.wait_for_everyone``).
        is_main_process: whether this process writes the marker.
    """

    def __init__(
        self,
        output_dir: Path,
        *,
        keep: int | None,
        progress: Callable[[], dict[str, Any]],
        barrier: Callable[[], None],
        is_main_process: Callable[[], bool],
    ) -> None:
        self.output_dir = Path(output_dir)
        self.keep = keep
        self.progress = progress
        self.barrier = barrier
        self.is_main_process = is_main_process

    def on_save(
        self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kwargs: Any
    ) -> TrainerControl:
        checkpoint = self.output_dir / f"checkpoint-{state.global_step}"
        payload = {"global_step": state.global_step, **self.progress()}
        self.barrier()  # every process's shards, RNG state and optimizer files are on disk
        if self.is_main_process():
            if not checkpoint.is_dir():
                raise RuntimeError(f"the Trainer reported a save but {checkpoint} does not exist")
            _write_json_atomically(checkpoint / COMPLETE_MARKER, payload)
            _rotate(self.output_dir, self.keep)
        self.barrier()  # nobody resumes or rotates against a checkpoint that is not marked yet
        return control


# ------------------------------------------------------------------------------------------ fingerprint
def _fingerprint(named: Mapping[str, torch.Tensor], dtypes: Mapping[str, str] | None = None) -> dict[str, dict]:
    """Per base part: element count, Σx and Σx² in float64 — cheap, and any other base differs.

    Taken at save time from the weights as trained (bf16 under mixed precision: DeepSpeed casts the
    module), so the check casts the rebuilt fp32 weights to the recorded ``dtype`` first (``dtypes``).
    """
    result: dict[str, dict] = {}
    for part in _BASE_PARTS:
        tensors = [t.detach() for name, t in named.items() if name.startswith(part + ".")]
        if not tensors:
            continue
        if dtypes and part in dtypes:
            tensors = [t.to(getattr(torch, dtypes[part])) for t in tensors]
        result[part] = {
            "dtype": str(tensors[0].dtype).removeprefix("torch."),
            "numel": float(sum(t.numel() for t in tensors)),
            "sum": float(sum(t.double().sum() for t in tensors)),
            "sum_squares": float(sum(t.double().square().sum() for t in tensors)),
        }
    return result


def _check_fingerprint(expected: Mapping[str, Mapping[str, Any]], model: nn.Module, folder: Path) -> None:
    found = _fingerprint(dict(model.state_dict()), {part: numbers["dtype"] for part, numbers in expected.items()})
    for part, numbers in expected.items():
        for key in ("numel", "sum", "sum_squares"):
            got, value = found.get(part, {}).get(key, math.nan), numbers[key]
            if not math.isclose(got, value, rel_tol=1e-6, abs_tol=1e-6):
                raise ValueError(
                    f"{folder}: the rebuilt {part} is not the one these multimodal weights were trained with "
                    f"({key}: {got!r} rebuilt vs {value!r} recorded in {BASE_FILE}); the base checkpoint or "
                    "preset changed since the stage ran"
                )


# ------------------------------------------------------------------------------------------ final folders
def multimodal_state(state_dict: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The projector / compressor / newline entries of a full state dict."""
    return {name: t for name, t in state_dict.items() if name.startswith(_MULTIMODAL_PREFIXES)}


def save_final_folder(
    folder: Path,
    *,
    model: nn.Module,
    state_dict: Mapping[str, torch.Tensor],
    processor: Any,
    weights: str,
    base: dict[str, Any] | None,
) -> None:
    """Write a stage's result into ``folder`` (a staging folder; the caller renames it into place).

    ``state_dict`` is the full, gathered one (under ZeRO-3 ``model``'s own parameters are shards).
    ``weights="multimodal"`` needs ``base`` (:func:`describe_base`).
    """
    from safetensors.torch import save_file

    processor.save_pretrained(folder)
    if weights == "full":
        # save_original_format=False: keys as the model names them today. (By default transformers renames
        # some back to legacy spellings, e.g. the Q-Former's LayerNorm weight → gamma, whenever the model
        # was itself loaded with from_pretrained — so one model would save two ways.)
        model.save_pretrained(folder, state_dict=dict(state_dict), save_original_format=False)
        return
    if base is None:
        raise ValueError("a multimodal-only folder needs a base to rebuild the frozen parts from")
    model.config.save_pretrained(folder)
    tensors = {name: t.detach().contiguous().cpu() for name, t in multimodal_state(state_dict).items()}
    save_file(tensors, str(folder / MULTIMODAL_WEIGHTS), metadata={"format": "pt"})
    _write_json_atomically(folder / BASE_FILE, {**base, "fingerprint": _fingerprint(state_dict)})


def describe_base(source: Path) -> dict[str, Any]:
    """How to rebuild a model's frozen parts: ``{"preset": {...}}`` for a model preset YAML,
    ``{"folder": path}`` for a saved full model, the same base again for a multimodal-only folder."""
    from llava_vid.build import load_model_spec, model_spec_to_mapping

    source = Path(source)
    if source.is_file():
        return {"preset": model_spec_to_mapping(load_model_spec(source))}
    if (source / BASE_FILE).is_file():
        base = json.loads((source / BASE_FILE).read_text())
        base.pop("fingerprint", None)
        return base
    return {"folder": str(source.resolve())}


def is_multimodal_only(folder: Path) -> bool:
    return (Path(folder) / MULTIMODAL_WEIGHTS).is_file() and (Path(folder) / BASE_FILE).is_file()


def load_trained_folder(folder: Path, *, dtype: torch.dtype = torch.float32, attn_implementation: str = "sdpa"):
    """Model + processor from a stage's final folder: a full ``save_pretrained`` folder, or a
    multimodal-only one (base rebuilt, fingerprint checked, multimodal weights loaded strictly)."""
    import llava_vid  # noqa: F401  (registers the Auto classes)
    from llava_vid.build import build_model_and_processor, model_spec_from_mapping
    from llava_vid.modeling import LlavaVidForConditionalGeneration
    from llava_vid.processing.processor import LlavaVidProcessor

    folder = Path(folder)
    processor = LlavaVidProcessor.from_pretrained(str(folder))
    if not is_multimodal_only(folder):
        model = LlavaVidForConditionalGeneration.from_pretrained(
            str(folder), dtype=dtype, attn_implementation=attn_implementation
        )
        return model, processor

    from safetensors.torch import load_file

    base = json.loads((folder / BASE_FILE).read_text())
    # The base is rebuilt in fp32 (as training built it) and checked before any cast.
    if "preset" in base:
        model, _ = build_model_and_processor(model_spec_from_mapping(base["preset"], f"{folder / BASE_FILE}: preset"))
    elif "folder" in base:
        model = LlavaVidForConditionalGeneration.from_pretrained(base["folder"], dtype=torch.float32)
    else:
        raise ValueError(f"{folder / BASE_FILE}: needs a 'preset' or a 'folder' entry, found {sorted(base)}")
    _check_fingerprint(base.get("fingerprint", {}), model, folder)
    model = model.to(dtype)
    model.set_attn_implementation(attn_implementation)

    trained = load_file(str(folder / MULTIMODAL_WEIGHTS))
    expected = set(multimodal_state(model.state_dict()))
    if set(trained) != expected:
        missing, unexpected = sorted(expected - set(trained)), sorted(set(trained) - expected)
        raise ValueError(
            f"{folder / MULTIMODAL_WEIGHTS} does not match the model: missing {missing[:5]}, unexpected {unexpected[:5]}"
        )
    model.load_state_dict(trained, strict=False)  # the base parts came from the base, checked above
    return model, processor
