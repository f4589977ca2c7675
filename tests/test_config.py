"""Config validation, projector construction, model presets (YAML) and the visual-token arithmetic."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml
from torch import nn

from llava_vid.build import ModelSpec, PartSpec, load_model_spec
from llava_vid.config import LlavaVidConfig, projector_depth
from llava_vid.geometry import VisionGeometry, num_image_tokens
from llava_vid.modeling import LlavaVidForConditionalGeneration
from llava_vid.modeling.projector import build_projector

CONFIG_DIR = Path(__file__).resolve().parents[1] / "configs" / "model"
TINY_YAML = CONFIG_DIR / "tiny.yaml"
ALL_MODEL_YAMLS = sorted(CONFIG_DIR.glob("*.yaml"))

# The tiny preset's towers: 2 layers each, width 32, a 64-token vocabulary.
TINY_VISION = {
    "model_type": "clip_vision_model", "hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2,
    "num_attention_heads": 4, "image_size": 56, "patch_size": 14,
}  # fmt: skip
TINY_TEXT = {
    "model_type": "llama", "hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2,
    "num_attention_heads": 4, "num_key_value_heads": 2, "vocab_size": 64,
}  # fmt: skip


def tiny_config(**overrides) -> LlavaVidConfig:
    vision = {**TINY_VISION, **overrides.pop("vision", {})}
    text = {**TINY_TEXT, **overrides.pop("text", {})}
    return LlavaVidConfig(vision_config=vision, text_config=text, **{"image_token_id": 63, **overrides})


def linear_layers(module: nn.Module) -> list[nn.Linear]:
    return [layer for layer in module.modules() if isinstance(layer, nn.Linear)]


# --------------------------------------------------------------------------- validation


def test_tiny_config_is_valid() -> None:
    config = tiny_config()
    assert config.vision_config.num_hidden_layers == 2 and config.text_config.vocab_size == 64
    assert (config.projector_type, config.vision_feature_layer, config.vision_feature_select) == ("mlp2x_gelu", -2, "patch")


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("projector_type", "mlp"),
        ("projector_type", "mlp0x_gelu"),
        ("projector_type", "conv"),
        ("projector_type", "mlp2x_relu"),
        ("projector_type", "MLP2X_GELU"),
        ("vision_feature_select", "cls"),
        ("image_aspect_mode", "anyres_bogus"),
        ("vision_feature_layer", 3),  # 2 layers: hidden states 0..2
        ("vision_feature_layer", -4),  # and -3..-1
        ("image_token_id", 64),  # vocabulary is 0..63
        ("image_token_id", -1),
        ("vision_chunk_size", 0),
    ],
)
def test_invalid_value_names_the_field(field: str, value: object) -> None:
    with pytest.raises(ValueError, match=rf"\b{field}\b"):
        tiny_config(**{field: value})


@pytest.mark.parametrize(("field", "value"), [("vision_feature_layer", -3), ("vision_feature_layer", 2),
                                              ("image_token_id", 0), ("image_token_id", 63),
                                              ("vision_feature_select", "full"), ("image_aspect_mode", "crop"),
                                              ("projector_type", "linear"), ("projector_type", "mlp12x_gelu")])  # fmt: skip
def test_boundary_values_are_accepted(field: str, value: object) -> None:
    assert getattr(tiny_config(**{field: value}), field) == value


# --------------------------------------------------------------------------- projector


@pytest.mark.parametrize(("projector_type", "depth"), [("identity", 0), ("linear", 1), ("mlp1x_gelu", 1),
                                                       ("mlp2x_gelu", 2), ("mlp3x_gelu", 3)])  # fmt: skip
def test_projector_depth(projector_type: str, depth: int) -> None:
    assert projector_depth(projector_type) == depth


def test_mlp3x_gelu_builds_three_linear_layers_with_gelu_between() -> None:
    projector = build_projector("mlp3x_gelu", 32, 48)
    layers = linear_layers(projector)
    assert [(layer.in_features, layer.out_features) for layer in layers] == [(32, 48), (48, 48), (48, 48)]
    assert [type(module) for module in projector] == [nn.Linear, nn.GELU, nn.Linear, nn.GELU, nn.Linear]
    # Parameter names match the original LLaVA mm_projector (0, 2, 4).
    assert [name for name, _ in projector.named_parameters()] == [
        "0.weight", "0.bias", "2.weight", "2.bias", "4.weight", "4.bias"
    ]  # fmt: skip


def test_model_builds_the_configured_projector() -> None:
    model = LlavaVidForConditionalGeneration(tiny_config(projector_type="mlp3x_gelu", text={"hidden_size": 48,
                                                                                          "num_attention_heads": 4}))  # fmt: skip
    layers = linear_layers(model.projector)
    assert len(layers) == 3
    assert layers[0].in_features == 32 and layers[-1].out_features == 48


def test_identity_projector_needs_equal_widths() -> None:
    assert isinstance(build_projector("identity", 32, 32), nn.Identity)
    with pytest.raises(ValueError, match=r"identity.*32.*48"):
        build_projector("identity", 32, 48)
    with pytest.raises(ValueError, match="identity"):
        LlavaVidForConditionalGeneration(tiny_config(projector_type="identity", text={"hidden_size": 48}))


# --------------------------------------------------------------------------- presets


def test_the_expected_presets_exist() -> None:
    names = {path.name for path in ALL_MODEL_YAMLS}
    assert {"tiny.yaml", "vicuna7b_clip336.yaml"} <= names


@pytest.mark.parametrize("path", ALL_MODEL_YAMLS, ids=lambda path: path.name)
def test_every_model_preset_loads_and_its_modes_are_valid(path: Path) -> None:
    spec = load_model_spec(path)
    assert isinstance(spec, ModelSpec)
    assert isinstance(spec.vision, PartSpec) and isinstance(spec.text, PartSpec)
    # Check the preset's modes against the config without building (or downloading) anything: a
    # preset with a pretrained tower is checked against the default CLIP ViT-L/14-336 geometry.
    vision = dict(spec.vision.config) if spec.vision.config is not None else None
    config = LlavaVidConfig(
        vision_config=vision,
        projector_type=spec.projector_type,
        vision_feature_layer=spec.vision_feature_layer,
        vision_feature_select=spec.vision_feature_select,
        image_aspect_mode=spec.image_aspect_mode,
    )
    assert config.projector_type == spec.projector_type


def test_presets_say_what_their_comments_say() -> None:
    tiny = load_model_spec(TINY_YAML)
    assert tiny.vision.config["image_size"] // tiny.vision.config["patch_size"] == 4
    real = load_model_spec(CONFIG_DIR / "vicuna7b_clip336.yaml")
    assert (real.vision.pretrained, real.text.pretrained) == ("openai/clip-vit-large-patch14-336", "lmsys/vicuna-7b-v1.5")
    assert (real.projector_type, real.vision_feature_layer, real.template) == ("mlp2x_gelu", -2, "vicuna_v1")


def _write_preset(tmp_path: Path, edit) -> Path:
    data = yaml.safe_load(TINY_YAML.read_text())
    edit(data)
    path = tmp_path / "edited.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


@pytest.mark.parametrize(
    ("edit", "key"),
    [
        (lambda data: data.update(projektor_type="linear"), "projektor_type"),
        (lambda data: data["vision"].update(pretrained_path="x"), "pretrained_path"),
        (lambda data: data["text"].update(cfg={}), "cfg"),
        (lambda data: data["tokenizer"].update(max_len=16), "max_len"),
    ],
    ids=["top-level", "vision", "text", "tokenizer"],
)
def test_unknown_yaml_key_names_the_key_and_the_file(tmp_path: Path, edit, key: str) -> None:
    path = _write_preset(tmp_path, edit)
    with pytest.raises(ValueError) as error:
        load_model_spec(path)
    message = str(error.value)
    assert key in message and str(path) in message


def test_part_with_both_pretrained_and_config_names_the_file(tmp_path: Path) -> None:
    path = _write_preset(tmp_path, lambda data: data["vision"].update(pretrained="openai/clip-vit-large-patch14-336"))
    with pytest.raises(ValueError, match=re.escape(str(path)) + r".*vision"):
        load_model_spec(path)


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("template", "llama3"),
        ("projector_type", "conv"),
        ("vision_feature_select", "cls"),
        ("image_aspect_mode", "anyres_bogus"),
    ],
)
def test_invalid_mode_in_yaml_names_the_field_and_the_file(tmp_path: Path, field: str, value: str) -> None:
    """``load_model_spec`` promises to validate and to name the file and the key: a typo in a mode
    must fail when the preset is read, not after tokenizers/checkpoints have been fetched."""
    path = _write_preset(tmp_path, lambda data: data.update({field: value}))
    with pytest.raises(ValueError) as error:
        load_model_spec(path)
    message = str(error.value)
    assert field in message and str(path) in message


def test_unreadable_preset_names_the_file(tmp_path: Path) -> None:
    missing = tmp_path / "missing.yaml"
    with pytest.raises(ValueError, match=re.escape(str(missing))):
        load_model_spec(missing)
    not_a_mapping = tmp_path / "list.yaml"
    not_a_mapping.write_text("- 1\n- 2\n")
    with pytest.raises(ValueError, match=re.escape(str(not_a_mapping))):
        load_model_spec(not_a_mapping)


# --------------------------------------------------------------------------- token arithmetic


def test_num_image_tokens_for_clip_336() -> None:
    assert num_image_tokens(VisionGeometry(image_size=336, patch_size=14, feature_select="patch")) == 576
    assert num_image_tokens(VisionGeometry(image_size=336, patch_size=14, feature_select="full")) == 577
    assert num_image_tokens(VisionGeometry(image_size=56, patch_size=14)) == 16


def test_model_geometry_comes_from_its_config() -> None:
    assert num_image_tokens(LlavaVidConfig().vision_geometry()) == 576  # default tower: CLIP ViT-L/14-336
    assert num_image_tokens(LlavaVidConfig(vision_feature_select="full").vision_geometry()) == 577
    assert num_image_tokens(tiny_config().vision_geometry()) == 16


@pytest.mark.parametrize(("image_size", "patch_size"), [(336, 15), (0, 14), (56, -14)])
def test_bad_geometry_is_refused(image_size: int, patch_size: int) -> None:
    with pytest.raises(ValueError, match="image_size"):
        VisionGeometry(image_size=image_size, patch_size=patch_size)
