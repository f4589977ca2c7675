"""The demo's ablations: what AnyRes, the context token and the content grid each buy on the synthetic world.

Run after `llava-vid demo` (it reuses that run's world, vision tower and stage 1); every variant is
trained with the demo's own recipe and evaluated on the same held-out samples as the demo's model:

Each variant redoes the stage-2 warm-up (the colour and motion questions first, :func:`llava_vid.demo.warmup_step`)
and stage 2 with its own settings, as the demo does:

* ``anyres``:  stage 2 again with ``image_treatment=global`` (one 56 px view per image, in training and
               evaluation) against the demo's AnyRes model, on ``document_word``;
* ``context``: stage 1 and stage 2 again with LLaMA-VID's context token beside each frame's content token
               (the preset's ``video_context_token: true``) against the demo's content-only model, on
               ``needle`` (and the short videos);
* ``grid``:    ``g = 1`` against ``g = 2`` content tokens per frame (in training and evaluation) on the four
               short-video tasks, both arms' stage 2 trained on those tasks' records only: with every
               task, ``g = 2`` would also apply to the 256-frame needles (1024 video tokens each, past
               stage 2's ``max_length`` with the question). Both arms start from the demo's warm-up
               (the baseline) or their own (the variant).

    python tools/demo_ablations.py --demo runs/demo [--only anyres,context,grid]

Each variant lives in ``DEMO/ablations/<name>/`` and is reused when finished (like the demo's steps);
the table is printed and written to ``DEMO/ablations/ablations.json`` and ``ablations.md``.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from llava_vid.data.synthetic import TASKS
from llava_vid.demo import (
    DEMO_STAGE1,
    DEMO_STAGE2,
    FULL,
    SETTINGS_FILE,
    DemoSettings,
    Step,
    claim_folder,
    data_overrides,
    evaluate_into,
    run_steps,
    seeded,
    train_stage,
    warmup_step,
    write_preset,
    write_task_subset,
)

SHORT_VIDEO_TASKS = tuple(name for name, spec in TASKS.items() if spec.media == "video")


@dataclass(frozen=True)
class Ablation:
    """One comparison: which tasks, and how the variant is trained and evaluated."""

    name: str
    what: str
    baseline: str
    variant: str
    tasks: tuple[str, ...]
    preset_changes: dict[str, Any]
    """Preset fields changed for the variant; non-empty means stage 1 is retrained too."""
    stage_overrides: tuple[str, ...]
    """``key=value`` overrides of both stages for the variant."""
    evaluate_options: dict[str, Any]
    """How the variant is evaluated (:func:`llava_vid.eval.evaluate` keyword arguments)."""
    train_tasks: tuple[str, ...] = ()
    """Train both arms' stage 2 on these tasks' records only; the baseline is then trained here too
    (with the demo's recipe), not taken from the demo. Empty: every record, the demo's model as baseline."""


ABLATIONS: dict[str, Ablation] = {
    ablation.name: ablation
    for ablation in (
        Ablation(
            "anyres", "document word: AnyRes tiles vs one global view", "AnyRes (global view + tiles)",
            "global view only", ("document_word",), {}, ("image_treatment=global",), {"image_treatment": "global"},
        ),
        Ablation(
            "context", "needle in a long video: content tokens only vs context + content", "content only",
            "context + content", ("needle", *SHORT_VIDEO_TASKS), {"video_context_token": True}, (), {},
        ),
        Ablation(
            "grid", "short videos: content tokens per frame g = 1 vs g = 2", "g = 1 (1 token/frame)",
            "g = 2 (4 tokens/frame)", SHORT_VIDEO_TASKS, {}, ("data.0.video.content_grid=2",),
            {"video_overrides": {"content_grid": 2}}, train_tasks=SHORT_VIDEO_TASKS,
        ),
    )
}  # fmt: skip


def run_ablation(demo: Path, ablation: Ablation, settings: DemoSettings, *, deepspeed: bool = True) -> dict[str, Any]:
    """Train (or reuse) the variant of ``ablation`` with the demo's ``settings`` (its stage overrides:
    the seed) and return both models' accuracies on its tasks."""
    world, folder = demo / "world", demo / "ablations" / ablation.name
    folder.mkdir(parents=True, exist_ok=True)
    train_file = "train.jsonl"
    if ablation.train_tasks:
        train_file = str(write_task_subset(world, ablation.train_tasks, folder / "train_subset.jsonl"))
    steps = []
    stage1 = demo / "stage1"
    if ablation.preset_changes:
        preset = write_preset(demo / "vision_tower", folder / "model.yaml", **ablation.preset_changes)
        stage1 = folder / "stage1"
        steps.append(Step("stage 1", stage1 / "final", folder=stage1, run=lambda: train_stage(
            DEMO_STAGE1,
            [f"model={preset}", f"output_dir={stage1}", *data_overrides(world, "captions.jsonl"), *settings.stage1,
             *ablation.stage_overrides],
            deepspeed=deepspeed,
        )))  # fmt: skip
    # The variant's own warm-up: its preset or overrides may change how the warm-up's images are seen.
    variant_settings = replace(settings, warmup=(*settings.warmup, *ablation.stage_overrides))
    warmup = folder / "stage2a"
    steps.append(warmup_step(world, stage1, warmup, variant_settings, deepspeed=deepspeed))
    stage2 = folder / "stage2"
    steps.append(Step("stage 2", stage2 / "final", folder=stage2, run=lambda: train_stage(
        DEMO_STAGE2,
        [f"model={warmup / 'final'}", f"output_dir={stage2}", *data_overrides(world, train_file), *settings.stage2,
         *ablation.stage_overrides],
        deepspeed=deepspeed,
    )))  # fmt: skip
    baseline = demo / "stage2" / "final"
    if ablation.train_tasks:  # the demo's model saw every task: train a baseline on the same subset
        baseline_stage2 = folder / "baseline" / "stage2"
        baseline = baseline_stage2 / "final"
        steps.append(Step("stage 2 (baseline)", baseline, folder=baseline_stage2, run=lambda: train_stage(
            DEMO_STAGE2,
            [f"model={demo / 'stage2a' / 'final'}", f"output_dir={baseline_stage2}", *data_overrides(world, train_file),
             *settings.stage2],
            deepspeed=deepspeed,
        )))  # fmt: skip
    tasks = list(ablation.tasks)
    steps += [
        Step("evaluate the baseline", folder / "eval_baseline", lambda: evaluate_into(
            world, baseline, folder / "eval_baseline", tasks=tasks, progress=False
        )),
        Step("evaluate the variant", folder / "eval_variant", lambda: evaluate_into(
            world, stage2 / "final", folder / "eval_variant", tasks=tasks, progress=False, **ablation.evaluate_options
        )),
    ]  # fmt: skip
    run_steps(steps, prefix="  ")
    scores = {}
    for side in ("baseline", "variant"):
        report = json.loads((folder / f"eval_{side}" / "eval.json").read_text(encoding="utf-8"))
        scores[side] = {task: report["tasks"][task] for task in tasks}
    return {"ablation": ablation.name, "what": ablation.what, "baseline": ablation.baseline, "variant": ablation.variant,
            "tasks": tasks, "trained_on": list(ablation.train_tasks) or "every task", "scores": scores}  # fmt: skip


