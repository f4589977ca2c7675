"""`llava-vid demo --smoke`: the whole embedded demo (world → tower → stage 1, the stage-2 warm-up and
stage 2 through DeepSpeed ZeRO-2 → held-out evaluation → three answers) with a handful of samples, so CI keeps every step working;
then a second run that reuses everything, an interrupted one that redoes only what is unfinished, and
a folder made with other settings refused."""

from __future__ import annotations

import contextlib
import io
import json
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml

from llava_vid.cli import main
from llava_vid.data.synthetic import QA_TASKS
from llava_vid.demo import WARMUP_TASKS, WARMUP_TRAINABLE
from llava_vid.train.checkpoints import is_complete

STEPS = 6  # numbered steps whose results are kept; the seventh (the answers) always runs


@pytest.fixture(scope="module")
def smoke_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    out = tmp_path_factory.mktemp("demo") / "smoke"
    buffer = io.StringIO()  # capsys is function-scoped; a module fixture captures for itself
    with contextlib.redirect_stdout(buffer):
        assert main(["demo", "--smoke", "--out", str(out)]) == 0
    return out, buffer.getvalue()


def _run_again(out: Path, capsys: pytest.CaptureFixture, *extra: str) -> str:
    capsys.readouterr()
    assert main(["demo", "--smoke", "--out", str(out), *extra]) == 0
    return capsys.readouterr().out


def test_every_step_runs_and_the_table_and_answers_are_printed(smoke_run: tuple[Path, str]) -> None:
    out, printed = smoke_run
    for number in range(1, STEPS + 1):
        assert f"[{number}/{STEPS + 1}]" in printed and "already done" not in printed
    table = printed[printed.index("task ") :]
    for task in QA_TASKS:
        assert task in table, f"{task} missing from the accuracy table"
    assert "chance" in table and "overall" in table
    for kind in ("video question", "document question", "multi-image question"):
        assert kind in printed
    assert printed.count("(reference: ") == 3
    report = json.loads((out / "eval" / "eval.json").read_text())
    assert set(report["tasks"]) == set(QA_TASKS)
    assert (out / "eval" / "eval.png").stat().st_size > 0
    for stage in ("stage1", "stage2a", "stage2"):
        assert (out / stage / "final").is_dir() and (out / stage / "loss_curve.png").is_file()
    # Stage 1 kept only the multimodal layers on top of the pretrained tower; stage 2 is a full model.
    assert (out / "stage1" / "final" / "multimodal.safetensors").is_file()
    assert (out / "stage2" / "final" / "model.safetensors").is_file()
    assert (out / "stage2" / "final" / "train_config.yaml").is_file()
    # The warm-up trained on its tasks' records alone, and stage 2 started from it.
    warmup_tasks = {json.loads(line)["task"] for line in (out / "stage2a" / "train_subset.jsonl").read_text().splitlines()}
    assert warmup_tasks == set(WARMUP_TASKS)
    # The warm-up trains the language model but leaves the projector as stage 1 aligned it; stage 2 trains both.
    warmup_config = yaml.safe_load((out / "stage2a" / "final" / "train_config.yaml").read_text())
    assert warmup_config["trainable"] == list(WARMUP_TRAINABLE) and "projector" not in warmup_config["trainable"]
    stage2_config = yaml.safe_load((out / "stage2" / "final" / "train_config.yaml").read_text())
    assert Path(stage2_config["model"]) == out / "stage2a" / "final"
    assert "projector" in stage2_config["trainable"]


def test_a_second_run_reuses_every_step(smoke_run: tuple[Path, str], capsys: pytest.CaptureFixture) -> None:
    out, _ = smoke_run
    printed = _run_again(out, capsys)
    for number in range(1, STEPS + 1):
        assert f"[{number}/{STEPS + 1}]" in printed
    assert printed.count("already done, reused") == STEPS
    assert printed.count("(reference: ") == 3


