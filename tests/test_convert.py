"""Checkpoint conversion: transformers Llava and original LLaVA → llava_vid, checked by parity and weight equality."""

from __future__ import annotations

import importlib.util
import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file
from transformers import (
    AutoModelForImageTextToText,
    AutoProcessor,
    CLIPVisionConfig,
    CLIPVisionModel,
    LlamaConfig,
    LlavaConfig,
    LlavaForConditionalGeneration,
    LlavaImageProcessorPil,
)

import llava_vid  # noqa: F401  (registers the Auto classes)
from llava_vid import LlavaVidConfig, LlavaVidForConditionalGeneration
from llava_vid.convert import (
    convert_llava,
    convert_llava_hf,
    llava_config_to_ours,
    llava_hf_config_to_ours,
    map_llava_hf_state_dict,
    map_llava_state_dict,
    save_converted,
)
from llava_vid.tokenizer import IMAGE_TOKEN, VIDEO_TOKEN, build_offline_tokenizer

REPO_ROOT = Path(__file__).resolve().parents[1]
TOKENS_PER_IMAGE = 16  # 56 px / 14 px patches → 4 × 4, CLS dropped
IMAGE_SIZE = 56


def tiny_vision_config() -> CLIPVisionConfig:
    return CLIPVisionConfig(
        hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
        image_size=IMAGE_SIZE, patch_size=14,
    )  # fmt: skip


def tiny_text_kwargs(vocab_size: int) -> dict:
    return dict(
        hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
        vocab_size=vocab_size, max_position_embeddings=256, bos_token_id=1, eos_token_id=2, pad_token_id=3,
        tie_word_embeddings=False,
    )  # fmt: skip


@pytest.fixture(scope="module")
def tokenizer():
    return build_offline_tokenizer(512)


# ---------------------------------------------------------------------------------------------- llava-hf
@pytest.fixture(scope="module")
def hf_checkpoint(tmp_path_factory, tokenizer) -> tuple[Path, LlavaForConditionalGeneration]:
    """A tiny random transformers Llava saved with its tokenizer and HF processor (CLIP crop, do_pad=False)."""
    torch.manual_seed(0)
    config = LlavaConfig(
        vision_config=tiny_vision_config(),
        text_config=LlamaConfig(**tiny_text_kwargs(len(tokenizer))),
        image_token_index=tokenizer.convert_tokens_to_ids(IMAGE_TOKEN),
        image_seq_length=TOKENS_PER_IMAGE,
    )
    model = LlavaForConditionalGeneration(config).eval()
    with torch.no_grad():  # std-0.02 init gives near-flat logits; widen them so greedy argmaxes are not near-ties
        model.lm_head.weight.mul_(20.0)
    src = tmp_path_factory.mktemp("llava_hf")
    model.save_pretrained(src)
    tokenizer.save_pretrained(src)
    image_processor = LlavaImageProcessorPil(
        size={"shortest_edge": IMAGE_SIZE}, crop_size={"height": IMAGE_SIZE, "width": IMAGE_SIZE}
    )
    image_processor.save_pretrained(src)  # preprocessor_config.json
    return src, model


@pytest.fixture(scope="module")
def converted(hf_checkpoint):
    src, _ = hf_checkpoint
    return convert_llava_hf(src)


def make_batch(tokenizer) -> dict[str, torch.Tensor]:
    """Two left-padded rows: row 0 holds two images, row 1 one image; 16 image tokens per image."""
    image_id = tokenizer.convert_tokens_to_ids(IMAGE_TOKEN)
    generator = torch.Generator().manual_seed(1)

    def text(n: int) -> list[int]:
        return torch.randint(4, 500, (n,), generator=generator).tolist()

    image = [image_id] * TOKENS_PER_IMAGE
    rows = [
        [tokenizer.bos_token_id, *text(5), *image, *text(3), *image, *text(4)],
        [tokenizer.bos_token_id, *text(2), *image, *text(6)],
    ]
    length = max(map(len, rows))
    input_ids = torch.full((2, length), tokenizer.pad_token_id)
    attention_mask = torch.zeros((2, length), dtype=torch.long)
    for index, row in enumerate(rows):
        input_ids[index, length - len(row) :] = torch.tensor(row)
        attention_mask[index, length - len(row) :] = 1
    pixel_values = torch.randn(3, 3, IMAGE_SIZE, IMAGE_SIZE, generator=generator)
    return {"input_ids": input_ids, "attention_mask": attention_mask, "pixel_values": pixel_values}


