"""The README's Python examples run as written and print what they say."""

import re
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def test_readme_python_examples_run(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture) -> None:
    blocks = re.findall(r"```python\n(.*?)```", (REPO / "README.md").read_text(), re.S)
    assert blocks, "the README lost its Python example"
    monkeypatch.chdir(REPO)
    namespace = {"__name__": "readme"}
    for block in blocks:  # later examples build on the earlier ones' imports
        exec(compile(block, "README.md", "exec"), namespace)
    printed = capsys.readouterr().out
    assert "' A red circle and a blue square.</s>'" in printed
    # The AnyRes / multi-image example prints what its comments promise.
    assert "[[3, 1]] [76]" in printed and "[17, 17]" in printed and "[[2, 1]] [40]" in printed


def _training_section() -> str:
    text = (REPO / "README.md").read_text()
    start = text.index("## Training on your own data")
    return text[start : text.index("\n## ", start + 1)]


def test_readme_training_walkthrough_runs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys) -> None:
    """The README's custom-data walkthrough, as written: its two JSONL files, then its CPU commands (stage 1
    → stage 2 → generate). DeepSpeed is switched off here (it needs a launcher environment; the same
    stages run under ZeRO-2 in tests/test_train_deepspeed.py)."""
    import json
    import shlex
    import shutil

    from PIL import Image

    from llava_vid.cli import main
    from llava_vid.testing_media import write_test_video

    section = _training_section()
    captions, instructions = re.findall(r"```jsonl\n(.*?)```", section, re.S)
    media = tmp_path / "my_data" / "media"
    media.mkdir(parents=True)
    (tmp_path / "my_data" / "captions.jsonl").write_text(captions)
    (tmp_path / "my_data" / "train.jsonl").write_text(instructions)
    (tmp_path / "configs").symlink_to(REPO / "configs")
    for line in (captions + instructions).splitlines():
        record = json.loads(line)
        for name in [record["image"]] if isinstance(record.get("image"), str) else record.get("image", []):
            if not (media / name).exists():
                shutil.copy(REPO / "examples" / "shapes.png", media / name) if name == "shapes.png" else Image.new(
                    "RGB", (300, 200), (200, 30, 30)
                ).save(media / name)
        if "video" in record and not (media / record["video"]).exists():
            write_test_video(media / record["video"], num_frames=12, fps=4.0, size=(64, 48))

    bash = re.search(r"```bash\n(.*?)```", section, re.S).group(1).replace("\\\n", " ")
    commands = [shlex.split(line) for line in bash.splitlines() if line.startswith("llava-vid ")]
    assert [command[1] for command in commands] == ["train", "train", "generate"]
    monkeypatch.chdir(tmp_path)
    for command in commands:
        arguments = command[1:] + (["deepspeed=null"] if command[1] == "train" else ["--max-new-tokens", "4"])
        assert main(arguments) == 0, command
    out = capsys.readouterr().out
    # Each tiny stage runs 4 steps; with 2 (3) records an epoch is one short step, so 4 epochs: every
    # sample (images, an image pair, a video with two turns) is used, none skipped.
    assert "trained 4 steps: 8 samples seen, 0 skipped (none)" in out
    assert "trained 4 steps: 12 samples seen, 0 skipped (none)" in out
    assert (tmp_path / "runs" / "mine-s1" / "final" / "multimodal.safetensors").exists()
    assert (tmp_path / "runs" / "mine-s2" / "final" / "model.safetensors").exists()
