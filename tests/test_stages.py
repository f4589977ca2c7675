"""Stage configs, freezing, optimizer parameter groups, DeepSpeed JSONs and LoRA (llava_vid.train.stages)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import yaml

from llava_vid.train.stages import (
    MULTIMODAL_PARTS,
    LoraSpec,
    StageConfig,
    apply_lora,
    apply_trainable,
    gradient_accumulation_steps,
    load_stage_config,
    merge_lora,
    parameter_groups,
    part_of,
)

REPO_ROOT = Path(__file__).resolve().parents[1]
TRAIN_CONFIGS = sorted((REPO_ROOT / "configs" / "train").glob("*.yaml"))
DEEPSPEED_CONFIGS = sorted((REPO_ROOT / "configs" / "deepspeed").glob("*.json"))
STAGE1 = REPO_ROOT / "configs" / "train" / "stage1_pretrain.yaml"
STAGE2 = REPO_ROOT / "configs" / "train" / "stage2_finetune.yaml"


def build_tiny(preset: str = "tiny_anyres.yaml"):
    """A fresh tiny model (these tests change requires_grad and wrap parts, so never the shared fixture)."""
    import llava_vid  # noqa: F401
    from llava_vid.build import build_model_and_processor, load_model_spec

    model, _ = build_model_and_processor(load_model_spec(REPO_ROOT / "configs" / "model" / preset))
    return model


@pytest.fixture(scope="module")
def anyres_model():
    return build_tiny("tiny_anyres.yaml")


# ------------------------------------------------------------------------------------------ configs
@pytest.mark.parametrize("path", TRAIN_CONFIGS, ids=lambda path: path.name)
def test_every_train_config_loads(path):
    config = load_stage_config(path)
    assert isinstance(config, StageConfig)
    assert config.multimodal_learning_rate is not None
    if config.deepspeed is not None:
        assert (REPO_ROOT / config.deepspeed).is_file()
    if config.model.endswith(".yaml") and not config.model.startswith("runs/"):  # runs/: written by the demo
        assert (REPO_ROOT / config.model).is_file()


def test_the_7b_recipes():
    stage1, stage2 = load_stage_config(STAGE1), load_stage_config(STAGE2)
    assert (stage1.stage, stage1.template, stage1.global_batch_size) == ("pretrain", "plain", 256)
    assert stage1.learning_rate == stage1.multimodal_learning_rate == 1e-3
    assert set(stage1.trainable) == {"projector", "compressor", "image_newline"}
    for stage in (stage1, stage2):
        schedule = (stage.warmup_ratio, stage.lr_scheduler, stage.max_length, stage.num_train_epochs)
        assert schedule == (0.03, "cosine", 2048, 1)
    assert stage1.gradient_accumulation_steps(world_size=8) == 2
    assert (stage2.stage, stage2.template, stage2.global_batch_size) == ("finetune", "vicuna_v1", 128)
    assert stage2.learning_rate == stage2.multimodal_learning_rate == 2e-5
    assert set(stage2.trainable) == {"projector", "compressor", "image_newline", "language_model"}
    assert "vision_tower" not in stage1.trainable + stage2.trainable


def test_overrides_are_typed_and_dotted():
    config = load_stage_config(
        STAGE2,
        [
            "learning_rate=1e-4",  # YAML 1.1 reads this as a string; the float field takes it
            "global_batch_size=64",
            "gradient_checkpointing=false",
            "lora.r=16",  # lora is null in the file: the section starts from its defaults
            "lora.target_modules=[q_proj,v_proj]",
            "data.0.ratio=0.5",
            "trainable=[projector, language_model]",
            "deepspeed=null",
        ],
    )
    assert config.learning_rate == 1e-4 and isinstance(config.learning_rate, float)
    assert config.multimodal_learning_rate == 2e-5  # set in the file, not derived
    assert config.global_batch_size == 64
    assert config.gradient_checkpointing is False
    assert config.lora == LoraSpec(r=16, target_modules=["q_proj", "v_proj"])
    assert config.data[0].ratio == 0.5
    assert config.trainable == ["projector", "language_model"]
    assert config.deepspeed is None


def test_multimodal_learning_rate_defaults_to_learning_rate(tmp_path):
    raw = yaml.safe_load(STAGE2.read_text())
    del raw["multimodal_learning_rate"]
    path = tmp_path / "stage.yaml"
    path.write_text(yaml.safe_dump(raw))
    assert load_stage_config(path, ["learning_rate=3e-5"]).multimodal_learning_rate == 3e-5


def test_resolved_config_round_trips(tmp_path):
    config = load_stage_config(STAGE2, ["lora.r=8"])
    path = tmp_path / "resolved.yaml"
    path.write_text(yaml.safe_dump(config.to_dict()))
    assert load_stage_config(path) == config


@pytest.mark.parametrize(
    "override, key",
    [("learnig_rate=1e-3", "learnig_rate"), ("lora.rank=4", "lora.rank"), ("data.0.colour=red", "data.0.colour")],
)
def test_unknown_override_key_names_key_and_file(override, key):
    with pytest.raises(ValueError, match=key) as error:
        load_stage_config(STAGE1, [override])
    assert str(STAGE1) in str(error.value)


def test_unknown_yaml_key_names_key_and_file(tmp_path):
    raw = yaml.safe_load(STAGE1.read_text())
    raw["warmup_steps"] = 10
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump(raw))
    with pytest.raises(ValueError, match="warmup_steps") as error:
        load_stage_config(path)
    assert str(path) in str(error.value)


@pytest.mark.parametrize(
    "override, message",
    [
        ("stage=pretraining", "'pretraining' is not one of"),
        ("template=chatml", "template"),
        ("trainable=[projector, llm]", "trainable"),
        ("trainable=[]", "trainable is empty"),
        ("global_batch_size=many", "global_batch_size: expected an integer"),
        ("learning_rate=fast", "learning_rate"),
        ("gradient_checkpointing=1", "true/false"),
        ("lr_scheduler=cosine_with_restarts", "lr_scheduler"),
        ("lora.r=8", "must include 'language_model'"),  # stage 1 does not train the LLM
        ("not an override", "key=value"),
    ],
)
def test_bad_values_are_errors(override, message):
    with pytest.raises(ValueError, match=message):
        load_stage_config(STAGE1, [override])


def test_accumulation_arithmetic():
    assert gradient_accumulation_steps(256, 16, 8) == 2
    assert gradient_accumulation_steps(128, 16, 8) == 1
    assert gradient_accumulation_steps(256, 4, 1) == 64
    with pytest.raises(ValueError, match=r"global_batch_size=128 is not a multiple of .*16 × world_size=3 = 48"):
        gradient_accumulation_steps(128, 16, 3)
    with pytest.raises(ValueError, match="world_size"):
        gradient_accumulation_steps(128, 16, 0)


# ------------------------------------------------------------------------------------------ freezing
def trainable_parts(model) -> set[str]:
    return {part_of(name) for name, parameter in model.named_parameters() if parameter.requires_grad}


def test_apply_trainable_stage1_then_stage2(anyres_model):
    model = anyres_model
    counts = apply_trainable(model, load_stage_config(STAGE1).trainable)
    assert trainable_parts(model) == {"projector", "compressor", "image_newline"}
    assert counts == {
        "projector": sum(p.numel() for p in model.projector.parameters()),
        "compressor": sum(p.numel() for p in model.video_compressor.parameters()),
        "image_newline": model.image_newline.numel(),
    }
    assert not any(p.requires_grad for p in model.vision_tower.parameters())
    assert not any(p.requires_grad for p in model.language_model.parameters())

    apply_trainable(model, load_stage_config(STAGE2).trainable)
    assert trainable_parts(model) == {"projector", "compressor", "image_newline", "language_model"}
    assert all(p.requires_grad for p in model.language_model.parameters())
    assert not any(p.requires_grad for p in model.vision_tower.parameters())

    # Going back to a smaller set freezes what the previous call unfroze.
    apply_trainable(model, ["projector"])
    assert trainable_parts(model) == {"projector"}

    apply_trainable(model, ["vision_tower"])  # only when asked
    assert trainable_parts(model) == {"vision_tower"}


def test_absent_part_and_empty_set_are_errors():
    model = build_tiny("tiny.yaml")  # no AnyRes: no image_newline
    with pytest.raises(ValueError, match=r"\['image_newline'\]"):
        apply_trainable(model, ["projector", "image_newline"])
    model.video_compressor = None  # an image-only model
    with pytest.raises(ValueError, match=r"\['compressor'\].*video_compressor"):
        apply_trainable(model, ["compressor"])
    with pytest.raises(ValueError, match="empty"):
        apply_trainable(model, [])
    with pytest.raises(ValueError, match="unknown part"):
        apply_trainable(model, ["llm"])


# ------------------------------------------------------------------------------------------ parameter groups
def test_parameter_groups_partition_the_trainable_parameters(anyres_model):
    model = anyres_model
    apply_trainable(model, ["projector", "compressor", "image_newline", "language_model"])
    groups = parameter_groups(model, learning_rate=2e-5, multimodal_learning_rate=1e-4, weight_decay=0.1)

    names = {id(parameter): name for name, parameter in model.named_parameters()}
    seen = [id(parameter) for group in groups for parameter in group["params"]]
    trainable = [id(parameter) for parameter in model.parameters() if parameter.requires_grad]
    assert len(seen) == len(set(seen))  # no parameter twice
    assert sorted(seen) == sorted(trainable)  # every trainable one, nothing frozen

    expected = {"multimodal_decay", "multimodal_no_decay", "backbone_decay", "backbone_no_decay"}
    assert {group["name"] for group in groups} == expected
    for group in groups:
        parts = {part_of(names[id(parameter)]) for parameter in group["params"]}
        if group["name"].startswith("multimodal"):
            assert parts <= MULTIMODAL_PARTS and group["lr"] == 1e-4
        else:
            assert parts == {"language_model"} and group["lr"] == 2e-5
        for parameter in group["params"]:
            name = names[id(parameter)]
            if group["weight_decay"] > 0:
                assert parameter.ndim >= 2 and "bias" not in name and "norm" not in name
            else:
                assert group["weight_decay"] == 0.0
    no_decay = {names[id(p)] for group in groups if group["weight_decay"] == 0 for p in group["params"]}
    assert "image_newline" in no_decay
    assert all(names[id(p)] in no_decay for p in model.parameters() if p.requires_grad and p.ndim < 2)

    # An optimizer takes the groups as they are.
    optimizer = torch.optim.AdamW(groups)
    assert [group["lr"] for group in optimizer.param_groups] == [group["lr"] for group in groups]


def test_parameter_groups_stage1_has_no_backbone_group(anyres_model):
    apply_trainable(anyres_model, ["projector", "compressor", "image_newline"])
    groups = parameter_groups(anyres_model, learning_rate=1e-3, multimodal_learning_rate=1e-3, weight_decay=0.0)
    assert all(group["name"].startswith("multimodal") for group in groups)
    anyres_model.requires_grad_(False)
    with pytest.raises(ValueError, match="no trainable parameters"):
        parameter_groups(anyres_model, learning_rate=1e-3, multimodal_learning_rate=1e-3, weight_decay=0.0)


# ------------------------------------------------------------------------------------------ DeepSpeed
AUTO_FIELDS = ["train_batch_size", "train_micro_batch_size_per_gpu", "gradient_accumulation_steps", "gradient_clipping"]


@pytest.mark.parametrize("path", DEEPSPEED_CONFIGS, ids=lambda path: path.name)
def test_deepspeed_configs_parse_with_auto_fields(path):
    config = json.loads(path.read_text())
    for key in AUTO_FIELDS:
        assert config[key] == "auto", key
    assert config["bf16"]["enabled"] == "auto" and config["fp16"]["enabled"] == "auto"
    # The Trainer builds the optimizer (our parameter groups) and the cosine schedule.
    assert "optimizer" not in config and "scheduler" not in config
    zero = config["zero_optimization"]
    assert zero["stage"] == (3 if path.stem == "zero3" else 2)
    if zero["stage"] == 3:
        assert zero["stage3_gather_16bit_weights_on_model_save"] is True

    # DeepSpeed's own schema accepts the section once transformers has filled the "auto" values.
    from deepspeed.runtime.zero.config import DeepSpeedZeroConfig

    filled = {key: (4096 if value == "auto" else value) for key, value in zero.items()}
    DeepSpeedZeroConfig(**filled)


def test_transformers_fills_the_auto_fields():
    from transformers import TrainingArguments
    from transformers.integrations.deepspeed import HfTrainerDeepSpeedConfig

    config = json.loads((REPO_ROOT / "configs" / "deepspeed" / "zero2.json").read_text())
    hf_config = HfTrainerDeepSpeedConfig(config)
    args = TrainingArguments(
        output_dir="unused", per_device_train_batch_size=4, gradient_accumulation_steps=2, max_grad_norm=1.0
    )
    hf_config.trainer_config_process(args)
    assert hf_config.config["train_micro_batch_size_per_gpu"] == 4
    assert hf_config.config["gradient_accumulation_steps"] == 2
    assert hf_config.config["train_batch_size"] == 4 * 2 * args.world_size
    assert hf_config.config["gradient_clipping"] == 1.0


# ------------------------------------------------------------------------------------------ LoRA
def test_lora_trains_adapters_and_merges_back():
    model = build_tiny("tiny_anyres.yaml")
    plain_keys = set(model.state_dict())
    # Give the adapters non-zero B so the merge actually changes the weights.
    apply_lora(model, LoraSpec(r=4, alpha=8, dropout=0.0, target_modules=["q_proj", "v_proj"]))
    with torch.no_grad():
        for name, parameter in model.language_model.named_parameters():
            if "lora_B" in name:
                parameter.normal_(std=0.1)

    counts = apply_trainable(model, ["projector", "language_model"])
    lm_trainable = [name for name, p in model.language_model.named_parameters() if p.requires_grad]
    assert lm_trainable and all("lora_" in name for name in lm_trainable)
    assert counts["language_model"] == sum(p.numel() for p in model.language_model.parameters() if p.requires_grad)
    groups = parameter_groups(model, learning_rate=2e-4, multimodal_learning_rate=2e-5, weight_decay=0.0)
    assert sum(len(group["params"]) for group in groups) == sum(p.requires_grad for p in model.parameters())

    model.eval()
    input_ids = torch.randint(0, 200, (2, 12))
    with torch.no_grad():
        lora_logits = model(input_ids=input_ids).logits
    merge_lora(model)
    with torch.no_grad():
        merged_logits = model(input_ids=input_ids).logits
    torch.testing.assert_close(merged_logits, lora_logits, atol=1e-5, rtol=0)
    assert set(model.state_dict()) == plain_keys
    with pytest.raises(ValueError, match="no LoRA adapters"):
        merge_lora(model)


def test_the_long_video_recipe_and_the_stage_handoff():
    stage1, stage2 = load_stage_config(STAGE1), load_stage_config(STAGE2)
    stage3 = load_stage_config(REPO_ROOT / "configs" / "train" / "stage3_long_video.yaml")
    # Stage 1 keeps only its multimodal layers; stage 2 starts from that folder; stage 3 from stage 2's.
    assert stage1.final_weights == "multimodal" and stage2.final_weights == "full"
    assert stage2.model == f"{stage1.output_dir}/final" and stage3.model == f"{stage2.output_dir}/final"
    assert stage3.stage == "long_video" and stage3.deepspeed.endswith("zero3.json")
    video = stage3.data[0].video.as_options()
    assert video == {"fps": 1.0, "max_frames": 1800, "content_grid": 1}
    # 1 800 frames × (1 + 1²) tokens leave room for the conversation in the 4 096 positions.
    from llava_vid.geometry import VideoPlan, num_video_tokens

    assert num_video_tokens(VideoPlan(num_frames=1800, content_grid=1)) == 3600 < stage3.max_length


def test_video_options_are_checked():
    with pytest.raises(ValueError, match="give num_frames or fps, not both"):
        load_stage_config(STAGE2, ["data.0.video.fps=2", "data.0.video.num_frames=8"])
    with pytest.raises(ValueError, match=r"unknown key 'data.0.video.fsp'"):
        load_stage_config(STAGE2, ["data.0.video.fsp=2"])