def assert_same_outputs(reference, model, batch, pad_token_id: int) -> None:
    with torch.no_grad():
        expected = reference(**batch).logits
        actual = model(**batch).logits
    torch.testing.assert_close(actual, expected, atol=1e-5, rtol=0)
    options = dict(max_new_tokens=8, do_sample=False, pad_token_id=pad_token_id)
    expected_ids = reference.generate(**batch, **options)
    actual_ids = model.generate(**batch, **options)
    assert torch.equal(actual_ids, expected_ids)


def test_llava_hf_keys_map_to_ours(hf_checkpoint, converted):
    _, hf_model = hf_checkpoint
    model, _ = converted
    hf_state = hf_model.state_dict()
    mapped = map_llava_hf_state_dict(hf_state)
    assert set(mapped) == set(model.state_dict())
    assert mapped["projector.0.weight"] is hf_state["model.multi_modal_projector.linear_1.weight"]
    assert mapped["projector.2.bias"] is hf_state["model.multi_modal_projector.linear_2.bias"]
    assert mapped["language_model.lm_head.weight"] is hf_state["lm_head.weight"]
    assert mapped["vision_tower.pre_layrnorm.weight"] is hf_state["model.vision_tower.pre_layrnorm.weight"]
    # The serialised hub layout maps to the same names.
    serialised = {
        "vision_tower.vision_model.post_layernorm.weight": hf_state["model.vision_tower.post_layernorm.weight"],
        "multi_modal_projector.linear_1.bias": hf_state["model.multi_modal_projector.linear_1.bias"],
        "language_model.model.norm.weight": hf_state["model.language_model.norm.weight"],
        "language_model.lm_head.weight": hf_state["lm_head.weight"],
    }
    assert set(map_llava_hf_state_dict(serialised)) == {
        "vision_tower.post_layernorm.weight",
        "projector.0.bias",
        "language_model.model.norm.weight",
        "language_model.lm_head.weight",
    }
    with pytest.raises(ValueError, match=r"model\.multi_modal_projector\.linear_3\.weight"):
        map_llava_hf_state_dict({**hf_state, "model.multi_modal_projector.linear_3.weight": torch.zeros(1)})


def test_llava_hf_parity(hf_checkpoint, converted, tokenizer):
    _, hf_model = hf_checkpoint
    model, processor = converted
    config = model.config
    assert (config.projector_type, config.vision_feature_layer, config.vision_feature_select) == (
        "mlp2x_gelu", -2, "patch"
    )  # fmt: skip
    assert config.image_aspect_mode == "crop"  # do_pad=False in the source image processor
    assert config.image_token_id == hf_model.config.image_token_id
    assert processor.tokens_per_image == TOKENS_PER_IMAGE
    assert processor.tokenizer.convert_tokens_to_ids(VIDEO_TOKEN) == tokenizer.convert_tokens_to_ids(VIDEO_TOKEN)
    assert_same_outputs(hf_model, model, make_batch(tokenizer), tokenizer.pad_token_id)


def test_llava_hf_round_trip_through_auto_classes(hf_checkpoint, converted, tokenizer, tmp_path):
    _, hf_model = hf_checkpoint
    model, processor = converted
    save_converted(model, processor, tmp_path)
    reloaded = AutoModelForImageTextToText.from_pretrained(tmp_path).eval()
    assert isinstance(reloaded, LlavaVidForConditionalGeneration)
    assert_same_outputs(hf_model, reloaded, make_batch(tokenizer), tokenizer.pad_token_id)


