"""Where and how the model runs: device, dtype and attention backend, chosen once.

On a CUDA GPU: bf16 (fp16 where bf16 is unsupported) and ``flash_attention_2`` when the optional
``flash-attn`` package is installed, else PyTorch SDPA. On a CPU: fp32 and SDPA.
"""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass
from pathlib import Path

import torch

from llava_vid.config import LlavaVidConfig


@dataclass(frozen=True)
class Runtime:
    device: torch.device
    dtype: torch.dtype
    attn_implementation: str


def pick_runtime(device: str | None = None) -> Runtime:
    """The best runtime for ``device`` (default: CUDA when available, else CPU)."""
    resolved = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    if resolved.type != "cuda":
        return Runtime(resolved, torch.float32, "sdpa")
    dtype = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    has_flash = importlib.util.find_spec("flash_attn") is not None
    return Runtime(resolved, dtype, "flash_attention_2" if has_flash else "sdpa")


def load_pretrained(model_dir: str | Path, runtime: Runtime | None = None):
    """Load a saved model and its processor for inference on ``runtime`` (default: :func:`pick_runtime`).

    ``model_dir``: a folder written by ``llava-vid init`` or a training stage (its ``final/``). A missing
    folder, or one without a saved model, is a ``FileNotFoundError`` naming it, before transformers
    would read the name as a hub id and fail on that instead.
    """
    from llava_vid.modeling import LlavaVidForConditionalGeneration
    from llava_vid.processing.processor import LlavaVidProcessor

    from llava_vid.train.checkpoints import is_multimodal_only, load_trained_folder

    runtime = runtime or pick_runtime()
    folder = Path(model_dir)
    if not folder.is_dir():
        raise FileNotFoundError(f"{model_dir}: no such folder (a model is a folder written by `llava-vid init` or training)")
    if is_multimodal_only(model_dir):  # a stage-1 result: base rebuilt + trained multimodal layers
        model, processor = load_trained_folder(
            model_dir, dtype=runtime.dtype, attn_implementation=runtime.attn_implementation
        )
        return model.to(runtime.device).eval(), processor
    if not (folder / "config.json").is_file():
        raise FileNotFoundError(
            f"{model_dir} holds no saved model (no config.json, and not a stage-1 folder of multimodal weights)"
        )
    config = LlavaVidConfig.from_pretrained(model_dir)
    model = LlavaVidForConditionalGeneration.from_pretrained(
        model_dir, config=config, dtype=runtime.dtype, attn_implementation=runtime.attn_implementation
    )
    processor = LlavaVidProcessor.from_pretrained(model_dir)
    return model.to(runtime.device).eval(), processor
