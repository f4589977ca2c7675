"""A tiny stage 1 end to end on the CPU: the loss goes down, the final folder loads, skips are counted."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import yaml
from PIL import Image

from llava_vid.train.stages import load_stage_config

REPO_ROOT = Path(__file__).resolve().parents[1]
STAGE1 = REPO_ROOT / "configs" / "train" / "tiny_stage1.yaml"
TINY_ANYRES = REPO_ROOT / "configs" / "model" / "tiny_anyres.yaml"
COLOURS = {"red": (255, 0, 0), "green": (0, 255, 0), "blue": (0, 0, 255), "yellow": (255, 255, 0)}


def _write_dataset(root: Path, records: int = 16, missing: int = 0) -> Path:
    """``records`` solid-colour 56 px images captioned with their colour (LLaVA JSON); the first
    ``missing`` records point at image files that do not exist."""
    images = root / "images"
    images.mkdir(parents=True)
    names = list(COLOURS)
    entries = []
    for index in range(records):
        colour = names[index % len(names)]
        file = f"{index:02d}.png"
        if index >= missing:
            Image.new("RGB", (56, 56), COLOURS[colour]).save(images / file)
        entries.append(
            {
                "id": str(index),
                "image": file,
                "conversations": [
                    {"from": "human", "value": "<image>\nWhat colour is this?"},
                    {"from": "gpt", "value": f"It is {colour}."},
                ],
            }
        )
    path = root / "captions.json"
    path.write_text(json.dumps(entries))
    return path


def _stage1(tmp_path: Path, data: Path, *extra: str):
    return load_stage_config(
        STAGE1,
        [
            f"model={TINY_ANYRES}",
            f"output_dir={tmp_path / 'run'}",
            f"data.0.path={data}",
            f"data.0.image_root={data.parent / 'images'}",
            "deepspeed=null",
            "warmup_ratio=0.0",
            "lr_scheduler=constant",
            *extra,
        ],
    )


def _losses(output_dir: Path) -> list[float]:
    history = json.loads((output_dir / "trainer_state.json").read_text())["log_history"]
    return [entry["loss"] for entry in history if "loss" in entry]


def test_stage1_loss_goes_down_and_final_loads(tmp_path: Path, capsys) -> None:
    from llava_vid.modeling import LlavaVidForConditionalGeneration
    from llava_vid.train.checkpoints import load_trained_folder
    from llava_vid.train.trainer import train

    data = _write_dataset(tmp_path / "data")
    config = _stage1(tmp_path, data, "max_steps=24", "learning_rate=3e-2", "multimodal_learning_rate=3e-2")
    final = train(config)

    losses = _losses(Path(config.output_dir))
    assert len(losses) == 24
    # Stage 1 trains only the projector (and newline/compressor) in front of a frozen *random* 2-layer LM,
    # so the loss starts near ln(vocab) ≈ 6.9 and can only fall a little (≈ 0.25 nats here, plateauing);
    # a clear, seeded drop of 0.1 nats shows the gradients reach the projector and the optimizer steps.
    first, last = sum(losses[:4]) / 4, sum(losses[-4:]) / 4
    assert last < first - 0.1, f"loss did not go down: {losses}"

    assert final == Path(config.output_dir) / "final"
    from PIL import Image

    with Image.open(Path(config.output_dir) / "loss_curve.png") as curve:  # the picture of the run
        assert curve.format == "PNG" and curve.width >= 400
    # Stage 1 keeps only the trained multimodal layers; the folder loads as a whole model all the same.
    model, processor = load_trained_folder(final)
    assert isinstance(model, LlavaVidForConditionalGeneration)
    assert processor.tokenizer.model_max_length == 8192  # the preset's, not the stage's max_length
    assert [p.name for p in final.glob("*.safetensors")] == ["multimodal.safetensors"]
    assert not list(final.parent.glob(".final.*"))
    saved = yaml.safe_load((final / "train_config.yaml").read_text())
    assert saved == config.to_dict()
    assert model.config.image_token_id == processor.image_token_id
    out = capsys.readouterr().out
    assert "96 samples seen, 0 skipped (none)" in out


def test_missing_image_is_counted_and_run_continues(tmp_path: Path, capsys) -> None:
    from llava_vid.train.trainer import train

    data = _write_dataset(tmp_path / "data", records=16, missing=1)
    config = _stage1(tmp_path, data, "max_steps=4", "max_skip_fraction=0.2")
    final = train(config)
    assert (final / "train_config.yaml").exists()
    out = capsys.readouterr().out
    # 4 steps × 4 samples = one pass over the 16 records: the missing image is met exactly once.
    assert "16 samples seen, 1 skipped (unreadable_media: 1)" in out


def test_too_many_skips_stop_the_run(tmp_path: Path) -> None:
    from llava_vid.train.trainer import train

    data = _write_dataset(tmp_path / "data", records=16, missing=8)
    config = _stage1(tmp_path, data, "max_steps=8", "max_skip_fraction=0.1")
    with pytest.raises(RuntimeError, match="unreadable_media: "):
        train(config)


def test_all_skipped_batches_give_zero_loss_and_no_update(tmp_path: Path) -> None:
    """Every batch empty: each step's loss is exactly 0 and the trainable weights do not move."""
    import torch
    from safetensors.torch import load_file

    from llava_vid.train.trainer import train

    data = _write_dataset(tmp_path / "data", records=8, missing=8)
    config = _stage1(tmp_path, data, "max_steps=2", "max_skip_fraction=1.0")
    final = train(config)
    assert _losses(Path(config.output_dir)) == [0.0, 0.0]
    from llava_vid.build import build_model_and_processor, load_model_spec

    fresh, _ = build_model_and_processor(load_model_spec(TINY_ANYRES))  # the same seeded initial weights
    saved = {}
    for file in final.glob("*.safetensors"):
        saved.update(load_file(file))
    for name, tensor in fresh.projector.state_dict().items():
        torch.testing.assert_close(saved[f"projector.{name}"], tensor)


