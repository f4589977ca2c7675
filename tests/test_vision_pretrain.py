"""Contrastive vision-tower pretraining: a short run saves a loadable tower that a preset can use, the
loss goes down, zero-shot results are written, bad settings are refused by name."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.distributed as dist
import yaml
from PIL import Image
from transformers import CLIPVisionModel

from llava_vid.data.synthetic import QA_TASKS, WorldOptions, generate_world
from transformers import CLIPModel

from llava_vid.train.vision_pretrain import (
    _contrastive_backward,
    _distinct_caption_batches,
    EVAL_FILE,
    SETTINGS_FILE,
    VisionPretrainConfig,
    WordVocabulary,
    contrastive_loss,
    image_text_logits,
    pretrain_vision_tower,
)

REPO = Path(__file__).resolve().parents[1]

# Only vision pairs: no QA media, so the world renders in well under a second.
PAIRS_ONLY = WorldOptions(
    seed=3,
    train_counts={task: 0 for task in QA_TASKS},
    heldout_counts={task: 0 for task in QA_TASKS},
    caption_images=0,
    caption_videos=0,
    caption_views=0,
    vision_pairs=120,
    vision_heldout_pairs=36,
    workers=1,
)
TINY = VisionPretrainConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4, patch_size=14, text_hidden_size=16, text_intermediate_size=32,
                            projection_dim=16, steps=4, batch_size=8, warmup_steps=1, eval_batch_size=16, processes=1)


@pytest.fixture(scope="module")
def pairs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return generate_world(tmp_path_factory.mktemp("pairs") / "w", PAIRS_ONLY, progress=False).vision_pairs_file


@pytest.fixture(scope="module")
def tower(pairs: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return pretrain_vision_tower(pairs, tmp_path_factory.mktemp("tower") / "clip", TINY, progress=False)


def test_saved_tower_loads_as_clip_vision_model(tower: Path) -> None:
    model = CLIPVisionModel.from_pretrained(tower)
    assert model.config.hidden_size == TINY.hidden_size and model.config.image_size == 56 and model.config.patch_size == 14
    output = model(pixel_values=torch.zeros(2, 3, 56, 56), output_hidden_states=True)
    assert output.last_hidden_state.shape == (2, 1 + 16, TINY.hidden_size)  # CLS + (56 / 14)² patches
    assert not list(tower.parent.glob(f".{tower.name}.*"))  # no staging folder left behind


def test_eval_report_has_every_group(tower: Path, pairs: Path) -> None:
    report = json.loads((tower / EVAL_FILE).read_text())
    assert set(report["attributes"]) == {"colour", "shape", "position", "symbol", "count", "word", "empty", "blank"}
    assert report["eval_file"] == str(pairs.parent / "heldout" / pairs.name) and not report["evaluated_on_training_pairs"]
    assert report["pairs"] == PAIRS_ONLY.vision_heldout_pairs and report["candidates"] >= 20
    assert all(0.0 <= result["accuracy"] <= 1.0 and result["count"] > 0 for result in report["attributes"].values())
    assert report["attributes"]["word"]["classes"] <= 10 and report["attributes"]["count"]["classes"] <= 4
    settings = json.loads((tower / SETTINGS_FILE).read_text())
    assert len(settings["loss_every_step"]) == TINY.steps and settings["tokens_per_view"] == 16


def test_tower_is_the_vision_tower_of_a_preset(tower: Path, tmp_path: Path) -> None:
    from llava_vid.build import build_model_and_processor, load_model_spec

    preset = yaml.safe_load((REPO / "configs/model/tiny_anyres.yaml").read_text())
    preset["vision"] = {"pretrained": str(tower)}
    path = tmp_path / "preset.yaml"
    path.write_text(yaml.safe_dump(preset))
    model, processor = build_model_and_processor(load_model_spec(path))
    saved = CLIPVisionModel.from_pretrained(tower)
    for name, tensor in saved.state_dict().items():
        assert torch.equal(model.vision_tower.state_dict()[name], tensor), name  # the trained weights, not fresh ones
    assert model.config.vision_config.hidden_size == TINY.hidden_size
    assert processor.image_processor.image_size == 56


def test_tower_wider_and_finer_than_the_preset_still_builds(pairs: Path, tmp_path: Path) -> None:
    """The projector reads the tower's width, the processor its patch size, from the saved config: a
    48-wide patch-7 tower in a preset whose own vision config says 32 wide, patch 14."""
    from llava_vid.build import build_model_and_processor, load_model_spec

    wide = pretrain_vision_tower(pairs, tmp_path / "wide", replace(TINY, hidden_size=48, intermediate_size=96, patch_size=7, steps=1), progress=False)
    preset = yaml.safe_load((REPO / "configs/model/tiny_anyres.yaml").read_text())
    preset["vision"] = {"pretrained": str(wide)}
    (tmp_path / "preset.yaml").write_text(yaml.safe_dump(preset))
    model, processor = build_model_and_processor(load_model_spec(tmp_path / "preset.yaml"))
    features = model.vision_tower(pixel_values=torch.zeros(1, 3, 56, 56)).last_hidden_state  # (1, 1 + 64, 48)
    assert features.shape == (1, 1 + 64, 48)
    assert processor.patch_size == 7 and processor.tokens_per_image == 64 + 1  # (56 / 7)² patches + the newline token
    projected = [module for module in model.modules() if isinstance(module, torch.nn.Linear) and module.in_features == 48]
    assert projected  # some projector layer takes the 48-wide features


def test_contrastive_loss_goes_down(pairs: Path, tmp_path: Path) -> None:
    config = replace(TINY, steps=30, learning_rate=3e-3, warmup_steps=3)
    tower = pretrain_vision_tower(pairs, tmp_path / "clip", config, progress=False)
    losses = json.loads((tower / SETTINGS_FILE).read_text())["loss_every_step"]
    first, last = np.mean(losses[:5]), np.mean(losses[-5:])
    assert last < 0.8 * first, (first, last)


def _tiny_clip() -> tuple[CLIPModel, torch.Tensor, torch.Tensor, torch.Tensor]:
    vocabulary = WordVocabulary(["a red circle", "a blue square", "the word cat"])
    torch.manual_seed(0)
    model = CLIPModel(TINY.clip_config(vocabulary)).eval()
    input_ids, mask = vocabulary.encode(["a red circle", "a blue square", "the word cat"])
    return model, torch.randn(3, 3, TINY.image_size, TINY.image_size), input_ids, mask


def test_cls_pooling_is_transformers_clip_loss() -> None:
    model, pixels, input_ids, mask = _tiny_clip()
    ours = contrastive_loss(image_text_logits(model, "cls", pixels, input_ids, mask))
    theirs = model(input_ids=input_ids, attention_mask=mask, pixel_values=pixels, return_loss=True).loss
    torch.testing.assert_close(ours, theirs)


def test_patch_mean_pooling_trains_the_patch_tokens_not_the_cls_token() -> None:
    """The embedding is the mean of the last layer's patch tokens: it changes when only those change,
    and the CLS output gets no gradient (the reverse of CLIP's own pooling)."""
    model, pixels, input_ids, mask = _tiny_clip()
    outputs = []

    def keep(module: torch.nn.Module, args: tuple, output: torch.Tensor | tuple) -> None:
        tensor = output[0] if isinstance(output, tuple) else output
        tensor.retain_grad()
        outputs.append(tensor)

    handle = model.vision_model.encoder.layers[-1].register_forward_hook(keep)
    try:
        contrastive_loss(image_text_logits(model, "patch_mean", pixels, input_ids, mask)).backward()
    finally:
        handle.remove()
    grad = outputs[0].grad  # (B, 1 + P, D): the last layer's output
    assert torch.count_nonzero(grad[:, 0]) == 0 and torch.count_nonzero(grad[:, 1:]) > 0
    # Every patch token gets the same gradient: the mean weighs them alike.
    torch.testing.assert_close(grad[:, 1:], grad[:, 1:2].expand_as(grad[:, 1:]))


def test_same_seed_gives_the_same_tower(pairs: Path, tower: Path, tmp_path: Path) -> None:
    again = pretrain_vision_tower(pairs, tmp_path / "again", TINY, progress=False)
    first, second = CLIPVisionModel.from_pretrained(tower).state_dict(), CLIPVisionModel.from_pretrained(again).state_dict()
    assert all(torch.equal(first[name], second[name]) for name in first)


def test_one_process_leaves_the_callers_random_state_alone(pairs: Path, tmp_path: Path) -> None:
    """The run seeds torch for itself; a caller's own draws after it go on as if it had not run (as they
    do with two processes, which seed only themselves)."""
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    pretrain_vision_tower(pairs, tmp_path / "clip", TINY, progress=False)
    torch.testing.assert_close(torch.rand(3), expected, rtol=0, atol=0)


def test_two_processes_train_the_tower_one_process_would(pairs: Path, tower: Path, tmp_path: Path) -> None:
    """Each batch split between two processes (gathered embeddings, combined gradients) takes the step one
    process takes on the whole batch: the same tower to rounding, after every step's update. The batch of
    7 splits 4 + 3, so the uneven share is covered too."""
    odd = replace(TINY, batch_size=7)
    one = pretrain_vision_tower(pairs, tmp_path / "one", replace(odd, processes=1), progress=False)
    two = pretrain_vision_tower(pairs, tmp_path / "two", replace(odd, processes=2), progress=False)
    first, second = CLIPVisionModel.from_pretrained(one).state_dict(), CLIPVisionModel.from_pretrained(two).state_dict()
    # A key bias has no gradient in exact arithmetic (the softmax over keys ignores it), so Adam steps it
    # by the rounding noise of its ~1e-9 gradient: it follows no formula worth comparing.
    compared = [name for name in first if not name.endswith("k_proj.bias")]
    assert len(compared) > 20
    for name in compared:
        torch.testing.assert_close(second[name], first[name], rtol=1e-4, atol=1e-5, msg=name)
    fixture = CLIPVisionModel.from_pretrained(tower).state_dict()
    changed = [name for name in first if not torch.equal(first[name], fixture[name])]
    assert changed  # batch 7 is not the fixture's 8: the comparison is not of two copies of one run
    losses = [json.loads((folder / SETTINGS_FILE).read_text())["loss_every_step"] for folder in (one, two)]
    np.testing.assert_allclose(losses[1], losses[0], rtol=1e-4)


def _share_gradients(rank: int, rendezvous: str, out: str) -> None:
    """One of two processes: the tiny CLIP's gradients from this process's share (2 + 1) of a batch of 3."""
    dist.init_process_group("gloo", init_method=rendezvous, rank=rank, world_size=2)
    try:
        model, pixels, input_ids, mask = _tiny_clip()
        share = slice(0, 2) if rank == 0 else slice(2, 3)
        _contrastive_backward(model, "patch_mean", pixels[share], input_ids[share], mask[share], [2, 1], rank)
        if rank == 0:
            torch.save({name: parameter.grad for name, parameter in model.named_parameters() if parameter.grad is not None}, out)
    finally:
        dist.destroy_process_group()


def test_two_processes_give_the_whole_batchs_gradients(tmp_path: Path) -> None:
    """The gradients themselves, not just the Adam steps (which a wrong scale would hardly change): every
    parameter's, the temperature's and the text tower's included, as one process computes them."""
    model, pixels, input_ids, mask = _tiny_clip()
    _contrastive_backward(model, "patch_mean", pixels, input_ids, mask, [3], 0)
    expected = {name: parameter.grad for name, parameter in model.named_parameters() if parameter.grad is not None}
    torch.multiprocessing.spawn(_share_gradients, args=(f"file://{tmp_path / 'group'}", str(tmp_path / "grads.pt")), nprocs=2)
    found = torch.load(tmp_path / "grads.pt")
    assert found.keys() == expected.keys() and "logit_scale" in found
    assert any(name.startswith("text_model.") for name in found)
    for name, grad in expected.items():
        torch.testing.assert_close(found[name], grad, rtol=1e-4, atol=1e-5, msg=name)


def test_batches_hold_distinct_captions_drawn_by_their_share_of_pairs() -> None:
    """Forty pairs of one caption and one each of forty others: batches of 8 distinct captions nearly always
    hold the common one (drawn by its share), where a uniform draw of captions would take it 8/41 of the time."""
    captions = ["common"] * 40 + [f"rare {k}" for k in range(40)]
    batches = _distinct_caption_batches(captions, batch_size=8, steps=400, rng=np.random.default_rng(0))
    for rows in batches:
        assert len(rows) == 8 and len({captions[row] for row in rows}) == 8
    with_common = np.mean([any(captions[row] == "common" for row in rows) for rows in batches])
    assert with_common > 0.95, with_common


def test_word_vocabulary_pools_at_eos() -> None:
    vocabulary = WordVocabulary(["a red circle", "the word cat"])
    input_ids, mask = vocabulary.encode(["a red circle", "the word dog"])
    assert input_ids.shape == (2, 4) and mask.tolist() == [[1, 1, 1, 1], [1, 1, 1, 1]]
    assert input_ids[:, -1].tolist() == [vocabulary.eos_id] * 2 and input_ids[1, 2].item() == vocabulary.unk_id
    assert vocabulary.eos_id != 2  # CLIP's text model treats eos id 2 as the legacy argmax pooling


@pytest.mark.parametrize(
    ("change", "name"),
    [
        ({"hidden_size": 0}, "hidden_size"),
        ({"hidden_size": 30}, "hidden_size"),  # not a multiple of the 4 heads
        ({"patch_size": 10}, "patch_size"),  # does not divide 56
        ({"steps": 2.5}, "steps"),
        ({"batch_size": 1}, "batch_size"),
        ({"learning_rate": -1.0}, "learning_rate"),
        ({"learning_rate": float("nan")}, "learning_rate"),
        ({"seed": True}, "seed"),
        ({"text_heads": 3}, "text_hidden_size"),
        ({"pooling": "mean"}, "pooling"),
        ({"processes": 0}, "processes"),
        ({"processes": 3, "batch_size": 2}, "processes"),  # a share of the batch for each process
    ],
)
def test_bad_config_names_the_field(change: dict, name: str) -> None:
    with pytest.raises(ValueError, match=name):
        replace(TINY, **change)


def test_more_processes_than_distinct_captions_is_refused_before_any_starts(tmp_path: Path) -> None:
    pairs = tmp_path / "vision_pairs.jsonl"
    Image.new("RGB", (56, 56)).save(tmp_path / "a.png")
    pairs.write_text("\n".join(json.dumps({"image": "a.png", "caption": "a red circle"}) for _ in range(4)) + "\n")
    with pytest.raises(ValueError, match="processes=2 is more than a batch holds: .* 1 distinct captions"):
        pretrain_vision_tower(pairs, tmp_path / "clip", replace(TINY, processes=2), progress=False)


def test_empty_pairs_file_is_refused(tmp_path: Path) -> None:
    (tmp_path / "vision_pairs.jsonl").write_text("")
    with pytest.raises(ValueError, match="no image/caption pairs"):
        pretrain_vision_tower(tmp_path / "vision_pairs.jsonl", tmp_path / "out", TINY, progress=False)
    assert not (tmp_path / "out").exists()
