"""The ``llava-vid`` command line.

    llava-vid init --config configs/model/tiny.yaml --out DIR
    llava-vid generate --model DIR [--image PATH] [--video PATH [--fps F | --num-frames N]
                       [--max-frames M] [--content-grid G] [--timestamps]] "question"
    llava-vid inspect IMAGE|VIDEO|FRAMES_FOLDER [--config PRESET | --model DIR] [--out PNG]
    llava-vid train configs/train/STAGE.yaml [key=value ...]
    llava-vid world --out DIR [--seed N] [--heldout-count [TASK=]N ...] …   (the synthetic world)
    llava-vid eval --model DIR --world DIR [--tasks t1,t2] [--limit N] [--image-treatment T] [--content-grid G]
                   [--batch-size N] [--out DIR]
    llava-vid demo [--out runs/demo] [--smoke] [--seed N]   (world → tower → stage 1 → stage 2 → eval → answers)
"""

from __future__ import annotations

import argparse
import shutil
import sys
from pathlib import Path
from typing import Sequence, get_args

from llava_vid.atomic import write_folder_atomically
from llava_vid.modes import ImageTreatment
from llava_vid.processing.templates import TEMPLATE_NAMES

COMPLETE_MARKER = "llava_vid_complete"  # written last, so a half-written folder is never mistaken for a model


def _init(args: argparse.Namespace) -> int:
    from llava_vid.build import build_model_and_processor, load_model_spec

    out = Path(args.out)
    if (out / COMPLETE_MARKER).exists() and not args.force:
        print(f"{out} already holds a model; pass --force to rebuild it")
        return 0
    if out.exists() and not args.force and any(out.iterdir()):
        raise SystemExit(f"{out} exists and is not an initialised model folder; pass --force to replace it")
    spec = load_model_spec(args.config)
    model, processor = build_model_and_processor(spec)

    def write(folder: Path) -> None:
        model.save_pretrained(folder)
        processor.save_pretrained(folder)
        shutil.copyfile(args.config, folder / "model_preset.yaml")  # the resolved recipe beside the weights
        (folder / COMPLETE_MARKER).write_text("ok\n")

    write_folder_atomically(out, write)  # a crash never leaves a folder that looks complete
    params = sum(p.numel() for p in model.parameters())
    print(f"wrote {out}: {params:,} parameters, {processor.tokens_per_image} visual tokens per image")
    return 0


def _generate(args: argparse.Namespace) -> int:
    from transformers.utils import logging as hf_logging

    from llava_vid.inference import answer, load_pretrained, pick_runtime

    hf_logging.disable_progress_bar()  # the streamed answer is the output; keep stderr quiet
    model, processor = load_pretrained(args.model, pick_runtime(args.device))
    if args.template:
        processor.template = args.template
    answer(
        model,
        processor,
        args.question,
        args.image,
        videos=args.video,
        video_options=_video_options(args),
        video_timestamps=args.timestamps,
        max_new_tokens=args.max_new_tokens,
        stream=True,
        image_treatment=args.treatment,
        max_visual_tokens=args.max_visual_tokens,
    )
    return 0


def _video_options(args: argparse.Namespace) -> dict[str, int | float]:
    """The per-video options given on the command line (the processor's defaults hold for the rest)."""
    options = {key: getattr(args, key) for key in VIDEO_OPTIONS}
    return {key: value for key, value in options.items() if value is not None}


def _inspect(args: argparse.Namespace) -> int:
    from llava_vid.inspect_video import is_video_source

    if is_video_source(args.source):
        return _inspect_video(args)
    given = [f"--{key.replace('_', '-')}" for key in _video_options(args)]
    if given:
        raise ValueError(f"{', '.join(given)} apply to videos; {args.source} is not a video file or a folder of frames")
    from llava_vid.inspect_image import format_report, inspect_image, load_geometry

    geometry, image_processor = load_geometry(args.config, args.model)
    report = inspect_image(
        args.source,
        geometry,
        image_processor,
        treatment=args.treatment,
        max_visual_tokens=args.max_visual_tokens,
        out_path=args.out,
    )
    print(format_report(report))
    return 0


