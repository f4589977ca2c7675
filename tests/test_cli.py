"""The `llava-vid` command: init writes a loadable model atomically; generate streams an answer or
fails with a message naming the problem."""

from pathlib import Path

import pytest

from llava_vid.cli import COMPLETE_MARKER, main

REPO = Path(__file__).resolve().parents[1]
TINY = str(REPO / "configs" / "model" / "tiny.yaml")
IMAGE = str(REPO / "examples" / "shapes.png")


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("cli") / "tiny"
    assert main(["init", "--config", TINY, "--out", str(out)]) == 0
    return out


def test_init_writes_a_complete_model_folder(model_dir: Path) -> None:
    names = {p.name for p in model_dir.iterdir()}
    assert {"config.json", "model.safetensors", "processor_config.json", "tokenizer.json", "model_preset.yaml"} <= names
    assert (model_dir / COMPLETE_MARKER).exists()
    assert not [p for p in model_dir.parent.iterdir() if p.name.startswith(".tiny.")], "staging folder left behind"


def test_init_keeps_an_existing_model_and_refuses_a_foreign_folder(model_dir: Path, tmp_path: Path) -> None:
    before = (model_dir / "model.safetensors").stat().st_mtime_ns
    assert main(["init", "--config", TINY, "--out", str(model_dir)]) == 0
    assert (model_dir / "model.safetensors").stat().st_mtime_ns == before
    foreign = tmp_path / "half_written"
    foreign.mkdir()
    (foreign / "config.json").write_text("{}")  # looks like a model, but has no completion marker
    with pytest.raises(SystemExit, match="not an initialised model folder"):
        main(["init", "--config", TINY, "--out", str(foreign)])


def test_generate_streams_an_answer(model_dir: Path, capsys: pytest.CaptureFixture) -> None:
    code = main(["generate", "--model", str(model_dir), "--image", IMAGE, "--max-new-tokens", "6", "What is this?"])
    assert code == 0
    assert capsys.readouterr().out.strip(), "nothing was printed"


def test_generate_names_a_missing_image(model_dir: Path, capsys: pytest.CaptureFixture) -> None:
    missing = str(REPO / "examples" / "no_such_image.png")
    assert main(["generate", "--model", str(model_dir), "--image", missing, "What is this?"]) == 2
    err = capsys.readouterr().err
    assert missing in err and "not found" in err


def test_generate_and_eval_name_a_model_folder_that_is_not_one(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    missing = tmp_path / "runs" / "no_such_model"  # reads like a hub id "runs/no_such_model" too
    assert main(["generate", "--model", str(missing), "--image", IMAGE, "What is this?"]) == 2
    err = capsys.readouterr().err
    assert f"{missing}: no such folder" in err and "huggingface" not in err
    empty = tmp_path / "empty"
    empty.mkdir()
    assert main(["eval", "--model", str(empty), "--world", str(tmp_path)]) == 2
    assert f"{empty} holds no saved model (no config.json" in capsys.readouterr().err


def test_generate_refuses_a_prompt_the_model_cannot_hold(model_dir: Path, capsys: pytest.CaptureFixture) -> None:
    code = main(["generate", "--model", str(model_dir), "--image", IMAGE, "--max-new-tokens", "9000", "Hi"])
    assert code == 2
    err = capsys.readouterr().err
    assert "8192" in err and "max_position_embeddings" in err


def test_generate_refuses_an_overlong_prompt(model_dir: Path, capsys: pytest.CaptureFixture) -> None:
    question = "describe " * 10000  # far past the tokenizer's 8192-token maximum
    assert main(["generate", "--model", str(model_dir), "--image", IMAGE, question]) == 2
    err = capsys.readouterr().err
    assert "8192" in err and "not truncated" in err


def test_generate_takes_several_images_and_a_token_budget(model_dir: Path, capsys: pytest.CaptureFixture) -> None:
    args = ["generate", "--model", str(model_dir), "--image", IMAGE, "--image", IMAGE, "--max-new-tokens", "3"]
    assert main([*args, "Same picture?"]) == 0
    assert capsys.readouterr().out.strip()
    # Two global views need 2 × 16 tokens on the tiny model: a budget of 20 is refused with the numbers.
    assert main([*args, "--max-visual-tokens", "20", "Same picture?"]) == 2
    assert "max_visual_tokens=20 is too small for 2 images" in capsys.readouterr().err
