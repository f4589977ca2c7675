"""End to end on the CPU: a LoRA stage 2 (adapters merged into a plain final model), gradient checkpointing
(same losses and weights as without it; a frozen embedding still lets the projector learn), and LoRA +
ZeRO-3 refused before any distributed setup."""

from __future__ import annotations

import contextlib
import io
from pathlib import Path
from unittest import mock

import pytest
import torch
from PIL import Image
from safetensors.torch import load_file
from transformers import TrainerCallback

from llava_vid.train.stages import load_stage_config
from tests.test_train_cpu import STAGE1, TINY_ANYRES, _losses, _write_dataset

REPO_ROOT = Path(__file__).resolve().parents[1]
STAGE2 = REPO_ROOT / "configs" / "train" / "tiny_stage2.yaml"
ZERO3 = REPO_ROOT / "configs" / "deepspeed" / "zero3.json"
# The LoRA run adapts every linear layer of the LM (PEFT "all-linear": not the LM head).
ADAPTED = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


def _config(stage: Path, tmp_path: Path, data: Path, run: str, *extra: str):
    return load_stage_config(
        stage,
        [
            f"model={TINY_ANYRES}",  # the tiny preset (fresh multimodal layers), not a stage-1 folder
            f"output_dir={tmp_path / run}",
            f"data.0.path={data}",
            f"data.0.image_root={data.parent / 'images'}",
            "deepspeed=null",
            "warmup_ratio=0.0",
            "lr_scheduler=constant",
            "final_weights=full",
            "resume_from_checkpoint=null",
            *extra,
        ],
    )


def _initial_model():
    """The preset's seeded initial weights (what every run here starts from) and its processor."""
    from llava_vid.build import build_model_and_processor, load_model_spec

    return build_model_and_processor(load_model_spec(TINY_ANYRES))


def _probe_batch(processor) -> dict:
    """Two prompts, each with one solid-colour image (AnyRes tiles, projector and LM all involved)."""
    prompt = "USER: <image>\nWhat colour is this? ASSISTANT: It is"
    images = [Image.new("RGB", (56, 56), (255, 0, 0)), Image.new("RGB", (84, 56), (0, 0, 255))]
    return dict(processor([prompt, prompt], images=images))


def _logits(model, batch: dict) -> torch.Tensor:
    was_training = model.training
    model.eval()
    with torch.no_grad():
        logits = model(**batch).logits.detach().clone()
    model.train(was_training)
    return logits


class RecordTrainable(TrainerCallback):
    """Names of the parameters that require grad when training starts, and the checkpointing flag."""

    def __init__(self) -> None:
        self.names: list[str] = []
        self.checkpointing: bool | None = None

    def on_train_begin(self, args, state, control, model=None, **kwargs):
        self.names = [name for name, p in model.named_parameters() if p.requires_grad]
        self.checkpointing = bool(getattr(model, "is_activation_checkpointing", False))
        return control


def _summary_line(output: str) -> str:
    return next(line for line in output.splitlines() if line.startswith("trained "))


# ------------------------------------------------------------------------------------------ LoRA
@pytest.fixture(scope="module")
def lora_run(tmp_path_factory):
    """One LoRA stage 2 from the tiny preset (r=4, alpha=8, every LM linear adapted, GC on); records the
    trainable names, the logits just before and just after the merge, and the printed summary."""
    from llava_vid.train import trainer as trainer_module

    tmp_path = tmp_path_factory.mktemp("lora")
    data = _write_dataset(tmp_path / "data", records=16)
    config = _config(
        STAGE2,
        tmp_path,
        data,
        "run",
        "lora.r=4",
        "lora.alpha=8",
        "lora.dropout=0.0",
        "trainable=[projector,language_model]",
        "max_steps=12",
        "learning_rate=1e-2",
        "multimodal_learning_rate=1e-2",
    )
    initial, processor = _initial_model()
    batch = _probe_batch(processor)
    recorded: dict = {}
    original_merge, original_save = trainer_module.merge_lora, trainer_module.save_final_folder

    def merge(model):
        recorded["before_merge"] = _logits(model, batch)
        recorded["lora_keys"] = list(model.state_dict())
        merged = original_merge(model)
        recorded["after_merge"] = _logits(model, batch)
        return merged

    def save(folder, *, model, **kwargs):
        recorded["before_save"] = _logits(model, batch)  # the in-memory model that is written
        return original_save(folder, model=model, **kwargs)

    record = RecordTrainable()
    out = io.StringIO()
    with (
        mock.patch.object(trainer_module, "merge_lora", merge),
        mock.patch.object(trainer_module, "save_final_folder", save),
        contextlib.redirect_stdout(out),
    ):
        final = trainer_module.train(config, callbacks=[record])
    return {
        "config": config,
        "final": final,
        "initial": {name: t.detach().clone() for name, t in initial.state_dict().items()},
        "batch": batch,
        "recorded": recorded,
        "trainable": record.names,
        "checkpointing": record.checkpointing,
        "summary": _summary_line(out.getvalue()),
    }