def test_an_interrupted_stage_resumes_and_a_partial_checkpoint_is_not_used(
    smoke_run: tuple[Path, str], capsys: pytest.CaptureFixture
) -> None:
    out, _ = smoke_run
    stage2 = out / "stage2"
    complete = sorted(path for path in stage2.glob("checkpoint-*") if is_complete(path))
    assert complete, "stage 2 saved no complete checkpoint to resume from"
    # As if killed before the final save, with a later checkpoint cut off mid-save (weights there but
    # garbage, no completion mark: resuming from it would crash). The old evaluation is left in place:
    # it was made from the stage-2 model being replaced, so it must be redone, not reused.
    shutil.rmtree(stage2 / "final")
    old_eval = (out / "eval" / "eval.json").stat().st_mtime_ns
    partial = stage2 / "checkpoint-999"
    partial.mkdir()
    (partial / "model.safetensors").write_bytes(b"cut off")
    printed = _run_again(out, capsys)
    assert printed.count("already done, reused") == 4  # world, tower, stage 1, stage 2a
    assert "[5/7] stage 2: instruction tuning: done" in printed
    assert "[6/7] held-out evaluation: done" in printed
    assert (stage2 / "final").is_dir() and (out / "eval" / "eval.json").stat().st_mtime_ns != old_eval
    shutil.rmtree(partial)


def test_each_run_records_what_it_ran_on_and_a_change_is_said(
    smoke_run: tuple[Path, str], capsys: pytest.CaptureFixture
) -> None:
    from importlib import metadata

    out, _ = smoke_run
    path = out / "environments.json"
    runs = json.loads(path.read_text())
    assert runs and runs[0]["packages"]["torch"] == metadata.version("torch")
    assert runs[0]["packages"]["transformers"] == metadata.version("transformers")
    assert runs[0]["cpu"] and runs[0]["cpu_cores"] >= 1
    # As if the folder's last run had another transformers: the next run says so and adds its own entry.
    runs[-1]["packages"]["transformers"] = "0.0.test"
    path.write_text(json.dumps(runs))
    printed = _run_again(out, capsys)
    assert f"transformers 0.0.test → {metadata.version('transformers')}" in printed
    after = json.loads(path.read_text())
    assert len(after) == len(runs) + 1 and after[-1]["packages"]["transformers"] == metadata.version("transformers")
    assert "other software" not in _run_again(out, capsys)  # unchanged since: nothing to say


def test_a_broken_environments_file_is_named(tmp_path: Path) -> None:
    from llava_vid.demo import record_environment

    (tmp_path / "environments.json").write_text("[{")
    with pytest.raises(ValueError, match="environments.json is not valid JSON"):
        record_environment(tmp_path)


def test_version_changes_names_each_package_and_the_cpu() -> None:
    from llava_vid.environment import version_changes

    before = {"cpu": "A", "packages": {"torch": "2.13.0", "numpy": "2.4.6"}}
    now = {"cpu": "B", "packages": {"torch": "2.13.0", "numpy": "2.5.0"}}
    assert version_changes(before, now) == ["numpy 2.4.6 → 2.5.0", "CPU A → B"]
    assert version_changes(now, now) == []


def test_a_folder_made_with_other_settings_is_refused(smoke_run: tuple[Path, str], capsys: pytest.CaptureFixture) -> None:
    out, _ = smoke_run
    assert main(["demo", "--out", str(out)]) == 2  # the full demo into the smoke run's folder
    error = capsys.readouterr().err
    assert str(out) in error and "other settings" in error and "world" in error