def _inspect_video(args: argparse.Namespace) -> int:
    from llava_vid.build import load_processor
    from llava_vid.inspect_video import format_report, inspect_video
    from llava_vid.processing.video import FrameSampling

    if args.treatment != "auto":
        raise ValueError(f"--treatment applies to images; {args.source} is a video")
    options = _video_options(args)
    content_grid = options.pop("content_grid", None)
    sampling = FrameSampling(**options)  # checked before the (slower) processor is built
    report = inspect_video(
        args.source,
        load_processor(args.config, args.model),
        sampling=sampling,
        content_grid=content_grid,
        max_visual_tokens=args.max_visual_tokens,
        out_path=args.out,
    )
    print(format_report(report))
    return 0


def _train(args: argparse.Namespace) -> int:
    from llava_vid.train.stages import load_stage_config
    from llava_vid.train.trainer import train

    final = train(load_stage_config(args.config, args.overrides))
    print(f"final model: {final}")
    return 0


def _world(args: argparse.Namespace, extra: Sequence[str]) -> int:
    from llava_vid.data.synthetic import main as world_main

    return world_main(list(extra))  # its own parser: every flag of the generator, unchanged


def _eval(args: argparse.Namespace) -> int:
    from transformers.utils import logging as hf_logging

    from llava_vid.eval import evaluate, format_table, write_report
    from llava_vid.inference import load_pretrained, pick_runtime

    hf_logging.disable_progress_bar()  # the evaluation's own bar is the one to watch
    tasks = [name.strip() for name in args.tasks.split(",") if name.strip()] if args.tasks else None
    model, processor = load_pretrained(args.model, pick_runtime(args.device))
    report = evaluate(
        model,
        processor,
        args.world,
        tasks=tasks,
        limit=args.limit,
        video_overrides={"content_grid": args.content_grid} if args.content_grid is not None else None,
        image_treatment=args.image_treatment,
        batch_size=args.batch_size,
        max_new_tokens=args.max_new_tokens,
        **({} if args.examples is None else {"examples": None if args.examples == "all" else args.examples}),
        progress=not args.quiet,
    )
    print(format_table(report))
    json_path, png_path = write_report(report, args.out or Path(args.model) / "eval")
    print(f"wrote {json_path}\nwrote {png_path}")
    return 0


def _examples_count(text: str) -> int | str:
    """``--examples``: a count of at least 0, or ``all``."""
    if text == "all":
        return text
    if not text.isdigit():
        raise argparse.ArgumentTypeError(f"expected a number of at least 0 or 'all', got {text!r}")
    return int(text)


def _demo(args: argparse.Namespace) -> int:
    from llava_vid.demo import run_demo

    out = args.out or ("runs/demo_smoke" if args.smoke else "runs/demo")
    run_demo(out, smoke=args.smoke, deepspeed=not args.no_deepspeed, seed=args.seed)
    return 0


def _add_image_options(command: argparse.ArgumentParser) -> None:
    """Per-request image handling, the same for every command that takes images."""
    command.add_argument(
        "--treatment",
        choices=get_args(ImageTreatment),
        default="auto",
        help="auto: tile a lone image, global views for several (AnyRes models); anyres; global",
    )
    command.add_argument(
        "--max-visual-tokens",
        type=int,
        help="lower the tiling, then the videos' content grid, then their frames, until all fits this many tokens",
    )


VIDEO_OPTIONS = ("fps", "num_frames", "max_frames", "content_grid")  # argparse dests, named as the processor's