def test_lora_loss_goes_down(lora_run) -> None:
    losses = _losses(Path(lora_run["config"].output_dir))
    assert len(losses) == 12
    first, last = sum(losses[:4]) / 4, sum(losses[-4:]) / 4
    # The random LM starts near ln(vocab) ≈ 6.9. Its final RMSNorm and its LM head (std 0.02) are frozen,
    # so the logits stay small and the loss cannot fall far (≈ 6.3 after 16 steps at this rate); the
    # adapters + projector still take it down steadily: ≈ 0.38 nats over these 12 seeded steps.
    assert last < first - 0.25, f"loss did not go down clearly: {losses}"
    assert losses[-1] < min(losses[:4])


def test_lora_only_adapters_and_projector_train(lora_run) -> None:
    from llava_vid.build import build_model_and_processor, load_model_spec  # noqa: F401

    names = lora_run["trainable"]
    assert lora_run["checkpointing"] is True  # the LoRA run also goes through gradient checkpointing
    lm = [name for name in names if name.startswith("language_model.")]
    others = [name for name in names if not name.startswith("language_model.")]
    assert lm and all("lora_A" in name or "lora_B" in name for name in lm), lm
    assert others and all(name.startswith("projector.") for name in others), others
    # Every adapted linear layer of both LM layers has an A and a B; the LM head, embedding, norms do not.
    for layer in (0, 1):
        for module in ADAPTED:
            for half in ("lora_A", "lora_B"):
                assert any(f"layers.{layer}." in n and f".{module}.{half}." in n for n in lm), (layer, module, half)
    assert not any("lm_head" in n or "embed_tokens" in n or "norm" in n for n in lm)

    # The printed summary counts exactly the adapter elements: r × (in + out) per adapted Linear.
    initial = lora_run["initial"]
    r = 4
    expected_lm = sum(
        r * sum(initial[name].shape)
        for name in initial
        if name.startswith("language_model.") and name.endswith("_proj.weight") and name.split(".")[-2] in ADAPTED
    )
    expected_projector = sum(t.numel() for name, t in initial.items() if name.startswith("projector."))
    total_lm = sum(t.numel() for name, t in initial.items() if name.startswith("language_model."))
    assert 0 < expected_lm < total_lm // 10
    summary = lora_run["summary"]
    assert f"trainable parameters: projector {expected_projector:,}, language_model {expected_lm:,};" in summary, summary


