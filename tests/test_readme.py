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
