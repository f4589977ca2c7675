"""llava_vid.eval: task loading, exact-match scoring, batched evaluation (real tiny model for the
plumbing, a faked ``generate`` for accuracies that must come out exactly), the report files, and the
`llava-vid eval` / `llava-vid world` commands end to end."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from unittest import mock

import pytest
import torch
from PIL import Image

from llava_vid.cli import main
from llava_vid.data.synthetic import QA_TASKS, WorldOptions, generate_world
from llava_vid.eval import (
    EvalReport,
    accuracy,
    evaluate,
    format_table,
    is_exact_match,
    load_tasks,
    normalize_answer,
    write_report,
)
from llava_vid.inference import answer, reply, user_message

REPO = Path(__file__).resolve().parents[1]
TINY_ANYRES = REPO / "configs" / "model" / "tiny_anyres.yaml"  # AnyRes images + Q-Former videos
HELDOUT = 3  # per task: one batch of 2 and a remainder of 1 at batch_size=2

# The smallest world that still has every task.
_SMALL = {
    "seed": 5,
    "train_counts": {task: 1 for task in QA_TASKS},
    "heldout_counts": {task: HELDOUT for task in QA_TASKS},
    "caption_images": 1,
    "caption_videos": 1,
    "caption_views": 0,
    "vision_pairs": 0,
    "vision_heldout_pairs": 0,
    "video_frames": 4,
    "video_fps": 4.0,
    "long_video_frames": 8,
    "long_video_fps": 2.0,
    "workers": 1,
}


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Path:
    options = WorldOptions(**_SMALL)
    return generate_world(tmp_path_factory.mktemp("eval_world") / "world", options, progress=False).root


@pytest.fixture(scope="module")
def model_and_processor() -> tuple[Any, Any]:
    import llava_vid  # noqa: F401  (registers the Auto classes)
    from llava_vid.build import build_model_and_processor, load_model_spec

    model, processor = build_model_and_processor(load_model_spec(TINY_ANYRES))
    return model.eval(), processor


# --------------------------------------------------------------------------- scoring
@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("Red.", "red"),
        ("  BLUE  ", "blue"),
        ("left,right", "left right"),
        ("The   first.\n", "the first"),
        ("“yes”!", "yes"),
        ("", ""),
    ],
)
def test_normalize_answer(text: str, expected: str) -> None:
    assert normalize_answer(text) == expected


def test_exact_match_is_strict_after_normalisation() -> None:
    assert is_exact_match("Yes.", "yes")
    assert not is_exact_match("The first.", "first")  # no article stripping: padding the answer is wrong
    assert not is_exact_match("red circle", "red")  # nor "contains the reference"
    assert accuracy(["Red.", "blue", "The first.", "NO"], ["red", "green", "first", "no"]) == 0.5
    with pytest.raises(ValueError):
        accuracy(["a"], ["a", "b"])
    with pytest.raises(ValueError):
        accuracy([], [])


# --------------------------------------------------------------------------- tasks
def test_load_tasks_turns_records_into_questions_with_references(world: Path) -> None:
    table = json.loads((world / "tasks.json").read_text())
    tasks = load_tasks(world)
    assert [task.name for task in tasks] == list(table)
    for task in tasks:
        records = [json.loads(line) for line in (world / table[task.name]["heldout_file"]).read_text().splitlines()]
        assert [s.reference for s in task.samples] == [r["answer"] for r in records]
        assert task.chance == pytest.approx(table[task.name]["chance"])
        for sample, record in zip(task.samples, records):
            assert [m["role"] for m in sample.conversation] == ["user"], "the gpt answer must be dropped"
            # tasks.json holds the question (the pick tasks' names the image asked about); each media
            # part is shown where the record's placeholder stands
            question = table[task.name]["question"].format(image=record.get("asked"))
            images = record.get("image") if isinstance(record.get("image"), list) else []
            labels = [f"{ordinal.capitalize()} image: <image>" for ordinal in ("first", "second", "third")]
            shown = [*labels[: len(images)], question] if images else [f"<{'video' if 'video' in record else 'image'}>", question]
            assert sample.question == " ".join(shown)
            media = [part for part in sample.conversation[0]["content"] if part["type"] in ("image", "video")]
            assert media and all(Path(part["path"]).is_file() for part in media)
            for part in media:
                if part["type"] == "video":  # sampled as in training
                    assert {k: part[k] for k in table[task.name]["video_options"]} == table[task.name]["video_options"]


def test_load_tasks_selects_and_limits(world: Path) -> None:
    tasks = load_tasks(world, ["needle", "document_word"], limit=2)
    assert [(task.name, len(task.samples)) for task in tasks] == [("needle", 2), ("document_word", 2)]
    with pytest.raises(ValueError, match="unknown task"):
        load_tasks(world, ["needle", "no_such_task"])
    with pytest.raises(ValueError, match="tasks.json"):
        load_tasks(world / "heldout")


# --------------------------------------------------------------------------- evaluate
def test_evaluate_runs_every_task_with_the_tiny_model(world: Path, model_and_processor: tuple[Any, Any]) -> None:
    model, processor = model_and_processor
    report = evaluate(model, processor, world, batch_size=2, progress=False)
    table = json.loads((world / "tasks.json").read_text())
    assert [result.task for result in report.tasks] == list(table)
    for result in report.tasks:
        assert result.n == HELDOUT
        assert 0.0 <= result.accuracy <= 1.0
        assert result.chance == pytest.approx(1 / len(table[result.task]["answers"]))
        assert result.chance == pytest.approx(table[result.task]["chance"])
        assert len(result.examples) == HELDOUT and sum(result.predictions.values()) == HELDOUT
    assert report.n == HELDOUT * len(table)


def _fake_generate(processor: Any, answers: Iterator[str], calls: list[dict]) -> Any:
    """A stand-in for ``model.generate``: each row's prompt, then the next answer of ``answers``,
    EOS, and padding up to the longest row (what real batched generation returns)."""
    tokenizer = processor.tokenizer

    def generate(**inputs: Any) -> torch.Tensor:
        calls.append(inputs)
        prompts = inputs["input_ids"]
        tails = [tokenizer.encode(next(answers), add_special_tokens=False) + [tokenizer.eos_token_id] for _ in prompts]
        width = max(len(tail) for tail in tails)
        new = torch.full((len(prompts), width), tokenizer.pad_token_id, dtype=torch.long)
        for row, tail in enumerate(tails):
            new[row, : len(tail)] = torch.tensor(tail)
        return torch.cat([prompts, new], dim=1)

    return generate


def test_reply_answers_a_held_out_conversation_as_it_is_laid_out(world: Path, model_and_processor: tuple[Any, Any]) -> None:
    """The demo's three answers: ``reply`` on the held-out conversation, so the model gets the prompt of
    training and evaluation (each image after its name); ``answer`` is ``reply`` on the message it builds."""
    model, processor = model_and_processor
    sample = load_tasks(world, ["compare_count"], limit=1)[0].samples[0]
    calls: list[dict] = []
    with mock.patch.object(model, "generate", _fake_generate(processor, iter(["second"]), calls)):
        assert reply(model, processor, sample.conversation, max_new_tokens=4).strip() == "second"
    prompt = processor.tokenizer.decode(calls[0]["input_ids"][0])
    image_token = processor.tokenizer.decode([model.config.image_token_id])
    first, second, third = (prompt.index(f"{ordinal} image:") for ordinal in ("First", "Second", "Third"))
    assert first < prompt.index(image_token, first) < second < prompt.index(image_token, second) < third
    assert third < prompt.index(image_token, third) < prompt.index("Which image has the most circles?")
    images = [part["path"] for part in sample.conversation[0]["content"] if part["type"] == "image"]
    built = reply(model, processor, [user_message("What is this?", images[:1])], max_new_tokens=3)
    assert answer(model, processor, "What is this?", images[:1], max_new_tokens=3) == built


@pytest.mark.parametrize("right", [True, False])
def test_evaluate_scores_exact_matches(world: Path, model_and_processor: tuple[Any, Any], right: bool) -> None:
    model, processor = model_and_processor
    tasks = load_tasks(world)
    # Wrong answers are the next answer of the closed set: plausible words, never the reference.
    answers = [
        sample.reference if right else task.answers[(task.answers.index(sample.reference) + 1) % len(task.answers)]
        for task in tasks
        for sample in task.samples
    ]
    calls: list[dict] = []
    with mock.patch.object(model, "generate", side_effect=_fake_generate(processor, iter(answers), calls)):
        report = evaluate(model, processor, world, batch_size=2, progress=False)
    assert report.accuracy == (1.0 if right else 0.0)
    assert all(result.accuracy == (1.0 if right else 0.0) for result in report.tasks)
    assert all(example.correct is right for result in report.tasks for example in result.examples)
    # The confusion counts each answer under its sample's reference: all on the diagonal, or all off it.
    given = iter(answers)
    for task, result in zip(tasks, report.tasks):
        expected: dict[str, dict[str, int]] = {}
        for sample in task.samples:
            row = expected.setdefault(sample.reference, {})
            answer_given = next(given)
            row[answer_given] = row.get(answer_given, 0) + 1
        assert result.confusion == expected
        assert all((reference in row) is right for reference, row in result.confusion.items())
    assert len(calls) == len(tasks) * 2  # batches never mix tasks: 2 + 1 per task
    assert all(call["do_sample"] is False and call["max_new_tokens"] == 8 for call in calls)
    assert all(call["input_ids"].shape[0] <= 2 for call in calls)


def test_evaluate_keeps_as_many_answers_as_asked(world: Path, model_and_processor: tuple[Any, Any]) -> None:
    """``examples``: the first N answers of each task with their ids, every one with ``None``."""
    model, processor = model_and_processor
    (task,) = load_tasks(world, ["video_colour"])
    for examples, kept in ((None, HELDOUT), (1, 1), (0, 0)):
        with mock.patch.object(model, "generate", side_effect=_fake_generate(processor, iter(["red"] * HELDOUT), [])):
            report = evaluate(model, processor, world, tasks=["video_colour"], examples=examples, progress=False)
        assert [example.id for example in report.tasks[0].examples] == [sample.id for sample in task.samples][:kept]
        assert [example.correct for example in report.tasks[0].examples] == [sample.reference == "red" for sample in task.samples][:kept]
    with pytest.raises(ValueError, match="examples must be at least 0"):
        evaluate(model, processor, world, tasks=["video_colour"], examples=-1, progress=False)


def test_report_files_and_table(world: Path, model_and_processor: tuple[Any, Any], tmp_path: Path) -> None:
    model, processor = model_and_processor
    report = evaluate(model, processor, world, tasks=["video_motion", "compare_colour"], limit=1, progress=False)
    assert isinstance(report, EvalReport) and [r.n for r in report.tasks] == [1, 1]
    json_path, png_path = write_report(report, tmp_path / "out")
    assert json.loads(json_path.read_text()) == json.loads(json.dumps(report.to_json()))
    saved = json.loads(json_path.read_text())
    assert set(saved["tasks"]) == {"video_motion", "compare_colour"}
    assert saved["tasks"]["video_motion"]["chance"] == 0.5
    assert sum(sum(row.values()) for row in saved["tasks"]["compare_colour"]["confusion"].values()) == 1
    with Image.open(png_path) as image:
        image.load()
        assert image.width > 100 and image.height > 100
    table = format_table(report)
    assert table.splitlines()[0].split() == ["task", "n", "accuracy", "chance", "×chance"]
    assert "video_motion" in table and "compare_colour" in table and "overall" in table


# --------------------------------------------------------------------------- command line
def test_cli_world_then_eval(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    world_dir = tmp_path / "world"
    flags = ["--train-count", "1", "--heldout-count", "2", "--caption-images", "1", "--caption-videos", "1"]
    flags += ["--long-video-frames", "8", "--video-frames", "4", "--workers", "1", "--quiet"]
    flags += ["--vision-pairs", "0", "--vision-heldout-pairs", "0"]
    assert main(["world", "--out", str(world_dir), *flags]) == 0
    assert (world_dir / "tasks.json").is_file()

    model_dir = tmp_path / "model"
    assert main(["init", "--config", str(TINY_ANYRES), "--out", str(model_dir)]) == 0
    capsys.readouterr()
    out_dir = tmp_path / "eval"
    args = ["eval", "--model", str(model_dir), "--world", str(world_dir), "--tasks", "video_colour,document_word"]
    assert main([*args, "--limit", "1", "--batch-size", "1", "--examples", "0", "--out", str(out_dir), "--quiet"]) == 0
    printed = capsys.readouterr().out
    assert "video_colour" in printed and "document_word" in printed and "needle" not in printed
    assert str(out_dir / "eval.json") in printed and str(out_dir / "eval.png") in printed
    saved = json.loads((out_dir / "eval.json").read_text())
    assert {task: entry["n"] for task, entry in saved["tasks"].items()} == {"video_colour": 1, "document_word": 1}
    assert all(entry["examples"] == [] for entry in saved["tasks"].values())
    with pytest.raises(SystemExit):
        main([*args, "--examples", "some"])
    assert "expected a number of at least 0 or 'all', got 'some'" in capsys.readouterr().err

    assert main([*args[:5], "--tasks", "nope", "--quiet"]) == 2
    assert "unknown task" in capsys.readouterr().err


def test_video_overrides_reach_every_video_task_and_the_report(world: Path, model_and_processor: tuple[Any, Any]) -> None:
    tasks = load_tasks(world, ["video_colour", "needle", "document_word"], video_overrides={"content_grid": 2})
    assert [task.video_options for task in tasks] == [{"fps": 4.0, "content_grid": 2}, {"fps": 2.0, "content_grid": 2}, None]
    part = next(p for p in tasks[0].samples[0].conversation[0]["content"] if p["type"] == "video")
    assert part["content_grid"] == 2
    model, processor = model_and_processor
    report = evaluate(model, processor, world, tasks=["video_colour"], limit=1, video_overrides={"content_grid": 2}, progress=False)
    assert report.video_overrides == {"content_grid": 2}
    assert EvalReport.from_json(report.to_json()).video_overrides == {"content_grid": 2}


def test_unknown_video_override_is_refused(world: Path) -> None:
    with pytest.raises(ValueError, match="unknown video option.*grid"):
        load_tasks(world, video_overrides={"grid": 2})


def test_report_round_trips_through_eval_json(tmp_path) -> None:
    from llava_vid.eval import EvalReport, Example, TaskResult, format_table, read_report, write_report

    report = EvalReport(
        world_dir="w",
        tasks=[
            TaskResult("needle", 4, 3, 0.25, ("star", "ring", "cross", "arrow"), 1.5,
                       [Example("1", "What symbol?", "star", "star", True)], {"star": 3, "ring": 1},
                       {"star": {"star": 3, "ring": 1}}),
            TaskResult("compare_colour", 2, 1, 0.5, ("yes", "no"), 0.5),
        ],
        image_treatment="auto", batch_size=8, max_new_tokens=8, seconds=2.0,
    )  # fmt: skip
    write_report(report, tmp_path)
    again = read_report(tmp_path)
    assert again == report and format_table(again) == format_table(report)
    saved = json.loads((tmp_path / "eval.json").read_text())
    del saved["tasks"]["needle"]["confusion"]  # a report written before the confusion was recorded
    assert EvalReport.from_json(saved).tasks[0].confusion == {}


def test_a_failed_report_write_leaves_the_previous_report_whole(tmp_path, monkeypatch) -> None:
    import llava_vid.eval.report as report_module
    from llava_vid.eval import EvalReport, TaskResult, read_report, write_report

    def report_of(accuracy: float) -> EvalReport:
        task = TaskResult("needle", 4, int(4 * accuracy), accuracy, ("star", "ring", "cross", "arrow"), 1.0)
        return EvalReport(world_dir="w", tasks=[task], image_treatment="auto", batch_size=8, max_new_tokens=8, seconds=1.0)

    write_report(report_of(0.5), tmp_path)
    chart = (tmp_path / "eval.png").read_bytes()

    def broken_plot(report, path):  # the chart fails half-way: a partial file, then an error
        Path(path).write_bytes(b"\x89PNG partial")
        raise OSError("disk full")

    monkeypatch.setattr(report_module, "plot_accuracy", broken_plot)
    with pytest.raises(OSError, match="disk full"):
        write_report(report_of(0.75), tmp_path)
    assert read_report(tmp_path) == report_of(0.5)  # the old report, whole
    assert (tmp_path / "eval.png").read_bytes() == chart
    assert sorted(path.name for path in tmp_path.iterdir()) == ["eval.json", "eval.png"]  # no temp files left