def test_lora_final_is_a_plain_merged_model(lora_run) -> None:
    from llava_vid.modeling import LlavaVidForConditionalGeneration

    final, initial = lora_run["final"], lora_run["initial"]
    saved = load_file(str(final / "model.safetensors"))
    assert not [k for k in saved if "lora_" in k or "base_model" in k]
    # The LoRA-wrapped model had different keys; the saved ones are the plain model's again.
    assert any("lora_" in k for k in lora_run["recorded"]["lora_keys"])
    assert set(saved) == set(initial)

    model, info = LlavaVidForConditionalGeneration.from_pretrained(str(final), output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"], info
    assert not info.get("mismatched_keys") and not info.get("error_msgs"), info

    changed, unchanged = [], []
    for name, tensor in saved.items():
        if not name.startswith("language_model."):
            continue
        (changed if not torch.equal(tensor, initial[name]) else unchanged).append(name)
    # Every adapted linear weight moved (the merged B·A is non-zero) ...
    adapted = [n for n in saved if n.startswith("language_model.") and n.split(".")[-2] in ADAPTED]
    assert len(adapted) == 2 * len(ADAPTED)
    assert sorted(adapted) == sorted(n for n in changed if n.split(".")[-2] in ADAPTED)
    # ... and nothing else in the LM did: embedding, norms and the LM head are exactly the frozen initial ones.
    assert sorted(changed) == sorted(adapted), sorted(set(changed) - set(adapted))
    frozen = [n for n in unchanged if "embed_tokens" in n or "norm" in n or "lm_head" in n]
    assert any("embed_tokens" in n for n in frozen) and any("norm" in n for n in frozen)
    assert any("lm_head" in n for n in frozen)
    # The vision tower stayed frozen; the projector trained (full rank, not LoRA).
    for name, tensor in saved.items():
        if name.startswith("vision_tower."):
            assert torch.equal(tensor, initial[name]), name
    assert any(not torch.equal(saved[n], initial[n]) for n in saved if n.startswith("projector."))

    # The loaded final model computes what the trained model computed: the merge preserved the function
    # of the adapted model, and what was saved is what was in memory.
    recorded = lora_run["recorded"]
    torch.testing.assert_close(recorded["after_merge"], recorded["before_merge"], atol=1e-5, rtol=0)
    torch.testing.assert_close(recorded["before_save"], recorded["after_merge"], atol=0, rtol=0)
    torch.testing.assert_close(_logits(model, lora_run["batch"]), recorded["before_save"], atol=1e-5, rtol=0)
    # And it is not the initial model's function.
    initial_model, _ = _initial_model()
    assert not torch.allclose(_logits(initial_model, lora_run["batch"]), recorded["before_save"], atol=1e-3)


# ------------------------------------------------------------------------------------------ checkpointing
def _run(stage: Path, tmp_path: Path, data: Path, run: str, *extra: str):
    from llava_vid.train.trainer import train

    record = RecordTrainable()
    config = _config(stage, tmp_path, data, run, *extra)
    with contextlib.redirect_stdout(io.StringIO()):
        final = train(config, callbacks=[record])
    return _losses(Path(config.output_dir)), load_file(str(final / "model.safetensors")), record


def _assert_same_run(a, b) -> None:
    (losses_a, weights_a, _), (losses_b, weights_b, _) = a, b
    assert losses_a == pytest.approx(losses_b, abs=1e-5, rel=0)
    assert weights_a.keys() == weights_b.keys()
    for name, tensor in weights_a.items():
        torch.testing.assert_close(weights_b[name], tensor, atol=1e-5, rtol=0, msg=name)


def test_gradient_checkpointing_changes_nothing_stage2(tmp_path: Path) -> None:
    """Full LM fine-tuning, 3 steps: with and without checkpointing the same losses and final weights —
    the recomputed backward is the plain one."""
    data = _write_dataset(tmp_path / "data", records=12)
    common = ("max_steps=3", "global_batch_size=2", "learning_rate=1e-3", "multimodal_learning_rate=1e-3")
    with_gc = _run(STAGE2, tmp_path, data, "gc", "gradient_checkpointing=true", *common)
    without = _run(STAGE2, tmp_path, data, "plain", "gradient_checkpointing=false", *common)
    assert with_gc[2].checkpointing is True and without[2].checkpointing is False
    assert any(n.startswith("language_model.") and "embed_tokens" in n for n in with_gc[2].names)
    _assert_same_run(with_gc, without)
    assert len(with_gc[0]) == 3
    # Not trivially equal: the LM weights moved.
    initial = {name: t for name, t in _initial_model()[0].state_dict().items()}
    moved = [n for n in initial if n.startswith("language_model.") and not torch.equal(with_gc[1][n], initial[n])]
    assert any("layers.1.mlp.down_proj" in n for n in moved) and any("embed_tokens" in n for n in moved)


def test_gradient_checkpointing_with_frozen_embedding_trains_projector(tmp_path: Path) -> None:
    """Stage 1 (only the multimodal layers train, the LM and its embedding are frozen) with checkpointing:
    the projector still gets gradients, and the run equals the one without checkpointing."""
    data = _write_dataset(tmp_path / "data", records=12)
    common = ("max_steps=3", "learning_rate=1e-2", "multimodal_learning_rate=1e-2")
    with_gc = _run(STAGE1, tmp_path, data, "gc", "gradient_checkpointing=true", *common)
    assert with_gc[2].checkpointing is True
    assert not any(n.startswith("language_model.") for n in with_gc[2].names)
    initial = {name: t for name, t in _initial_model()[0].state_dict().items()}
    weights = with_gc[1]
    projector = [n for n in weights if n.startswith("projector.")]
    assert projector and all(not torch.equal(weights[n], initial[n]) for n in projector), "projector did not train"
    for name in weights:
        if name.startswith(("language_model.", "vision_tower.")):
            assert torch.equal(weights[name], initial[name]), name
    without = _run(STAGE1, tmp_path, data, "plain", "gradient_checkpointing=false", *common)
    _assert_same_run(with_gc, without)


# ------------------------------------------------------------------------------------------ ZeRO-3
def test_lora_with_zero3_is_refused_before_distributed_setup(tmp_path: Path) -> None:
    from llava_vid.train import trainer as trainer_module

    data = _write_dataset(tmp_path / "data", records=4)
    config = _config(STAGE2, tmp_path, data, "run", "lora.r=4", f"deepspeed={ZERO3}")
    assert config.deepspeed == str(ZERO3)
    with (
        mock.patch.object(trainer_module, "build_training_arguments", side_effect=AssertionError("too late")),
        mock.patch.object(trainer_module, "load_model_and_processor", side_effect=AssertionError("too late")),
        pytest.raises(ValueError, match="ZeRO-3"),
    ):
        trainer_module.train(config)
    assert not (torch.distributed.is_available() and torch.distributed.is_initialized())
    # Without LoRA the same DeepSpeed file is not refused by this check (it gets as far as the arguments).
    plain = _config(STAGE2, tmp_path, data, "run2", f"deepspeed={ZERO3}")
    with (
        mock.patch.object(trainer_module, "build_training_arguments", side_effect=AssertionError("reached")),
        pytest.raises(AssertionError, match="reached"),
    ):
        trainer_module.train(plain)