def test_cli_llava_hf(hf_checkpoint, tokenizer, tmp_path):
    src, hf_model = hf_checkpoint
    dst = tmp_path / "converted"
    result = subprocess.run(
        [sys.executable, "tools/convert_checkpoint.py", "--from", "llava-hf", str(src), str(dst)],
        cwd=REPO_ROOT, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert "model.safetensors" in result.stdout and "config.json" in result.stdout
    processor = AutoProcessor.from_pretrained(dst)
    model = AutoModelForImageTextToText.from_pretrained(dst).eval()
    assert isinstance(model, LlavaVidForConditionalGeneration)
    assert processor.image_processor.aspect_mode == "crop"
    assert processor.tokens_per_image == TOKENS_PER_IMAGE
    batch = make_batch(tokenizer)
    with torch.no_grad():
        torch.testing.assert_close(model(**batch).logits, hf_model(**batch).logits, atol=1e-5, rtol=0)


def test_llava_hf_pad_aspect_from_processor_config(hf_checkpoint, tmp_path):
    src, _ = hf_checkpoint
    shutil.copytree(src, tmp_path, dirs_exist_ok=True)
    (tmp_path / "preprocessor_config.json").unlink()
    nested = {"image_processor": {"do_pad": True, "image_mean": [0.5, 0.5, 0.5], "image_std": [0.5, 0.5, 0.5]}}
    (tmp_path / "processor_config.json").write_text(json.dumps(nested))
    model, processor = convert_llava_hf(tmp_path)
    assert model.config.image_aspect_mode == "pad"
    assert processor.image_processor.aspect_mode == "pad"
    assert processor.image_processor.image_mean == [0.5, 0.5, 0.5]


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("projector_hidden_act", "relu", "projector_hidden_act"),
        ("multimodal_projector_bias", False, "multimodal_projector_bias"),
        ("vision_feature_layer", [-2, -5], "vision_feature_layer"),
    ],
)
def test_llava_hf_refusals(hf_checkpoint, tokenizer, field, value, message):
    _, hf_model = hf_checkpoint
    config = LlavaConfig.from_dict(hf_model.config.to_dict())
    setattr(config, field, value)
    with pytest.raises(ValueError, match=message):
        llava_hf_config_to_ours(config, tokenizer)


def test_llava_hf_refuses_non_gelu_checkpoint(hf_checkpoint, tmp_path):
    src, _ = hf_checkpoint
    shutil.copytree(src, tmp_path, dirs_exist_ok=True)
    config = json.loads((tmp_path / "config.json").read_text())
    config["projector_hidden_act"] = "silu"
    (tmp_path / "config.json").write_text(json.dumps(config))
    with pytest.raises(ValueError, match="projector_hidden_act='silu'"):
        convert_llava_hf(tmp_path)


def test_llava_hf_refuses_mismatched_image_token(hf_checkpoint, tokenizer):
    _, hf_model = hf_checkpoint
    config = LlavaConfig.from_dict(hf_model.config.to_dict())
    config.image_token_id = 5
    with pytest.raises(ValueError, match="image_token_id is 5"):
        llava_hf_config_to_ours(config, tokenizer)


# ------------------------------------------------------------------------------------------ original LLaVA
LLAVA_SOURCE_VOCAB = 512  # the LLaMA knows no <image>/<video>; the converter appends them


@pytest.fixture(scope="module")
def llava_source(tokenizer) -> tuple[LlavaVidConfig, dict[str, torch.Tensor], dict]:
    """Weights of a tiny model in our layout, plus the LLaVA config.json describing it."""
    assert len(tokenizer) == LLAVA_SOURCE_VOCAB + 2
    torch.manual_seed(2)
    text_kwargs = tiny_text_kwargs(LLAVA_SOURCE_VOCAB)
    config = LlavaVidConfig(
        vision_config=tiny_vision_config(),
        text_config=LlamaConfig(**text_kwargs),
        projector_type="mlp2x_gelu",
        vision_feature_layer=-2,
    )
    weights = {key: value.clone() for key, value in LlavaVidForConditionalGeneration(config).state_dict().items()}
    llava_config = {
        **text_kwargs,
        "architectures": ["LlavaLlamaForCausalLM"],
        "model_type": "llava",
        "hidden_act": "silu",
        "rms_norm_eps": 1e-5,
        "rope_scaling": None,
        "pretraining_tp": 1,
        "max_length": 4096,
        "torch_dtype": "float32",
        "image_aspect_ratio": "pad",
        "mm_hidden_size": 32,
        "mm_projector_type": "mlp2x_gelu",
        "mm_use_im_patch_token": False,
        "mm_use_im_start_end": False,
        "mm_vision_select_feature": "patch",
        "mm_vision_select_layer": -2,
        "mm_vision_tower": "openai/clip-vit-large-patch14-336",
        "tune_mm_mlp_adapter": False,
        "use_mm_proj": True,
    }
    return config, weights, llava_config


