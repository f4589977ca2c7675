"""Training through transformers' DeepSpeed integration on the CPU (gloo): stage 1 → stage 2 under ZeRO-2,
a ZeRO-3 save that loads with ``from_pretrained``, and (slow) two processes.

Each run is a subprocess, as under the ``deepspeed`` launcher: DeepSpeed initialises torch.distributed
and accelerate's process-wide state, which must not leak into other tests. DeepSpeed compiles a small
CPU op on first use (tens of seconds, cached in ``TORCH_EXTENSIONS_DIR``).
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from tests.test_train_cpu import STAGE1, TINY_ANYRES, _losses, _write_dataset

pytest.importorskip("deepspeed")

REPO_ROOT = Path(__file__).resolve().parents[1]
STAGE2 = REPO_ROOT / "configs" / "train" / "tiny_stage2.yaml"
ZERO2 = REPO_ROOT / "configs" / "deepspeed" / "zero2.json"
ZERO3 = REPO_ROOT / "configs" / "deepspeed" / "zero3.json"


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _env(world_size: int = 1) -> dict[str, str]:
    env = {
        **os.environ,
        "MASTER_ADDR": "127.0.0.1",
        "MASTER_PORT": str(_free_port()),
        "TORCH_EXTENSIONS_DIR": os.environ.get("TORCH_EXTENSIONS_DIR", str(Path.home() / ".cache" / "torch_extensions")),
    }
    if world_size == 1:  # a single process is its own launcher
        env.update({"RANK": "0", "LOCAL_RANK": "0", "WORLD_SIZE": "1"})
    return env


def _train(stage: Path, overrides: list[str], *, processes: int = 1, timeout: int = 400) -> str:
    """``llava-vid train`` in fresh process(es); returns stdout, failing the test with the output tail."""
    if processes == 1:
        command = [sys.executable, "-m", "llava_vid.cli", "train", str(stage), *overrides]
    else:
        command = [
            sys.executable, "-m", "torch.distributed.run", f"--nproc_per_node={processes}",
            f"--master_port={_free_port()}", "-m", "llava_vid.cli", "train", str(stage), *overrides,
        ]  # fmt: skip
    result = subprocess.run(
        command, env=_env(processes), cwd=REPO_ROOT, capture_output=True, text=True, timeout=timeout
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-5000:]
    return result.stdout


def _data_overrides(data: Path) -> list[str]:
    return [f"data.0.path={data}", f"data.0.image_root={data.parent / 'images'}", "data.0.video_root=null"]


def test_zero2_stage1_then_stage2(tmp_path: Path) -> None:
    """The real two-stage path: stage 1 (projector/compressor/newline, plain template, multimodal-only
    save), then stage 2 from that folder (LLM trains, vicuna_v1); stage 2's loss goes down."""
    data = _write_dataset(tmp_path / "data", records=16)
    stage1 = tmp_path / "stage1"
    out = _train(
        STAGE1,
        [f"model={TINY_ANYRES}", f"output_dir={stage1}", *_data_overrides(data), f"deepspeed={ZERO2}", "max_steps=3"],
    )
    assert "12 samples seen, 0 skipped (none)" in out
    assert len(_losses(stage1)) == 3
    assert (stage1 / "final" / "multimodal.safetensors").exists() and not (stage1 / "final" / "model.safetensors").exists()

    stage2 = tmp_path / "stage2"
    out = _train(
        STAGE2,
        [
            f"model={stage1 / 'final'}", f"output_dir={stage2}", *_data_overrides(data), f"deepspeed={ZERO2}",
            "max_steps=10", "learning_rate=3e-3", "multimodal_learning_rate=3e-3", "warmup_ratio=0.0",
            "lr_scheduler=constant",
        ],
    )  # fmt: skip
    losses = _losses(stage2)
    assert len(losses) == 10
    assert sum(losses[-3:]) / 3 < sum(losses[:3]) / 3 - 0.5, losses
    # Stage 2 really started from stage 1's projector: its initial projector is the stage-1 one.
    from llava_vid.modeling import LlavaVidForConditionalGeneration

    model = LlavaVidForConditionalGeneration.from_pretrained(str(stage2 / "final"))
    assert model.config.image_token_id is not None and "40 samples seen" in out


def test_zero3_saves_full_weights_that_load_with_from_pretrained(tmp_path: Path) -> None:
    """ZeRO-3 shards every parameter; the final save gathers the 16-bit weights (fp32 here, on a CPU)
    into one ordinary folder: no missing or unexpected keys, frozen parts unchanged, trained parts moved."""
    from llava_vid.build import build_model_and_processor, load_model_spec
    from llava_vid.modeling import LlavaVidForConditionalGeneration

    # Start from a saved folder (as `llava-vid init` writes, or a converted checkpoint): under ZeRO-3,
    # from_pretrained loads it straight into shards. (A preset's *random* parts would be initialised
    # inside deepspeed.zero.Init, which draws other random numbers than a plain build.)
    initial, processor = build_model_and_processor(load_model_spec(TINY_ANYRES))
    initial.save_pretrained(tmp_path / "init")
    processor.save_pretrained(tmp_path / "init")
    data = _write_dataset(tmp_path / "data", records=8)
    run = tmp_path / "run"
    out = _train(
        STAGE2,
        [
            f"model={tmp_path / 'init'}", f"output_dir={run}", *_data_overrides(data), f"deepspeed={ZERO3}",
            "max_steps=2", "learning_rate=1e-3", "save_steps=1",
        ],
    )  # fmt: skip
    assert "trainable parameters: projector 2,112" in out and "language_model 0" not in out
    model, info = LlavaVidForConditionalGeneration.from_pretrained(str(run / "final"), output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"] and not info["mismatched_keys"], info
    saved = load_file(str(run / "final" / "model.safetensors"))
    reference = initial.state_dict()
    assert saved.keys() == reference.keys()
    for name, tensor in reference.items():
        assert saved[name].shape == tensor.shape, name  # gathered, not shards
        if name.startswith("vision_tower."):
            torch.testing.assert_close(saved[name], tensor, msg=name)  # frozen
    moved = [n for n in reference if n.startswith("language_model.") and not torch.equal(saved[n], reference[n])]
    assert moved, "no language-model weight changed"
    # Intermediate checkpoints were marked complete after DeepSpeed wrote its shards.
    assert (run / "checkpoint-2" / "llava_vid_checkpoint.json").exists()


@pytest.mark.slow
def test_two_processes_zero2_count_skips_over_both_ranks(tmp_path: Path) -> None:
    """Two CPU processes (gloo): the data is split between the ranks, the skip counts and tokens are
    summed over both, and rank 0 writes one final folder. Slow and kept out of the default suite:
    two-process CPU runs sometimes abort at exit inside DeepSpeed/gloo."""
    data = _write_dataset(tmp_path / "data", records=16, missing=1)
    run = tmp_path / "run"
    out = _train(
        STAGE1,
        [
            f"model={TINY_ANYRES}", f"output_dir={run}", *_data_overrides(data), f"deepspeed={ZERO2}",
            "max_steps=4", "max_skip_fraction=0.2", "save_steps=2",
        ],
        processes=2,
        timeout=600,
    )  # fmt: skip
    # 4 steps × 4 samples (2 per rank) = the 16 records once; the missing image is met once, on one rank.
    assert out.count("trained 4 steps") == 1
    assert "16 samples seen, 1 skipped (unreadable_media: 1)" in out
    assert len(_losses(run)) == 4 and (run / "final" / "multimodal.safetensors").exists()
    assert (run / "checkpoint-4" / "llava_vid_checkpoint.json").exists()
