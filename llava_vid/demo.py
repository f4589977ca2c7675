"""``llava-vid demo``: the embedded default — a small world the model learns to see, end to end on a CPU.

Seven steps, each skipped when its result already exists (results are written atomically, so a step
cut off half-way is redone, never mistaken for done; the training stages also resume from their last
complete checkpoint):

1. ``world/``         the synthetic world (:mod:`llava_vid.data.synthetic`): videos, long videos with a
                      needle, documents, image pairs/triples, captions; train and held-out splits.
2. ``vision_tower/``  a tiny CLIP pretrained contrastively on the world's image/caption pairs
                      (:mod:`llava_vid.train.vision_pretrain`) — the LLaVA recipe freezes a pretrained
                      tower, and with no downloads this is where ours comes from.
3. ``stage1/final``   LLaVA stage 1 (the projector on captions, ``plain`` template) through
                      ``llava-vid train`` with DeepSpeed ZeRO-2 (one CPU process, gloo).
4. ``stage2a/final``  stage 2's recipe on the colour questions about image pairs and the motion clips
                      alone (:data:`WARMUP_TASKS`), from stage 1, training the language model but not
                      the projector (:data:`WARMUP_TRAINABLE`): the colour comparison is learned here
                      or not at all (see there).
5. ``stage2/final``   LLaVA stage 2 (projector + LLM on every task, ``vicuna_v1``), same path,
                      from ``stage2a/final``.
6. ``eval/``          held-out exact-match accuracy per task beside chance (``eval.json``, ``eval.png``).
7. three answers with the trained model: a video, a document and a multi-image question.

``--smoke`` runs the same steps with a handful of samples and steps (the test suite's version).
``--seed N`` draws everything (the world, the tower, both stages) from another seed: another run of the
same recipe, to see how far its numbers move (the default is 0). The settings of a run are written to
``demo.json`` first, with the preset and stage configs as read; a folder made with other settings (a
smoke run's folder given to the full demo, another seed's, or one trained with an older recipe) is refused
rather than reused. Each run also appends what it ran on (package versions, CPU) to
``environments.json``, and says so when that changed since the folder's last run.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

import yaml

from llava_vid.atomic import write_folder_atomically, write_text_atomically
from llava_vid.checks import check_int
from llava_vid.data.synthetic import QA_TASKS

if TYPE_CHECKING:  # the training stack loads only when a stage runs
    from llava_vid.train.stages import Part

__all__ = [
    "DemoSettings",
    "FULL",
    "SMOKE",
    "WARMUP_EPOCHS",
    "WARMUP_TASKS",
    "WARMUP_TRAINABLE",
    "Step",
    "claim_folder",
    "data_overrides",
    "evaluate_into",
    "run_demo",
    "run_steps",
    "seeded",
    "train_stage",
    "write_preset",
    "warmup_step",
    "write_task_subset",
]

REPO_ROOT = Path(__file__).resolve().parents[1]
CONFIGS = REPO_ROOT / "configs"
DEMO_PRESET = CONFIGS / "model" / "demo.yaml"
DEMO_STAGE1 = CONFIGS / "train" / "demo_stage1.yaml"
DEMO_STAGE2 = CONFIGS / "train" / "demo_stage2.yaml"
ZERO2 = CONFIGS / "deepspeed" / "zero2.json"
SETTINGS_FILE = "demo.json"
ENVIRONMENTS_FILE = "environments.json"  # what each run of a folder ran on (llava_vid.environment)
# One question of each kind answered at the end: (task, what it shows).
SHOWCASE = (("video_order", "video"), ("document_word", "document"), ("compare_count", "multi-image"))
# Trained first, alone, before stage 2 proper (which still holds them). In the full mix "are the shapes
# the same colour?" is never learned once the counting triples are beside it (not even on its own
# training pairs after twice the epochs); alone it is learned in a few hundred steps, and learned first
# it survives stage 2. The motion clips join it: after a colour-only warm-up motion was not learned on
# seed 0 (63.3%), and with them in it counting and the needle did better on both seeds
# (BENCHMARKS.md, "The embedded demo").
WARMUP_TASKS: tuple[str, ...] = ("compare_colour", "pick_colour", "video_motion")
# The warm-up's epochs (stage 2 proper trains ``num_train_epochs`` of demo_stage2.yaml): the three it was
# measured with when stage 2 went from three epochs to four.
WARMUP_EPOCHS = 3
# What the warm-up trains: the language model, not the projector, which stays as stage 1 aligned it. A
# warm-up that also trained the projector on colour questions alone cost the counting later (pick_count
# 61.7% against 80.0% without a warm-up, seed 0); with the projector frozen there the colour comparison
# is still learned and pick_count read 76.7% (BENCHMARKS.md, "The embedded demo").
WARMUP_TRAINABLE: tuple[Part, ...] = ("compressor", "image_newline", "language_model")


@dataclass(frozen=True)
class DemoSettings:
    """Sizes of one demo run: the world, the tower pretraining, the stage overrides, the evaluation."""

    world: dict[str, Any] = field(default_factory=dict)
    """:class:`~llava_vid.data.synthetic.WorldOptions` fields (defaults: the full world)."""
    vision: dict[str, Any] = field(default_factory=dict)
    """:class:`~llava_vid.train.vision_pretrain.VisionPretrainConfig` fields."""
    stage1: tuple[str, ...] = ()
    """``key=value`` overrides of ``configs/train/demo_stage1.yaml``."""
    warmup: tuple[str, ...] = ()
    """``key=value`` overrides of ``configs/train/demo_stage2.yaml`` for the warm-up on :data:`WARMUP_TASKS`."""
    stage2: tuple[str, ...] = ()
    """``key=value`` overrides of ``configs/train/demo_stage2.yaml``."""
    eval_limit: int | None = None
    """Held-out records per task to evaluate (``None``: all)."""


FULL = DemoSettings()
SMOKE = DemoSettings(
    world={
        "train_counts": {task: 4 for task in QA_TASKS},
        "heldout_counts": {task: 2 for task in QA_TASKS},
        "caption_images": 16,
        "caption_videos": 4,
        "caption_views": 6,
        "vision_pairs": 64,
        "vision_heldout_pairs": 16,
        "long_video_frames": 24,
    },
    vision={"steps": 4, "batch_size": 16},
    stage1=("max_steps=2", "save_steps=1"),
    warmup=("max_steps=2", "save_steps=1"),
    stage2=("max_steps=2", "save_steps=1"),
    eval_limit=2,
)


def seeded(settings: DemoSettings, seed: int) -> DemoSettings:
    """``settings`` with every random draw made from ``seed``: the world (data and held-out split), the
    tower, every training stage. Another seed is another run of the same recipe: how much its numbers move."""
    check_int("demo seed", seed, minimum=0)
    return replace(
        settings,
        world={**settings.world, "seed": seed},
        vision={**settings.vision, "seed": seed},
        stage1=(*settings.stage1, f"seed={seed}"),
        warmup=(*settings.warmup, f"seed={seed}"),
        stage2=(*settings.stage2, f"seed={seed}"),
    )


# ------------------------------------------------------------------------------------------ steps
@dataclass(frozen=True)
class Step:
    """One step of a pipeline of folders, each made from the ones before it."""

    name: str
    result: Path
    """What the step leaves behind; it exists only once the step finished (written atomically)."""
    run: Callable[[], None]
    folder: Path | None = None
    """What to delete before redoing the step (default ``result``); a training stage's output folder,
    so a stage redone on a new base does not resume from checkpoints of the old one."""


def run_steps(steps: list[Step], *, total: int | None = None, prefix: str = "") -> None:
    """Run each step unless its result exists. A step that runs makes every later result stale (they
    were made from what it replaces), so those are deleted and redone, never reused. Steps are printed
    as ``prefix[k/total] name`` (``total`` defaults to the number of steps)."""
    redone = False
    for number, step in enumerate(steps, start=1):
        label = f"{prefix}[{number}/{total or len(steps)}] {step.name}"
        if step.result.exists() and not redone:
            print(f"{label}: already done, reused", flush=True)
            continue
        stale = step.folder or step.result
        if redone and stale.exists():
            shutil.rmtree(stale)
        print(f"{label} ...", flush=True)
        started = time.perf_counter()
        step.run()
        print(f"{label}: done in {time.perf_counter() - started:.0f} s", flush=True)
        redone = True


def _make_world(world: Path, settings: DemoSettings) -> None:
    from llava_vid.data.synthetic import WorldOptions, generate_world

    options = WorldOptions(**settings.world)
    write_folder_atomically(world, lambda staging: generate_world(staging, options, progress=True))


def _pretrain_tower(world: Path, tower: Path, settings: DemoSettings) -> None:
    from llava_vid.train.vision_pretrain import VisionPretrainConfig, pretrain_vision_tower

    pretrain_vision_tower(world / "vision_pairs.jsonl", tower, VisionPretrainConfig(**settings.vision))


def write_preset(tower: Path, path: Path, **changes: Any) -> Path:
    """The demo preset with its vision tower pointing at the pretrained one (an absolute path) and
    ``changes`` to other preset fields (the ablations: ``video_context_token=False``)."""
    from llava_vid.build import PartSpec, load_model_spec, model_spec_to_mapping

    spec = replace(load_model_spec(DEMO_PRESET), vision=PartSpec(pretrained=str(tower.resolve())), **changes)
    path.write_text(yaml.safe_dump(model_spec_to_mapping(spec), sort_keys=False))
    return path


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def train_stage(stage_config: Path, overrides: list[str], *, deepspeed: bool = True) -> None:
    """``llava-vid train`` in a child process — as the ``deepspeed`` launcher would start it: DeepSpeed
    owns torch.distributed and process-wide state for the life of the process."""
    env = dict(os.environ)
    if deepspeed:
        env.update(
            {"MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(_free_port()), "RANK": "0", "LOCAL_RANK": "0", "WORLD_SIZE": "1"}
        )
        overrides = [*overrides, f"deepspeed={ZERO2}"]
    else:
        overrides = [*overrides, "deepspeed=null"]
    command = [sys.executable, "-m", "llava_vid.cli", "train", str(stage_config), *overrides]
    result = subprocess.run(command, env=env, cwd=REPO_ROOT)
    if result.returncode != 0:
        raise RuntimeError(f"training stage {stage_config.name} failed (exit code {result.returncode}); see the output above")


def data_overrides(world: Path, file: str) -> list[str]:
    """``llava-vid train`` overrides that train on ``world/file`` (or an absolute path) with the world's
    video sampling."""
    fps = json.loads((world / "world.json").read_text())["train_video_options"]["fps"]
    return [
        f"data.0.path={world / file}",
        f"data.0.image_root={world}",
        f"data.0.video_root={world}",
        f"data.0.video.fps={fps}",
    ]


def write_task_subset(world: Path, tasks: tuple[str, ...], path: Path) -> Path:
    """Write the records of ``tasks`` from ``world/train.jsonl`` to ``path`` (atomically; media paths stay
    relative to the world, so train on it with ``data_overrides(world, str(path))``)."""
    source = world / "train.jsonl"
    records = [line for line in source.read_text(encoding="utf-8").splitlines() if json.loads(line).get("task") in tasks]
    if not records:
        raise ValueError(f"{source} holds no records of the tasks {list(tasks)}")
    write_text_atomically(path, "\n".join(records) + "\n")
    return path.resolve()


def warmup_step(world: Path, stage1: Path, warmup: Path, settings: DemoSettings, *, deepspeed: bool) -> Step:
    """The step that makes what stage 2 starts from: ``warmup/final``, stage 2's recipe on the
    :data:`WARMUP_TASKS` records alone, from ``stage1/final``."""

    def run() -> None:
        subset = write_task_subset(world, WARMUP_TASKS, warmup / "train_subset.jsonl")
        train_stage(
            DEMO_STAGE2,
            [f"model={stage1 / 'final'}", f"output_dir={warmup}", *data_overrides(world, str(subset)),
             f"num_train_epochs={WARMUP_EPOCHS}", f"trainable=[{','.join(WARMUP_TRAINABLE)}]", *settings.warmup],
            deepspeed=deepspeed,
        )  # fmt: skip

    return Step(f"stage 2a: {' + '.join(WARMUP_TASKS)} first", warmup / "final", folder=warmup, run=run)


def evaluate_into(world: Path, model_dir: Path, out: Path, **evaluate_options: Any) -> None:
    """Evaluate ``model_dir`` on the world's held-out tasks and write ``eval.json`` + ``eval.png`` to
    ``out`` (atomically); ``evaluate_options`` go to :func:`llava_vid.eval.evaluate`."""
    from llava_vid.eval import evaluate, write_report
    from llava_vid.inference import load_pretrained, pick_runtime

    model, processor = load_pretrained(str(model_dir), pick_runtime())
    report = evaluate(model, processor, world, **evaluate_options)

    def write(folder: Path) -> None:
        write_report(report, folder)

    write_folder_atomically(out, write)


def _showcase(world: Path, model_dir: Path) -> list[dict[str, str]]:
    """Answer one held-out video, document and multi-image question, streaming; returns what was asked."""
    from llava_vid.eval import load_tasks
    from llava_vid.inference import load_pretrained, pick_runtime, reply

    model, processor = load_pretrained(str(model_dir), pick_runtime())
    tasks = {task.name: task for task in load_tasks(world, [name for name, _ in SHOWCASE], limit=1)}
    shown = []
    for task_name, kind in SHOWCASE:
        task = tasks[task_name]
        sample = task.samples[0]
        parts = [part for message in sample.conversation for part in message["content"]]
        images = [part["path"] for part in parts if part["type"] == "image"]
        videos = [part["path"] for part in parts if part["type"] == "video"]
        print(f"\n{kind} question ({task_name}, held out): {sample.question}")
        print(f"  media: {', '.join(images + videos)}")
        print("  answer: ", end="", flush=True)
        # The held-out conversation as it is, so the prompt is laid out as in training and evaluation.
        predicted = reply(model, processor, sample.conversation, max_new_tokens=8, stream=True)
        print(f"  (reference: {sample.reference})")
        shown.append({"task": task_name, "question": sample.question, "answer": predicted, "reference": sample.reference})
    return shown


# ------------------------------------------------------------------------------------------ the demo
def _recipe() -> dict[str, Any]:
    """The demo's preset and stage configs as read (so a changed recipe shows, a changed comment does not)."""
    from llava_vid.yaml_files import read_yaml_mapping

    files = {"preset": DEMO_PRESET, "stage1": DEMO_STAGE1, "stage2": DEMO_STAGE2}
    return {part: read_yaml_mapping(path, f"demo {part} config") for part, path in files.items()}