def test_the_vision_feature_cache_trains_exactly_as_without_it(tmp_path: Path, capsys) -> None:
    """Two epochs with the frozen tower's features cached: the weights of a run without the cache, and the
    tower ran only for the views it had not seen."""
    import torch
    from safetensors.torch import load_file

    from llava_vid.build import build_model_and_processor, load_model_spec
    from llava_vid.train.trainer import train

    data = _write_dataset(tmp_path / "data", records=16)
    weights = {}
    for name, extra in [("plain", []), ("cached", ["vision_feature_cache_gib=0.01"])]:
        config = _stage1(tmp_path / name, data, "max_steps=8", "learning_rate=3e-2", "multimodal_learning_rate=3e-2", *extra)
        final = train(config)
        weights[name] = {key: value for file in final.glob("*.safetensors") for key, value in load_file(file).items()}
    out = capsys.readouterr().out
    assert out.count("vision features") == 1  # the cached run's summary line only
    assert weights["plain"].keys() == weights["cached"].keys()
    # A view's features are the tower's own, computed in another batch: CPU kernels may round them
    # differently by batch size (~1e-7 with this tower), so the weights agree to float rounding.
    for key, value in weights["plain"].items():
        torch.testing.assert_close(weights["cached"][key], value, rtol=1e-5, atol=1e-6)
    fresh, _ = build_model_and_processor(load_model_spec(TINY_ANYRES))  # the seeded initial weights
    assert not torch.equal(weights["cached"]["projector.0.weight"], fresh.projector.state_dict()["0.weight"])
    computed, reused = (int(n) for n in re.search(r"vision features (\d+) computed, (\d+) reused", out).groups())
    # 32 images seen in 2 epochs, each a global view and one tile (a 56 px image: the same pixels), so 64
    # views, of which 4 distinct: one per colour.
    assert (computed, reused) == (4, 60), out


def test_the_vision_feature_cache_is_refused_with_a_trained_tower_or_zero3(tmp_path: Path) -> None:
    from llava_vid.train.trainer import train

    data = _write_dataset(tmp_path / "data", records=4)
    with pytest.raises(ValueError, match="trainable lists vision_tower"):
        _stage1(tmp_path, data, "vision_feature_cache_gib=1", "trainable=[projector,vision_tower]")
    with pytest.raises(ValueError, match="vision_feature_cache_gib must be 0 \\(off\\) or more, got -1"):
        _stage1(tmp_path, data, "vision_feature_cache_gib=-1")
    zero3 = _stage1(tmp_path, data, "vision_feature_cache_gib=1", f"deepspeed={REPO_ROOT / 'configs/deepspeed/zero3.json'}")
    with pytest.raises(ValueError, match="with ZeRO-3"):
        train(zero3)


def test_cli_train(tmp_path: Path, capsys) -> None:
    from llava_vid.cli import main

    data = _write_dataset(tmp_path / "data", records=8)
    overrides = [
        f"model={TINY_ANYRES}",
        f"output_dir={tmp_path / 'run'}",
        f"data.0.path={data}",
        f"data.0.image_root={data.parent / 'images'}",
        "deepspeed=null",
        "max_steps=2",
    ]
    assert main(["train", str(STAGE1), *overrides]) == 0
    assert f"final model: {tmp_path / 'run' / 'final'}" in capsys.readouterr().out
    assert main(["train", str(STAGE1), "max_step=2"]) == 2  # an unknown key is an error naming it
    assert "max_step" in capsys.readouterr().err


def test_trainer_batches_follow_the_modality_length_sampler(tmp_path: Path) -> None:
    """The Trainer's data loader uses our sampler: with image and text-only data mixed, every batch holds
    one modality, and turning grouping off gives mixed batches."""
    from llava_vid.data import ConversationDataset, DatasetSpec, ModalityLengthGroupedSampler, TrainingCollator
    from llava_vid.train.trainer import StageTrainer, build_training_arguments, load_model_and_processor

    images = _write_dataset(tmp_path / "data", records=16)
    texts = tmp_path / "data" / "texts.json"
    texts.write_text(
        json.dumps(
            [
                {"id": f"t{i}", "conversations": [{"from": "human", "value": "Say a colour." + " please" * i},
                                                  {"from": "gpt", "value": "Red."}]}
                for i in range(16)
            ]
        )
    )  # fmt: skip

    def batches(grouped: bool) -> list[bool]:
        config = _stage1(tmp_path, images, f"group_by_modality_length={str(grouped).lower()}", "global_batch_size=4")
        model, processor = load_model_and_processor(config)
        dataset = ConversationDataset(
            [DatasetSpec(images, image_root=images.parent / "images"), DatasetSpec(texts)], processor, template="plain"
        )
        trainer = StageTrainer(
            model=model,
            args=build_training_arguments(config),
            train_dataset=dataset,
            data_collator=TrainingCollator(processor.tokenizer.pad_token_id),
            stage_config=config,
        )
        sampler = trainer._get_train_sampler()
        assert isinstance(sampler, ModalityLengthGroupedSampler) == grouped
        kinds = []
        for batch in trainer.get_train_dataloader():
            with_image = (batch["input_ids"] == processor.image_token_id).any(dim=1)  # (B,)
            kinds.append(bool(with_image.all()) or not bool(with_image.any()))  # one modality?
        return kinds

    assert all(batches(grouped=True))
    assert not all(batches(grouped=False))  # 16 image + 16 text samples in random pairs: some mixed
