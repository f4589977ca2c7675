"""The ``llava-vid`` command line.

    llava-vid init --config configs/model/tiny.yaml --out DIR
    llava-vid generate --model DIR --image PATH "question"
    llava-vid inspect IMAGE [--config PRESET | --model DIR] [--out PNG]
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
from pathlib import Path
from typing import Sequence, get_args

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
    out.parent.mkdir(parents=True, exist_ok=True)
    # Write into a sibling temp folder and rename: a crash never leaves a folder that looks complete.
    staging = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    try:
        model.save_pretrained(staging)
        processor.save_pretrained(staging)
        shutil.copyfile(args.config, staging / "model_preset.yaml")  # the resolved recipe beside the weights
        (staging / COMPLETE_MARKER).write_text("ok\n")
        if out.exists():
            shutil.rmtree(out)
        staging.rename(out)
    finally:
        if staging.exists():
            shutil.rmtree(staging)
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
        max_new_tokens=args.max_new_tokens,
        stream=True,
        image_treatment=args.treatment,
        max_visual_tokens=args.max_visual_tokens,
    )
    return 0


def _inspect(args: argparse.Namespace) -> int:
    from llava_vid.inspect_image import format_report, inspect_image, load_geometry

    geometry, image_processor = load_geometry(args.config, args.model)
    report = inspect_image(
        args.image,
        geometry,
        image_processor,
        treatment=args.treatment,
        max_visual_tokens=args.max_visual_tokens,
        out_path=args.out,
    )
    print(format_report(report))
    return 0


def _add_image_options(command: argparse.ArgumentParser) -> None:
    """Per-request image handling, the same for every command that takes images."""
    command.add_argument(
        "--treatment",
        choices=get_args(ImageTreatment),
        default="auto",
        help="auto: tile a lone image, global views for several (AnyRes models); anyres; global",
    )
    command.add_argument("--max-visual-tokens", type=int, help="lower the tiling until the images fit this many tokens")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="llava-vid", description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    commands = parser.add_subparsers(dest="command", required=True)

    init = commands.add_parser("init", help="write a model (random or from pretrained parts) and its processor")
    init.add_argument("--config", required=True, help="model preset YAML, e.g. configs/model/tiny.yaml")
    init.add_argument("--out", required=True, help="output folder")
    init.add_argument("--force", action="store_true", help="replace an existing folder")
    init.set_defaults(run=_init)

    generate = commands.add_parser("generate", help="answer a question about images, streaming the answer")
    generate.add_argument("--model", required=True, help="a folder written by `llava-vid init` or training")
    generate.add_argument("--image", action="append", default=[], help="an image file; repeat for several")
    generate.add_argument("--max-new-tokens", type=int, default=128)
    generate.add_argument("--template", choices=TEMPLATE_NAMES, help="override the processor's template")
    generate.add_argument("--device", help="cpu, cuda, cuda:1 … (default: cuda when available)")
    _add_image_options(generate)
    generate.add_argument("question")
    generate.set_defaults(run=_generate)

    inspect = commands.add_parser("inspect", help="show how an image is tiled and how many tokens it becomes")
    inspect.add_argument("image", help="an image file")
    source = inspect.add_mutually_exclusive_group()
    source.add_argument("--config", help="model preset YAML (default: configs/model/tiny.yaml)")
    source.add_argument("--model", help="a saved model folder (its processor is read)")
    inspect.add_argument("--out", help="PNG to write (default: IMAGE stem + .inspect.png in the current folder)")
    _add_image_options(inspect)
    inspect.set_defaults(run=_inspect)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.run(args)
    except ValueError as error:  # bad input: say what is wrong, no traceback
        print(f"llava-vid {args.command}: error: {error}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