def to_llava_names(weights: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Our names → original LLaVA names, written out by hand."""
    renamed = {}
    for key, value in weights.items():
        if key.startswith("vision_tower."):
            new = "model.vision_tower.vision_tower.vision_model." + key.removeprefix("vision_tower.")
        elif key.startswith("projector."):
            new = "model.mm_projector." + key.removeprefix("projector.")
        elif key.startswith("language_model.model."):
            new = "model." + key.removeprefix("language_model.model.")
        elif key == "language_model.lm_head.weight":
            new = "lm_head.weight"
        elif key == "image_newline":
            new = "model.image_newline"
        else:
            raise AssertionError(key)
        renamed[new] = value
    return renamed


@pytest.fixture(scope="module")
def clip_dir(tmp_path_factory) -> tuple[Path, dict[str, torch.Tensor]]:
    """A separate CLIP tower checkpoint (different weights from the LLaVA source's own tower)."""
    torch.manual_seed(3)
    tower = CLIPVisionModel(tiny_vision_config())
    path = tmp_path_factory.mktemp("clip")
    tower.save_pretrained(path)
    return path, {f"vision_tower.{key}": value.clone() for key, value in tower.state_dict().items()}


def write_llava_checkpoint(
    path: Path, tokenizer, llava_config: dict, state_dict: dict[str, torch.Tensor], fmt: str
) -> None:
    path.mkdir(parents=True, exist_ok=True)
    (path / "config.json").write_text(json.dumps(llava_config))
    tokenizer.save_pretrained(path)
    if fmt == "safetensors":
        save_file({key: value.contiguous() for key, value in state_dict.items()}, str(path / "model.safetensors"))
    else:  # two shards, as LLaVA's 7B/13B checkpoints come
        keys = sorted(state_dict)
        half = len(keys) // 2
        for index, chunk in enumerate((keys[:half], keys[half:])):
            torch.save({key: state_dict[key] for key in chunk}, path / f"pytorch_model-0000{index + 1}-of-00002.bin")


@pytest.mark.parametrize("case", ["projector_inside", "separate_projector", "stage1_projector_dir"])
def test_convert_llava(case, llava_source, clip_dir, tokenizer, tmp_path):
    config, weights, llava_config = llava_source
    clip_path, clip_weights = clip_dir
    llava_weights = to_llava_names(weights)
    llava_weights["model.layers.0.self_attn.rotary_emb.inv_freq"] = torch.ones(4)  # old non-persistent buffer
    expected = dict(weights)
    projector_file = None
    if case == "projector_inside":
        fmt = "safetensors"  # the tower was saved too: its weights win over the CLIP checkpoint's
    else:
        fmt = "bin"
        llava_weights = {k: v for k, v in llava_weights.items() if not k.startswith("model.vision_tower.")}
        expected.update(clip_weights)  # tower from the CLIP checkpoint
        projector = {k: v for k, v in llava_weights.items() if k.startswith("model.mm_projector.")}
        stage1 = tmp_path / "stage1"
        stage1.mkdir()
        projector_file = stage1 / "mm_projector.bin"
        torch.save(projector, projector_file)
        (stage1 / "config.json").write_text(json.dumps(llava_config))
        llava_weights = {k: v for k, v in llava_weights.items() if not k.startswith("model.mm_projector.")}
        if case == "stage1_projector_dir":  # a plain LLaMA dir: the mm settings come from the stage-1 config
            llava_config = {k: v for k, v in llava_config.items() if not k.startswith(("mm_", "image_"))}
            llava_config.update(model_type="llama", architectures=["LlamaForCausalLM"])
    src = tmp_path / "llava"
    write_llava_checkpoint(src, tokenizer, llava_config, llava_weights, fmt)

    model, processor = convert_llava(src, vision_tower=str(clip_path), projector=projector_file)

    assert model.config.image_token_id == tokenizer.convert_tokens_to_ids(IMAGE_TOKEN) == LLAVA_SOURCE_VOCAB
    assert model.config.image_aspect_mode == "pad" and processor.image_processor.aspect_mode == "pad"
    assert model.config.text_config.vocab_size == len(tokenizer)
    converted = model.state_dict()
    assert set(converted) == set(expected)
    for key, value in expected.items():
        if key in ("language_model.model.embed_tokens.weight", "language_model.lm_head.weight"):
            assert torch.equal(converted[key][:LLAVA_SOURCE_VOCAB], value), key
            mean = value.mean(dim=0, keepdim=True).expand(2, -1)
            torch.testing.assert_close(converted[key][LLAVA_SOURCE_VOCAB:], mean)  # new <image>, <video> rows
        else:
            assert torch.equal(converted[key], value), key

    if case == "projector_inside":  # the grown vocabulary survives save → Auto load
        save_converted(model, processor, tmp_path / "out")
        reloaded = AutoModelForImageTextToText.from_pretrained(tmp_path / "out")
        assert reloaded.config.text_config.vocab_size == len(tokenizer)
        for key, value in reloaded.state_dict().items():
            assert torch.equal(value, converted[key]), key


def test_separate_projector_overrides_the_checkpoint(llava_source):
    _, weights, _ = llava_source
    llava_weights = to_llava_names(weights)
    new_projector = {k: torch.zeros_like(v) for k, v in llava_weights.items() if k.startswith("model.mm_projector.")}
    mapped = map_llava_state_dict(llava_weights, projector_state_dict=new_projector)
    assert torch.equal(mapped["projector.0.weight"], torch.zeros_like(weights["projector.0.weight"]))
    assert mapped["language_model.model.norm.weight"] is weights["language_model.model.norm.weight"]


def test_linear_projector_keys():
    linear = {"model.mm_projector.weight": torch.ones(2, 2), "model.mm_projector.bias": torch.ones(2)}
    mapped = map_llava_state_dict(linear)
    assert set(mapped) == {"projector.0.weight", "projector.0.bias"}


def test_unknown_llava_key_raises(llava_source, tokenizer, clip_dir, tmp_path):
    _, weights, llava_config = llava_source
    llava_weights = {**to_llava_names(weights), "model.mm_resampler.query": torch.zeros(1)}
    with pytest.raises(ValueError, match=r"model\.mm_resampler\.query"):
        map_llava_state_dict(llava_weights)
    with pytest.raises(ValueError, match=r"model\.layers\.0"):
        map_llava_state_dict({}, projector_state_dict={"model.layers.0.mlp.up_proj.weight": torch.zeros(1)})
    write_llava_checkpoint(tmp_path, tokenizer, llava_config, llava_weights, "safetensors")
    with pytest.raises(ValueError, match=r"model\.mm_resampler\.query"):
        convert_llava(tmp_path, vision_tower=str(clip_dir[0]))


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("mm_projector_type", "qformer", "mm_projector_type"),
        ("mm_vision_select_feature", "cls", "mm_vision_select_feature"),
        ("mm_use_im_start_end", True, "mm_use_im_start_end"),
        ("mm_hidden_size", 64, "mm_hidden_size"),
        ("model_type", "llava_mistral", "model_type"),
    ],
)
def test_llava_config_refusals(llava_source, tokenizer, field, value, message):
    _, _, llava_config = llava_source
    with pytest.raises(ValueError, match=message):
        llava_config_to_ours({**llava_config, field: value}, tiny_vision_config(), tokenizer)