def _resolved_settings(settings: DemoSettings, *, deepspeed: bool) -> dict[str, Any]:
    """Everything a demo folder's results depend on, defaults resolved (so a changed default shows): the
    settings, and the recipe, so a folder trained with an older preset or stage config is not reused."""
    from llava_vid.data.synthetic import WorldOptions
    from llava_vid.train.vision_pretrain import VisionPretrainConfig

    resolved = {
        "recipe": _recipe(),
        "world": WorldOptions(**settings.world).to_json(),
        "vision": asdict(VisionPretrainConfig(**settings.vision)),
        "stage1": list(settings.stage1),
        "warmup": list(settings.warmup),
        "warmup_recipe": {"tasks": list(WARMUP_TASKS), "epochs": WARMUP_EPOCHS, "trainable": list(WARMUP_TRAINABLE)},
        "stage2": list(settings.stage2),
        "eval_limit": settings.eval_limit,
        "deepspeed": deepspeed,
    }
    return json.loads(json.dumps(resolved))  # tuples → lists, as read back


def claim_folder(out: Path, settings: DemoSettings, *, deepspeed: bool) -> None:
    """Record the settings ``out`` is made with (``demo.json``), or check they are the ones it was made
    with: reusing steps made with other sizes would silently mix two demos."""
    wanted = _resolved_settings(settings, deepspeed=deepspeed)
    path = out / SETTINGS_FILE
    if path.is_file():
        try:
            found = json.loads(path.read_text(encoding="utf-8"))
        except json.JSONDecodeError as error:
            raise ValueError(f"{path} is not valid JSON ({error}); delete {out} to start the demo afresh") from error
        differing = sorted(key for key in {**found, **wanted} if found.get(key) != wanted.get(key))
        if differing:
            raise ValueError(
                f"{out} holds a demo made with other settings (differing: {', '.join(differing)}; see {path}); "
                "pass another --out or delete that folder"
            )
        return
    if any(out.iterdir()):
        raise ValueError(f"{out} is not empty and holds no {SETTINGS_FILE}; pass an empty or new folder as --out")
    write_text_atomically(path, json.dumps(wanted, indent=2) + "\n")