def markdown_table(results: Sequence[dict[str, Any]]) -> str:
    lines = ["| ablation | stage 2 trained on | task | n | chance | baseline | accuracy | variant | accuracy | baseline − variant |",
             "|---|---|---|---|---|---|---|---|---|---|"]  # fmt: skip
    for result in results:
        for task in result["tasks"]:
            base, variant = result["scores"]["baseline"][task], result["scores"]["variant"][task]
            difference = 100 * (base["accuracy"] - variant["accuracy"])
            lines.append(
                f"| {result['ablation']} | {', '.join(result['trained_on']) if isinstance(result['trained_on'], list) else result['trained_on']} "
                f"| {task} | {base['n']} | {100 * base['chance']:.1f}% | {result['baseline']} | "
                f"{100 * base['accuracy']:.1f}% | {result['variant']} | {100 * variant['accuracy']:.1f}% | {difference:+.1f} pts |"
            )
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--demo", type=Path, default=Path("runs/demo"), help="a finished `llava-vid demo` folder")
    parser.add_argument("--only", default=",".join(ABLATIONS), help=f"comma-separated, of {','.join(ABLATIONS)}")
    args = parser.parse_args(argv)
    names = [name.strip() for name in args.only.split(",") if name.strip()]
    unknown = [name for name in names if name not in ABLATIONS]
    if unknown:
        parser.error(f"--only: unknown ablation(s) {unknown}; expected some of {list(ABLATIONS)}")
    if not (args.demo / "stage2" / "final").is_dir() or not (args.demo / "eval").is_dir():
        parser.error(f"--demo {args.demo}: not a finished demo (run `llava-vid demo --out {args.demo}` first)")
    # The variants use the full demo's recipe (with the demo's seed), so the baseline must be a full
    # demo, trained the same way.
    recorded = json.loads((args.demo / SETTINGS_FILE).read_text(encoding="utf-8"))
    deepspeed = recorded.get("deepspeed", True)
    settings = seeded(FULL, recorded.get("world", {}).get("seed", 0))
    try:
        claim_folder(args.demo, settings, deepspeed=deepspeed)
    except ValueError as error:
        parser.error(f"--demo {args.demo}: {error}")
    results = []
    for name in names:
        print(f"[{name}] {ABLATIONS[name].what}", flush=True)
        results.append(run_ablation(args.demo, ABLATIONS[name], settings, deepspeed=deepspeed))
    table = markdown_table(results)
    out = args.demo / "ablations"
    (out / "ablations.json").write_text(json.dumps(results, indent=2) + "\n", encoding="utf-8")
    (out / "ablations.md").write_text(table + "\n", encoding="utf-8")
    print("\n" + table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