def test_llava_config_modes(llava_source, tokenizer):
    _, _, llava_config = llava_source
    cfg = {**llava_config, "mm_vision_select_feature": "cls_patch", "mm_projector_type": "linear"}
    cfg.pop("image_aspect_ratio")
    ours = llava_config_to_ours(cfg, tiny_vision_config(), tokenizer)
    assert (ours.vision_feature_select, ours.projector_type, ours.image_aspect_mode) == ("full", "linear", "crop")
    assert not hasattr(ours.text_config, "mm_vision_tower")


def load_cli():
    spec = importlib.util.spec_from_file_location("convert_checkpoint", REPO_ROOT / "tools" / "convert_checkpoint.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_cli_llava_in_process(llava_source, clip_dir, tokenizer, tmp_path, capsys):
    _, weights, llava_config = llava_source
    llava_weights = to_llava_names(weights)
    projector = {k: llava_weights.pop(k) for k in list(llava_weights) if k.startswith("model.mm_projector.")}
    torch.save(projector, tmp_path / "mm_projector.bin")
    write_llava_checkpoint(tmp_path / "src", tokenizer, llava_config, llava_weights, "safetensors")
    cli = load_cli()
    argv = ["--from", "llava", str(tmp_path / "src"), str(tmp_path / "dst"), "--vision-tower", str(clip_dir[0])]
    assert cli.main([*argv, "--projector", str(tmp_path / "mm_projector.bin")]) == 0
    assert "projector=mlp2x_gelu" in capsys.readouterr().out
    model = AutoModelForImageTextToText.from_pretrained(tmp_path / "dst")
    assert torch.equal(model.projector[2].weight, weights["projector.2.weight"])
    assert AutoProcessor.from_pretrained(tmp_path / "dst").image_processor.aspect_mode == "pad"
    # Without the projector file the checkpoint has no projector: a clear error, exit code 2.
    assert cli.main(argv) == 2
    assert "--projector" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        cli.main(["--from", "llava-hf", "a", "b", "--projector", "x.bin"])


@pytest.mark.parametrize("aspect", ["anyres", "anyres_max_4"])
def test_convert_llava_next_original_layout(aspect, llava_source, clip_dir, tokenizer, tmp_path):
    """An original LLaVA-NeXT checkpoint (AnyRes, spatial_unpad, model.image_newline) converts exactly."""
    _, _, llava_config = llava_source
    pinpoints = [[56, 112], [112, 56], [112, 112]]
    anyres_config = {
        **llava_config,
        "image_aspect_ratio": aspect,
        "mm_patch_merge_type": "spatial_unpad",
        "image_grid_pinpoints": pinpoints,
    }
    ours = llava_config_to_ours(anyres_config, tiny_vision_config(), tokenizer)
    torch.manual_seed(3)
    weights = {k: v.clone() for k, v in LlavaVidForConditionalGeneration(ours).state_dict().items()}
    assert "image_newline" in weights
    write_llava_checkpoint(tmp_path / "next", tokenizer, anyres_config, to_llava_names(weights), "safetensors")

    model, processor = convert_llava(tmp_path / "next", vision_tower=str(clip_dir[0]))
    assert (model.config.image_aspect_mode, model.config.image_merge) == ("anyres", "spatial_unpad")
    assert model.config.anyres_max_tiles == (4 if aspect == "anyres_max_4" else None)
    assert model.config.image_grid_pinpoints == pinpoints
    assert processor.image_processor.aspect_mode == "anyres" and processor.geometry.newline
    for key, value in model.state_dict().items():
        torch.testing.assert_close(value[: weights[key].shape[0]], weights[key], msg=key)


def test_llava_anyres_refusals(llava_source, tokenizer):
    _, _, llava_config = llava_source
    anyres = {**llava_config, "image_aspect_ratio": "anyres", "image_grid_pinpoints": [[56, 112]]}
    # LLaVA's "spatial" merge has no row newline; ours does, so converting it would change the model.
    with pytest.raises(ValueError, match="mm_patch_merge_type='spatial' is not supported"):
        llava_config_to_ours({**anyres, "mm_patch_merge_type": "spatial"}, tiny_vision_config(), tokenizer)
    without_pinpoints = {k: v for k, v in anyres.items() if k != "image_grid_pinpoints"}
    with pytest.raises(ValueError, match="needs image_grid_pinpoints"):
        llava_config_to_ours({**without_pinpoints, "mm_patch_merge_type": "spatial_unpad"}, tiny_vision_config(), tokenizer)
    with pytest.raises(ValueError, match="image_aspect_ratio"):
        llava_config_to_ours({**anyres, "image_aspect_ratio": "anyres_big"}, tiny_vision_config(), tokenizer)