def record_environment(out: Path) -> None:
    """Append this run's environment to ``out/environments.json`` (one entry per ``llava-vid demo`` call,
    a resumed run included), and say so when packages or the CPU changed since the folder's last run:
    its finished steps are reused all the same, but their numbers may not repeat."""
    from llava_vid.environment import describe_environment, version_changes

    path = out / ENVIRONMENTS_FILE
    try:
        runs = json.loads(path.read_text(encoding="utf-8")) if path.is_file() else []
    except json.JSONDecodeError as error:
        raise ValueError(f"{path} is not valid JSON ({error}); fix or delete that file") from error
    now = describe_environment()
    if runs and (changes := version_changes(runs[-1], now)):
        print(f"note: {out} was last run with other software or hardware ({'; '.join(changes)}); "
              f"finished steps are reused, so its results mix the two (see {path})")
    write_text_atomically(path, json.dumps([*runs, now], indent=2) + "\n")


def run_demo(out: str | os.PathLike, *, smoke: bool = False, deepspeed: bool = True, seed: int = 0) -> Path:
    """Run (or finish) the demo in ``out``; returns the evaluation folder. See the module docstring."""
    from llava_vid.eval import format_table, read_report

    settings = seeded(SMOKE if smoke else FULL, seed)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    claim_folder(out, settings, deepspeed=deepspeed)
    record_environment(out)
    world, tower = out / "world", out / "vision_tower"
    stage1, warmup, stage2, evaluation = out / "stage1", out / "stage2a", out / "stage2", out / "eval"
    started = time.perf_counter()

    preset = out / "model.yaml"
    run_steps([
        Step("synthetic world", world, lambda: _make_world(world, settings)),
        Step("vision tower (contrastive pretraining)", tower, lambda: _pretrain_tower(world, tower, settings)),
        Step("stage 1: align the projector", stage1 / "final", folder=stage1, run=lambda: train_stage(
            DEMO_STAGE1,
            [f"model={write_preset(tower, preset)}", f"output_dir={stage1}", *data_overrides(world, "captions.jsonl"),
             *settings.stage1],
            deepspeed=deepspeed,
        )),
        warmup_step(world, stage1, warmup, settings, deepspeed=deepspeed),
        Step("stage 2: instruction tuning", stage2 / "final", folder=stage2, run=lambda: train_stage(
            DEMO_STAGE2,
            [f"model={warmup / 'final'}", f"output_dir={stage2}", *data_overrides(world, "train.jsonl"), *settings.stage2],
            deepspeed=deepspeed,
        )),
        Step("held-out evaluation", evaluation, lambda: evaluate_into(world, stage2 / "final", evaluation, limit=settings.eval_limit)),
    ], total=7)  # fmt: skip  (the seventh, the three answers, always runs)
    print("\n" + format_table(read_report(evaluation)))
    print(f"(chart: {evaluation / 'eval.png'}; loss curves: {stage1 / 'loss_curve.png'}, {warmup / 'loss_curve.png'}, "
          f"{stage2 / 'loss_curve.png'})")
    print("\n[7/7] three answers from the trained model")
    _showcase(world, stage2 / "final")
    print(f"\ndemo finished in {time.perf_counter() - started:.0f} s; everything is in {out}")
    return evaluation
