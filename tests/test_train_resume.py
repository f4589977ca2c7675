"""Checkpoints on the CPU (no DeepSpeed): complete-marking, resume after a crash, a crash mid-save, and
the stage-1 multimodal-only folder that stage 2 starts from."""

from __future__ import annotations

import json
from pathlib import Path
from unittest import mock

import pytest
import torch
from safetensors.torch import load_file
from transformers import Trainer, TrainerCallback

from llava_vid.train.checkpoints import (
    BASE_FILE,
    COMPLETE_MARKER,
    MULTIMODAL_WEIGHTS,
    complete_checkpoints,
    is_complete,
    latest_complete_checkpoint,
    load_trained_folder,
)
from llava_vid.train.stages import load_stage_config
from tests.test_train_cpu import STAGE1, TINY_ANYRES, _losses, _write_dataset

REPO_ROOT = Path(__file__).resolve().parents[1]
STAGE2 = REPO_ROOT / "configs" / "train" / "tiny_stage2.yaml"


class Crash(RuntimeError):
    """Stands in for a kill: the run stops where it is, nothing is cleaned up."""


class CrashAtStep(TrainerCallback):
    def __init__(self, step: int) -> None:
        self.step = step

    def on_step_end(self, args, state, control, **kwargs):
        if state.global_step == self.step:
            raise Crash(f"crash after step {self.step}")
        return control


def _config(tmp_path: Path, data: Path, run: str, *extra: str):
    return load_stage_config(
        STAGE1,
        [
            f"model={TINY_ANYRES}",
            f"output_dir={tmp_path / run}",
            f"data.0.path={data}",
            f"data.0.image_root={data.parent / 'images'}",
            "deepspeed=null",
            "warmup_ratio=0.0",
            "lr_scheduler=cosine",
            "max_steps=6",
            "save_steps=2",
            "save_total_limit=2",
            "learning_rate=1e-2",
            "multimodal_learning_rate=1e-2",
            "final_weights=full",
            *extra,
        ],
    )


def _weights(final: Path) -> dict[str, torch.Tensor]:
    return load_file(str(final / "model.safetensors"))


def _summary_line(output: str) -> str:
    return next(line for line in output.splitlines() if line.startswith("trained "))


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory) -> tuple[Path, dict[str, torch.Tensor], list[float], str]:
    """Six steps without interruption: the reference a resumed run must reach."""
    import contextlib
    import io

    from llava_vid.train.trainer import train

    tmp_path = tmp_path_factory.mktemp("reference")
    data = _write_dataset(tmp_path / "data", records=16)
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        final = train(_config(tmp_path, data, "run"))
    return data, _weights(final), _losses(final.parent), _summary_line(out.getvalue())


def test_checkpoints_are_marked_and_rotated(uninterrupted) -> None:
    data, _, losses, _ = uninterrupted
    run = data.parent.parent / "run"
    assert len(losses) == 6
    # save_total_limit=2 keeps the two newest complete checkpoints; each is marked with the run's counters.
    assert [path.name for path in complete_checkpoints(run)] == ["checkpoint-4", "checkpoint-6"]
    progress = json.loads((run / "checkpoint-4" / COMPLETE_MARKER).read_text())
    assert progress["global_step"] == 4 and progress["seen"] == 16 and progress["skipped"] == {}
    assert progress["input_tokens"] > 0 and 0 < progress["target_tokens"] < progress["input_tokens"]


def test_resume_after_a_crash_reaches_the_same_weights(tmp_path: Path, uninterrupted, capsys) -> None:
    """Crash after step 5 (checkpoint-4 complete), run again: it resumes at step 4 and ends where the
    uninterrupted run ended. Tolerance: exact up to float32 summation order (atol 1e-6) — same seed, data
    order, optimizer and RNG states are restored."""
    from llava_vid.train.trainer import train

    data, reference, reference_losses, reference_summary = uninterrupted
    config = _config(tmp_path, data, "run")
    with pytest.raises(Crash):
        train(config, callbacks=[CrashAtStep(5)])
    assert latest_complete_checkpoint(Path(config.output_dir)).name == "checkpoint-4"
    capsys.readouterr()

    final = train(config)  # resume_from_checkpoint: auto
    out = capsys.readouterr().out
    assert "resuming from" in out and "checkpoint-4 (step 4)" in out
    resumed = _weights(final)
    assert resumed.keys() == reference.keys()
    for name, tensor in reference.items():
        torch.testing.assert_close(resumed[name], tensor, atol=1e-6, rtol=0, msg=name)
    assert _losses(final.parent) == pytest.approx(reference_losses, abs=1e-6)
    # The counters continue from the checkpoint: the summary equals the uninterrupted run's.
    assert _summary_line(out).replace(str(tmp_path), "") == reference_summary.replace(
        str(data.parent.parent), ""
    )