def test_a_folder_made_with_another_recipe_is_refused(
    smoke_run: tuple[Path, str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    """A changed stage config (here stage 2's epochs) makes every trained step stale: refused, not reused."""
    import llava_vid.demo

    out, _ = smoke_run
    changed = yaml.safe_load(llava_vid.demo.DEMO_STAGE2.read_text())
    changed["num_train_epochs"] += 1
    (tmp_path / "demo_stage2.yaml").write_text(yaml.safe_dump(changed))
    monkeypatch.setattr(llava_vid.demo, "DEMO_STAGE2", tmp_path / "demo_stage2.yaml")
    assert main(["demo", "--smoke", "--out", str(out)]) == 2
    error = capsys.readouterr().err
    assert "other settings" in error and "recipe" in error


def test_a_foreign_folder_is_refused(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    (tmp_path / "notes.txt").write_text("mine")
    assert main(["demo", "--smoke", "--out", str(tmp_path)]) == 2
    assert "not empty" in capsys.readouterr().err
    assert sorted(path.name for path in tmp_path.iterdir()) == ["notes.txt"]


def test_a_seed_reaches_every_random_draw_and_bad_seeds_are_named() -> None:
    from llava_vid.demo import FULL, seeded

    settings = seeded(FULL, 3)
    assert settings.world["seed"] == 3 and settings.vision["seed"] == 3
    assert settings.stage1[-1] == settings.warmup[-1] == settings.stage2[-1] == "seed=3"
    for bad in (-1, True, 1.5):
        with pytest.raises(ValueError, match="demo seed"):
            seeded(FULL, bad)


def test_another_seed_does_not_reuse_a_folder(smoke_run: tuple[Path, str], capsys: pytest.CaptureFixture) -> None:
    out, _ = smoke_run
    assert main(["demo", "--smoke", "--out", str(out), "--seed", "1"]) == 2
    error = capsys.readouterr().err
    assert "other settings" in error and "world" in error and "stage2" in error


def _tool(name: str):
    import importlib.util

    spec = importlib.util.spec_from_file_location(name, Path(__file__).resolve().parents[1] / "tools" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its dataclasses resolve their annotations through sys.modules
    spec.loader.exec_module(module)
    return module


def _ablations_tool():
    return _tool("demo_ablations")


def test_ablations_refuse_a_demo_not_made_with_the_full_settings(smoke_run: tuple[Path, str], capsys) -> None:
    out, _ = smoke_run
    with pytest.raises(SystemExit):
        _ablations_tool().main(["--demo", str(out)])
    assert "other settings" in capsys.readouterr().err
    assert not (out / "ablations").exists()  # nothing trained


def test_task_subset_keeps_only_the_named_tasks(smoke_run: tuple[Path, str], tmp_path: Path) -> None:
    from llava_vid.demo import write_task_subset

    out, _ = smoke_run
    short_videos = _ablations_tool().SHORT_VIDEO_TASKS
    path = write_task_subset(out / "world", short_videos, tmp_path / "subset.jsonl")
    tasks = {json.loads(line)["task"] for line in path.read_text().splitlines()}
    assert tasks == set(short_videos)
    with pytest.raises(ValueError, match="no records"):
        write_task_subset(out / "world", ("no_such_task",), tmp_path / "none.jsonl")
    assert not (tmp_path / "none.jsonl").exists()


def test_a_proxy_trains_on_its_tasks_is_reused_and_refuses_other_arguments(smoke_run: tuple[Path, str], capsys) -> None:
    out, _ = smoke_run
    tool = _tool("demo_proxy")
    arguments = ["--demo", str(out), "--name", "colour", "--tasks", "compare_colour,pick_colour"]
    assert tool.main(arguments) == 0
    printed = capsys.readouterr().out
    folder = out / "proxies" / "colour"
    assert list(json.loads((folder / "eval" / "eval.json").read_text())["tasks"]) == ["compare_colour", "pick_colour"]
    assert "overall" in printed and "compare_colour: " in printed and " → " in printed  # the table, the confusion
    trained = {json.loads(line)["task"] for line in (folder / "train_subset.jsonl").read_text().splitlines()}
    assert trained == {"compare_colour", "pick_colour"}
    config = (folder / "stage2" / "train_config.yaml").read_text()
    assert "train_subset.jsonl" in config and str((out / "stage1" / "final").resolve()) in config
    weights = folder / "stage2" / "final" / "model.safetensors"
    stamp = weights.stat().st_mtime_ns
    assert tool.main(arguments) == 0
    assert "already done" in capsys.readouterr().out and weights.stat().st_mtime_ns == stamp
    with pytest.raises(SystemExit):
        tool.main([*arguments, "learning_rate=5e-4"])
    error = capsys.readouterr().err
    assert "other arguments" in error and "overrides" in error
    with pytest.raises(SystemExit):
        tool.main(["--demo", str(out), "--name", "other", "--tasks", "compare_colour,no_such_task"])
    assert "no_such_task" in capsys.readouterr().err and not (out / "proxies" / "other").exists()


def test_probe_tool_reads_every_probe_from_the_smoke_tower(smoke_run: tuple[Path, str], tmp_path: Path) -> None:
    out, _ = smoke_run
    tool = _tool("probe_tower")
    assert tool.main(["--world", str(out / "world"), "--tower", str(out / "vision_tower"), "--json", str(tmp_path / "p.json")]) == 0
    results = json.loads((tmp_path / "p.json").read_text())[str(out / "vision_tower")]
    assert list(results) == list(tool.PROBES) and all(0.0 <= value <= 1.0 for value in results.values())


def test_probe_fits_what_is_there_and_not_what_is_not() -> None:
    import torch

    fit = _tool("probe_tower")._fit_and_score
    generator = torch.Generator().manual_seed(0)
    labels = torch.randint(0, 2, (400,), generator=generator)
    separable = torch.randn(400, 8, generator=generator) + 3.0 * labels[:, None]  # (N, 8): the label shifts every feature
    assert fit((separable[:300], labels[:300]), (separable[300:], labels[300:]), 2) > 0.95
    noise = torch.randn(400, 8, generator=generator)  # unrelated to the label
    assert fit((noise[:300], labels[:300]), (noise[300:], labels[300:]), 2) < 0.7


def test_cuts_tool_places_a_word_by_its_ink(tmp_path: Path) -> None:
    from PIL import Image

    place = _tool("document_cuts").word_place
    pages = {"whole": (10, 10, 40, 20), "vertical edge": (50, 10, 70, 20), "horizontal edge": (10, 50, 40, 60)}
    for expected, (left, top, right, bottom) in pages.items():
        pixels = np.full((168, 168, 3), 240, dtype=np.uint8)
        pixels[top:bottom, left:right] = 0  # the word's ink
        pixels[100:103, 20:120] = 128  # a grey distractor mark across an edge is not the word
        Image.fromarray(pixels).save(tmp_path / "page.png")
        assert place(tmp_path / "page.png", 56) == expected
    Image.fromarray(np.full((168, 168, 3), 240, dtype=np.uint8)).save(tmp_path / "blank.png")
    with pytest.raises(ValueError, match="blank.png: no pure black pixels"):
        place(tmp_path / "blank.png", 56)


def test_cuts_tool_scores_every_held_out_page_of_the_smoke_run(smoke_run: tuple[Path, str], tmp_path: Path) -> None:
    out, _ = smoke_run
    tool = _tool("document_cuts")
    model = out / "stage2" / "final"
    assert tool.main(["--world", str(out / "world"), "--model", str(model), "--json", str(tmp_path / "c.json")]) == 0
    results = json.loads((tmp_path / "c.json").read_text())[str(model)]
    assert list(results) == list(tool.PLACES)
    heldout = len((out / "world" / "heldout" / "document_word.jsonl").read_text().splitlines())
    assert sum(entry["n"] for entry in results.values()) == heldout
    assert all(len(entry["wrong"]) == entry["n"] - entry["correct"] for entry in results.values())
