"""Presets build real models: random parts from configs, pretrained parts from checkpoints on disk
(the path users take with CLIP ViT-L/14-336 and Vicuna-7B, exercised here with tiny checkpoints)."""

import dataclasses
from pathlib import Path

import pytest
import torch
from transformers import CLIPConfig, CLIPModel, LlamaConfig, LlamaForCausalLM

from llava_vid.build import PartSpec, TokenizerSpec, build_model_and_processor, load_model_spec
from llava_vid.inference.runtime import pick_runtime

REPO = Path(__file__).resolve().parents[1]


def test_random_preset_matches_tokenizer_and_geometry() -> None:
    model, processor = build_model_and_processor(load_model_spec(REPO / "configs/model/tiny.yaml"))
    assert model.config.text_config.vocab_size == len(processor.tokenizer)
    assert model.config.image_token_id == processor.image_token_id
    assert model.tokens_per_image == processor.tokens_per_image == 16


def test_pretrained_parts_are_loaded_not_reinitialised(tmp_path: Path) -> None:
    spec = load_model_spec(REPO / "configs/model/tiny.yaml")
    vision = dict(spec.vision.config)
    vision.pop("model_type")
    clip = CLIPModel(
        CLIPConfig(
            vision_config=vision,
            text_config={"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 1, "num_attention_heads": 4},
        )
    )
    clip.save_pretrained(tmp_path / "clip")  # a full CLIP checkpoint, like openai/clip-vit-large-patch14-336
    text = dict(spec.text.config)
    text.pop("model_type")
    llm = LlamaForCausalLM(LlamaConfig(vocab_size=900, **text))
    llm.save_pretrained(tmp_path / "llm")

    pretrained = dataclasses.replace(
        spec,
        vision=PartSpec(pretrained=str(tmp_path / "clip")),
        text=PartSpec(pretrained=str(tmp_path / "llm")),
        tokenizer=TokenizerSpec(offline_vocab_size=1024),
    )
    model, processor = build_model_and_processor(pretrained)

    assert not any(p.is_meta for p in model.parameters())
    torch.testing.assert_close(
        model.vision_tower.embeddings.patch_embedding.weight, clip.vision_model.embeddings.patch_embedding.weight
    )
    torch.testing.assert_close(model.language_model.model.layers[0].mlp.up_proj.weight, llm.model.layers[0].mlp.up_proj.weight)
    # The tokenizer (976 ids) outgrew the LM's 900 rows: embeddings were resized, old rows kept.
    embeddings = model.get_input_embeddings().weight
    assert embeddings.shape[0] == len(processor.tokenizer) == model.config.text_config.vocab_size
    torch.testing.assert_close(embeddings[:900], llm.get_input_embeddings().weight)
    out = model(**processor.apply_chat_template(
        [{"role": "user", "content": [{"type": "image", "path": str(REPO / "examples/shapes.png")}, {"type": "text", "text": "Hi"}]},
         {"role": "assistant", "content": "Hello."}],
        tokenize=True, return_dict=True,
    ))
    assert torch.isfinite(out.loss)


def test_cpu_runtime_is_fp32_sdpa() -> None:
    runtime = pick_runtime("cpu")
    assert (runtime.dtype, runtime.attn_implementation) == (torch.float32, "sdpa")


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_gpu_runtime_prefers_bf16() -> None:
    runtime = pick_runtime()
    assert runtime.device.type == "cuda"
    assert runtime.dtype in (torch.bfloat16, torch.float16)
    assert runtime.attn_implementation in ("flash_attention_2", "sdpa")
