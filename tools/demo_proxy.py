"""Stage 2 of the demo's recipe on a few tasks' records, from a finished demo's stage 1: one question
about the recipe in minutes instead of a full run (the *proxy* rows of BENCHMARKS.md).

    python tools/demo_proxy.py --demo runs/demo --name four \\
        --tasks compare_count,compare_colour,pick_count,pick_colour [key=value ...]

* ``--tasks``: stage 2 trains on these tasks' records of the demo's ``world/train.jsonl`` and is
  evaluated on their held-out samples;
* ``--train FILE``: train on this file instead (records of your own, media paths relative to the demo's
  world: e.g. those records with one follow-up turn dropped);
* ``--start MODEL``: start from this model instead of the demo's stage 1, e.g. the demo's
  ``stage2a/final`` (its warm-up, as the demo's stage 2 does) or another proxy's ``stage2/final``;
* ``key=value``: overrides of ``configs/train/demo_stage2.yaml``, after the demo's own (its seed), e.g.
  ``learning_rate=5e-4``, ``num_train_epochs=6``, ``seed=1``.

Everything goes to ``DEMO/proxies/NAME/``: ``proxy.json`` (the arguments), ``train_subset.jsonl``,
``stage2/``, ``eval/``. A finished proxy is reused; a name already used with other arguments is refused
rather than mixed. Prints the accuracy table and, per task, the confusion (right answer → answers given).
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
from collections.abc import Sequence
from pathlib import Path

from llava_vid.atomic import write_text_atomically
from llava_vid.data.synthetic import QA_TASKS
from llava_vid.demo import DEMO_STAGE2, SETTINGS_FILE, Step, data_overrides, evaluate_into, run_steps, train_stage, write_task_subset
from llava_vid.eval import EvalReport, format_table, read_report


def format_confusion(report: EvalReport) -> str:
    """One line per task: each right answer and what was answered to it, most often first."""
    lines = []
    for result in report.tasks:
        rows = [
            f"{reference} → " + ", ".join(f"{given or '(nothing)'} {count}" for given, count in answered.items())
            for reference, answered in result.confusion.items()
        ]
        lines.append(f"{result.task}: " + " | ".join(rows))
    return "\n".join(lines)


def run_proxy(demo: Path, name: str, tasks: Sequence[str], *, train: Path | None = None, start: Path | None = None,
              overrides: Sequence[str] = ()) -> Path:  # fmt: skip
    """Train (or reuse) the proxy ``name`` of ``demo`` and return its evaluation folder."""
    recorded = json.loads((demo / SETTINGS_FILE).read_text(encoding="utf-8"))
    world, folder = demo / "world", demo / "proxies" / name
    arguments = {
        "tasks": list(tasks),
        "train": None if train is None else str(train.resolve()),
        "start": str((start or demo / "stage1" / "final").resolve()),
        "overrides": list(overrides),
    }
    record = folder / "proxy.json"
    if record.is_file():
        found = json.loads(record.read_text(encoding="utf-8"))
        if found != arguments:
            differing = sorted(key for key in arguments if found.get(key) != arguments[key])
            raise ValueError(f"{folder} is a proxy made with other arguments (differing: {', '.join(differing)}; "
                             f"see {record}); pass another --name or delete that folder")  # fmt: skip
    else:
        if folder.exists():  # left by a run cut off before it recorded its arguments
            shutil.rmtree(folder)
        write_text_atomically(record, json.dumps(arguments, indent=2) + "\n")
    train_file = arguments["train"] or str(write_task_subset(world, tuple(tasks), folder / "train_subset.jsonl"))
    stage2, evaluation = folder / "stage2", folder / "eval"
    run_steps([
        Step("stage 2 on " + ("the given records" if train else ", ".join(tasks)), stage2 / "final", folder=stage2,
             run=lambda: train_stage(
                 DEMO_STAGE2,
                 [f"model={arguments['start']}", f"output_dir={stage2}", *data_overrides(world, train_file),
                  *recorded["stage2"], *overrides],
                 deepspeed=recorded.get("deepspeed", True),
             )),
        Step("evaluate", evaluation, lambda: evaluate_into(world, stage2 / "final", evaluation, tasks=list(tasks),
                                                           progress=False)),
    ])  # fmt: skip
    return evaluation


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--demo", type=Path, default=Path("runs/demo"), help="a demo folder with a finished stage 1")
    parser.add_argument("--name", required=True, help="the proxy's folder under DEMO/proxies/")
    parser.add_argument("--tasks", required=True, help=f"comma-separated, of {','.join(QA_TASKS)}")
    parser.add_argument("--train", type=Path, help="train on this file instead of the tasks' records")
    parser.add_argument("--start", type=Path, help="start from this model instead of DEMO/stage1/final")
    parser.add_argument("overrides", nargs="*", help="key=value overrides of configs/train/demo_stage2.yaml")
    args = parser.parse_args(argv)
    tasks = [task.strip() for task in args.tasks.split(",") if task.strip()]
    unknown = [task for task in tasks if task not in QA_TASKS]
    if unknown or not tasks:
        parser.error(f"--tasks: unknown or no task(s) {unknown}; expected some of {list(QA_TASKS)}")
    if not (args.demo / "stage1" / "final").is_dir() or not (args.demo / SETTINGS_FILE).is_file():
        parser.error(f"--demo {args.demo}: no finished stage 1 (run `llava-vid demo --out {args.demo}` first)")
    for option, path in (("--train", args.train), ("--start", args.start)):
        if path is not None and not path.exists():
            parser.error(f"{option} {path}: no such file or folder")
    if "/" in args.name or args.name in ("", ".", ".."):
        parser.error(f"--name {args.name!r}: one folder name, no slashes")
    bad = [override for override in args.overrides if "=" not in override]
    if bad:
        parser.error(f"overrides must be key=value, got {bad}")
    try:
        evaluation = run_proxy(args.demo, args.name, tasks, train=args.train, start=args.start, overrides=args.overrides)
    except ValueError as error:
        parser.error(str(error))
    report = read_report(evaluation)
    print("\n" + format_table(report) + "\n\n" + format_confusion(report))
    return 0


if __name__ == "__main__":
    sys.exit(main())
