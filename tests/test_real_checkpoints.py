"""The real LLaVA-1.5-7B path (CLIP ViT-L/14-336 + Vicuna-7B) and the GPU runtime.

Marked ``real``/``gpu`` and skipped cleanly here: they run on a user's machine that has the
checkpoints in its Hugging Face cache (or LLAVA_VID_REAL=1 with hub access) and a CUDA GPU.
"""

import os
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]


def _cached(repo_id: str) -> bool:
    from huggingface_hub import try_to_load_from_cache

    return isinstance(try_to_load_from_cache(repo_id, "config.json"), str)


REAL_AVAILABLE = os.environ.get("LLAVA_VID_REAL") == "1" or (
    _cached("openai/clip-vit-large-patch14-336") and _cached("lmsys/vicuna-7b-v1.5")
)


@pytest.mark.real
@pytest.mark.skipif(not REAL_AVAILABLE, reason="needs the CLIP-L/336 and Vicuna-7B checkpoints")
def test_vicuna7b_clip336_preset_builds_and_answers() -> None:
    from llava_vid.build import build_model_and_processor, load_model_spec
    from llava_vid.inference import answer

    model, processor = build_model_and_processor(load_model_spec(REPO / "configs/model/vicuna7b_clip336.yaml"))
    assert processor.tokens_per_image == model.tokens_per_image == 576
    assert model.config.vision_config.hidden_size == 1024 and model.config.text_config.hidden_size == 4096
    if torch.cuda.is_available():
        model = model.to("cuda", torch.bfloat16)
    text = answer(model.eval(), processor, "What is this?", [str(REPO / "examples/shapes.png")], max_new_tokens=4)
    assert isinstance(text, str)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_tiny_model_runs_on_the_gpu_runtime(tmp_path: Path) -> None:
    from llava_vid.build import build_model_and_processor, load_model_spec
    from llava_vid.inference import answer, load_pretrained

    model, processor = build_model_and_processor(load_model_spec(REPO / "configs/model/tiny.yaml"))
    model.save_pretrained(tmp_path)
    processor.save_pretrained(tmp_path)
    gpu_model, gpu_processor = load_pretrained(str(tmp_path))
    assert gpu_model.device.type == "cuda" and gpu_model.dtype in (torch.bfloat16, torch.float16)
    assert gpu_model.config.text_config._attn_implementation in ("flash_attention_2", "sdpa")
    text = answer(gpu_model, gpu_processor, "What is this?", [str(REPO / "examples/shapes.png")], max_new_tokens=4)
    assert isinstance(text, str)
