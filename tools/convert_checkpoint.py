"""Convert a LLaVA checkpoint into a llava_vid checkpoint directory.

    python tools/convert_checkpoint.py --from llava-hf path/to/llava-1.5-7b-hf out/llava-vid-7b
    python tools/convert_checkpoint.py --from llava-next-hf path/to/llava-v1.6-vicuna-7b-hf out/llava-vid-next-7b
    python tools/convert_checkpoint.py --from llava path/to/llava-v1.5-7b out/llava-vid-7b \\
        --vision-tower path/to/clip-vit-large-patch14-336 [--projector path/to/mm_projector.bin]

The output loads with ``AutoModelForImageTextToText.from_pretrained(DST)`` and ``AutoProcessor.from_pretrained(DST)``
after ``import llava_vid``.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from llava_vid.convert import convert_llava, convert_llava_hf, convert_llava_next_hf, save_converted

# Sources that are a single transformers checkpoint directory (no --vision-tower / --projector).
HF_CONVERTERS = {"llava-hf": convert_llava_hf, "llava-next-hf": convert_llava_next_hf}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument(
        "--from",
        dest="source",
        required=True,
        choices=(*HF_CONVERTERS, "llava"),
        help="llava-hf: transformers LlavaForConditionalGeneration; llava-next-hf: transformers "
        "LlavaNextForConditionalGeneration; llava: original haotian-liu/LLaVA checkpoint",
    )
    parser.add_argument("src", type=Path, help="source checkpoint directory")
    parser.add_argument("dst", type=Path, help="output directory")
    parser.add_argument(
        "--vision-tower", help="(--from llava) CLIP checkpoint overriding the config's mm_vision_tower"
    )
    parser.add_argument("--projector", type=Path, help="(--from llava) stage-1 mm_projector.bin")
    args = parser.parse_args(argv)
    if args.source in HF_CONVERTERS and (args.vision_tower or args.projector):
        parser.error("--vision-tower and --projector only apply to --from llava")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        if args.source in HF_CONVERTERS:
            model, processor = HF_CONVERTERS[args.source](args.src)
        else:
            model, processor = convert_llava(args.src, vision_tower=args.vision_tower, projector=args.projector)
    except (ValueError, OSError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    written = save_converted(model, processor, args.dst)
    config = model.config
    print(
        f"converted {args.source} checkpoint {args.src}: projector={config.projector_type} "
        f"vision_feature_layer={config.vision_feature_layer} vision_feature_select={config.vision_feature_select} "
        f"image_aspect_mode={config.image_aspect_mode} image_merge={config.image_merge} "
        f"image_token_id={config.image_token_id} vocab_size={config.text_config.vocab_size} dtype={model.dtype}"
    )
    print(f"wrote {len(written)} files to {args.dst}:")
    for path in written:
        print(f"  {path.name}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