def _add_video_options(command: argparse.ArgumentParser) -> None:
    """Per-video sampling and tokens, the same for every command that takes videos (and every video)."""
    rate = command.add_mutually_exclusive_group()
    rate.add_argument("--fps", type=float, help="frames per second of video time (default: 1)")
    rate.add_argument("--num-frames", type=int, help="this many frames, spread evenly over the whole video")
    command.add_argument("--max-frames", type=int, help="thin the sampled frames evenly to at most this many")
    command.add_argument(
        "--content-grid",
        type=int,
        help="g: each frame becomes 1 context + g² content tokens (default: the model's, or the largest a budget allows)",
    )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="llava-vid", description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    commands = parser.add_subparsers(dest="command", required=True)

    init = commands.add_parser("init", help="write a model (random or from pretrained parts) and its processor")
    init.add_argument("--config", required=True, help="model preset YAML, e.g. configs/model/tiny.yaml")
    init.add_argument("--out", required=True, help="output folder")
    init.add_argument("--force", action="store_true", help="replace an existing folder")
    init.set_defaults(run=_init)

    generate = commands.add_parser("generate", help="answer a question about images and videos, streaming the answer")
    generate.add_argument("--model", required=True, help="a folder written by `llava-vid init` or training")
    generate.add_argument("--image", action="append", default=[], help="an image file; repeat for several")
    generate.add_argument(
        "--video",
        action="append",
        default=[],
        help="a video file or a folder of frames, shown after the images; repeat for several",
    )
    generate.add_argument("--max-new-tokens", type=int, default=128)
    generate.add_argument("--template", choices=TEMPLATE_NAMES, help="override the processor's template")
    generate.add_argument("--device", help="cpu, cuda, cuda:1 … (default: cuda when available)")
    _add_image_options(generate)
    _add_video_options(generate)
    generate.add_argument("--timestamps", action="store_true", help="write each frame's time as text before it")
    generate.add_argument("question")
    generate.set_defaults(run=_generate)

    inspect = commands.add_parser(
        "inspect", help="show how an image is tiled, or which frames of a video are seen, and the token count"
    )
    inspect.add_argument(
        "source", metavar="IMAGE|VIDEO", help="an image file, a video file or a folder of frames (a video)"
    )
    source = inspect.add_mutually_exclusive_group()
    source.add_argument("--config", help="model preset YAML (default: configs/model/tiny.yaml)")
    source.add_argument("--model", help="a saved model folder (its processor is read)")
    inspect.add_argument("--out", help="PNG to write (default: the file's stem + .inspect.png in the current folder)")
    _add_image_options(inspect)
    _add_video_options(inspect)
    inspect.set_defaults(run=_inspect)

    train = commands.add_parser("train", help="run one training stage (launch with torchrun/deepspeed for several GPUs)")
    train.add_argument("config", help="stage YAML, e.g. configs/train/tiny_stage1.yaml")
    train.add_argument(
        "overrides", nargs="*", metavar="key=value", help="override config keys: max_steps=10 data.0.path=x.json lora.r=16"
    )
    train.set_defaults(run=_train)

    # No options of its own: everything after `world` goes to the generator's parser (see main).
    world = commands.add_parser(
        "world", add_help=False, help="generate the synthetic image/video QA world (`llava-vid world --help`)"
    )
    world.set_defaults(run=_world, takes_extra=True)

    evaluation = commands.add_parser("eval", help="exact-match accuracy per task on a synthetic world's held-out set")
    evaluation.add_argument("--model", required=True, help="a folder written by `llava-vid init` or training")
    evaluation.add_argument("--world", required=True, help="a folder written by `llava-vid world`")
    evaluation.add_argument("--tasks", help="comma-separated task names (default: every task of tasks.json)")
    evaluation.add_argument("--limit", type=int, help="at most this many held-out samples per task")
    evaluation.add_argument("--image-treatment", choices=get_args(ImageTreatment), default="auto")
    evaluation.add_argument("--content-grid", type=int, help="content tokens g × g per frame for every video task (default: the world's)")
    evaluation.add_argument("--batch-size", type=int, default=8)
    evaluation.add_argument("--max-new-tokens", type=int, default=8)
    evaluation.add_argument("--examples", type=_examples_count,
                            help="answers kept per task in eval.json, with their ids: a number or 'all' (default: the first few)")
    evaluation.add_argument("--device", help="cpu, cuda, cuda:1 … (default: cuda when available)")
    evaluation.add_argument("--out", help="folder for eval.json and eval.png (default: MODEL/eval)")
    evaluation.add_argument("--quiet", action="store_true", help="no progress bar")
    evaluation.set_defaults(run=_eval)

    demo = commands.add_parser("demo", help="the embedded demo: train a tiny model on a synthetic world and evaluate it")
    demo.add_argument("--out", help="working folder; finished steps found there are reused (default: runs/demo, runs/demo_smoke)")
    demo.add_argument("--smoke", action="store_true", help="a few samples and steps of every step (minutes)")
    demo.add_argument("--no-deepspeed", action="store_true", help="train with plain PyTorch instead of DeepSpeed ZeRO-2")
    demo.add_argument("--seed", type=int, default=0, help="seed of the world, the tower and both stages (another run of the recipe)")
    demo.set_defaults(run=_demo)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    if getattr(args, "takes_extra", False):
        return args.run(args, extra)
    if extra:
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    try:
        return args.run(args)
    except (ValueError, FileNotFoundError) as error:  # bad input: say what is wrong, no traceback
        print(f"llava-vid {args.command}: error: {error}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