def test_a_crash_during_a_save_never_looks_complete(tmp_path: Path, uninterrupted) -> None:
    """Killed while writing checkpoint-4 (after the model, before the RNG state): that folder exists but
    is not complete, the run resumes from checkpoint-2 and still reaches the reference weights."""
    from llava_vid.train.trainer import train

    data, reference, _, _ = uninterrupted
    config = _config(tmp_path, data, "run")
    original = Trainer._save_rng_state

    def crash_on_step_4(self, output_dir):
        if self.state.global_step == 4:
            raise Crash("killed mid-save")
        return original(self, output_dir)

    with mock.patch.object(Trainer, "_save_rng_state", crash_on_step_4), pytest.raises(Crash):
        train(config)
    run = Path(config.output_dir)
    partial = run / "checkpoint-4"
    assert partial.is_dir() and any(partial.iterdir()) and not is_complete(partial)
    assert latest_complete_checkpoint(run) == run / "checkpoint-2"

    final = train(config)
    for name, tensor in reference.items():
        torch.testing.assert_close(_weights(final)[name], tensor, atol=1e-6, rtol=0, msg=name)
    assert is_complete(run / "checkpoint-4")


def test_resume_from_a_partial_checkpoint_is_refused(tmp_path: Path) -> None:
    from llava_vid.train.trainer import train

    data = _write_dataset(tmp_path / "data", records=8)
    partial = tmp_path / "run" / "checkpoint-3"
    partial.mkdir(parents=True)
    (partial / "model.safetensors").write_bytes(b"half")
    with pytest.raises(ValueError, match="not a complete checkpoint"):
        train(_config(tmp_path, data, "run", f"resume_from_checkpoint={partial}"))


# ------------------------------------------------------------------------------------------ stage 1 → 2
def test_stage1_saves_multimodal_weights_only_and_stage2_starts_from_them(tmp_path: Path) -> None:
    from llava_vid.build import build_model_and_processor, load_model_spec
    from llava_vid.train.trainer import train

    data = _write_dataset(tmp_path / "data", records=8)
    stage1 = _config(tmp_path, data, "stage1", "max_steps=2", "final_weights=multimodal", "save_steps=1000")
    final = train(stage1)
    files = sorted(path.name for path in final.iterdir())
    assert MULTIMODAL_WEIGHTS in files and BASE_FILE in files and "config.json" in files
    assert "model.safetensors" not in files
    saved = load_file(str(final / MULTIMODAL_WEIGHTS))
    assert saved and all(name.startswith(("projector.", "video_compressor.", "image_newline")) for name in saved)

    # The folder loads as a whole model: the base as built from the preset + the trained layers.
    model, processor = load_trained_folder(final)
    base, _ = build_model_and_processor(load_model_spec(TINY_ANYRES))
    state = model.state_dict()
    for name, tensor in base.language_model.state_dict().items():
        torch.testing.assert_close(state[f"language_model.{name}"], tensor)
    for name, tensor in saved.items():
        torch.testing.assert_close(state[name], tensor)
    assert not torch.equal(saved["projector.0.weight"], base.projector[0].weight.detach())  # it trained

    # Stage 2 starts from that folder: its LLM trains and its loss goes down.
    stage2 = load_stage_config(
        STAGE2,
        [
            f"model={final}",
            f"output_dir={tmp_path / 'stage2'}",
            f"data.0.path={data}",
            f"data.0.image_root={data.parent / 'images'}",
            "data.0.video_root=null",
            "deepspeed=null",
            "max_steps=12",
            "learning_rate=3e-3",
            "multimodal_learning_rate=3e-3",
            "warmup_ratio=0.0",
            "lr_scheduler=constant",
        ],
    )
    final2 = train(stage2)
    losses = _losses(final2.parent)
    assert sum(losses[-3:]) / 3 < sum(losses[:3]) / 3 - 0.5, losses
    assert (final2 / "model.safetensors").exists()


def test_a_changed_base_is_refused(tmp_path: Path) -> None:
    from llava_vid.train.trainer import train

    data = _write_dataset(tmp_path / "data", records=8)
    final = train(_config(tmp_path, data, "stage1", "max_steps=1", "final_weights=multimodal", "save_steps=1000"))
    base = json.loads((final / BASE_FILE).read_text())
    base["preset"]["seed"] = 1  # another random LLM and tower than the projector was trained with
    (final / BASE_FILE).write_text(json.dumps(base))
    with pytest.raises(ValueError, match=r"rebuilt (language_model|vision_tower) is not the one .*\(sum: "):
        load_trained_folder(final)


def test_multimodal_only_needs_frozen_backbones() -> None:
    with pytest.raises(ValueError, match=r"final_weights: multimodal .* \['language_model'\]"):
        load_stage_config(STAGE2, ["final_weights=multimodal"])
