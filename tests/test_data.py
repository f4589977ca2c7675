"""The data layer: LLaVA JSON/JSONL → chat messages, safe media paths, lazy dataset, mixing, skips, collator."""

from __future__ import annotations

import copy
import json
import os
from pathlib import Path

import pytest
import torch
from PIL import Image

from llava_vid.data import (
    ConversationDataset,
    DatasetSpec,
    MediaRoots,
    SkipCounter,
    SkippedSample,
    TrainingCollator,
    epoch_plan,
    pop_skipped,
    read_records,
    record_to_conversation,
    resolve_media_path,
)
from llava_vid.processing.processor import IGNORE_INDEX
from llava_vid.testing_media import write_test_video

SRC = Path("/data/train.json")


def _turns(*values: str) -> list[dict]:
    return [{"from": "human" if i % 2 == 0 else "gpt", "value": v} for i, v in enumerate(values)]


@pytest.fixture()
def media(tmp_path: Path) -> dict[str, Path]:
    """Image and video roots with real files, plus a corrupt image."""
    images, videos = tmp_path / "images", tmp_path / "videos"
    images.mkdir()
    videos.mkdir()
    Image.new("RGB", (40, 30), (255, 0, 0)).save(images / "red.png")
    Image.new("RGB", (30, 40), (0, 0, 255)).save(images / "blue.jpg")
    (images / "corrupt.png").write_bytes(b"\x89PNG\r\n\x1a\n this is not an image")
    write_test_video(videos / "clip.mp4", num_frames=8, fps=4)
    return {"images": images, "videos": videos, "root": tmp_path}


def _write(path: Path, records: list[dict]) -> Path:
    if path.suffix == ".jsonl":
        path.write_text("\n".join(json.dumps(r) for r in records) + "\n\n")
    else:
        path.write_text(json.dumps(records))
    return path


GOOD_RECORDS = [
    {"id": "img", "image": "red.png", "conversations": _turns("<image>\nWhat colour?", "Red.")},
    {"id": "text", "conversations": _turns("Say hi.", "Hi.", "Again?", "Hi again.")},
    {"id": "two", "image": ["red.png", "blue.jpg"], "conversations": _turns("Left <image> right <image>\nSame?", "No.")},
]
VIDEO_RECORDS = [{"id": "vid", "video": "clip.mp4", "conversations": _turns("<video>\nWhat happens?", "Squares blink.")}]


# --------------------------------------------------------------------------- files
def test_read_records_json_and_jsonl(tmp_path: Path) -> None:
    assert read_records(_write(tmp_path / "a.json", GOOD_RECORDS)) == GOOD_RECORDS
    assert read_records(_write(tmp_path / "a.jsonl", GOOD_RECORDS)) == GOOD_RECORDS
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps(GOOD_RECORDS[0]) + "\n{not json\n")
    with pytest.raises(ValueError, match=r"bad\.jsonl: line 2"):
        read_records(bad)
    (tmp_path / "obj.json").write_text("{}")
    with pytest.raises(ValueError, match="list of records"):
        read_records(tmp_path / "obj.json")


# --------------------------------------------------------------------------- conversion
def test_placeholders_become_parts_at_their_positions(tmp_path: Path) -> None:
    roots = MediaRoots(tmp_path, tmp_path)
    messages = record_to_conversation(GOOD_RECORDS[2], roots=roots, source_file=SRC, index=0, video_options={})
    red, blue = str(tmp_path / "red.png"), str(tmp_path / "blue.jpg")
    assert messages == [
        {
            "role": "user",
            "content": [
                {"type": "text", "text": "Left "},
                {"type": "image", "path": red},
                {"type": "text", "text": " right "},
                {"type": "image", "path": blue},
                {"type": "text", "text": "Same?"},  # the "\n" after the placeholder is dropped
            ],
        },
        {"role": "assistant", "content": [{"type": "text", "text": "No."}]},
    ]


def test_video_part_carries_options_and_system_turn(tmp_path: Path) -> None:
    record = {
        "video": "clip.mp4",
        "conversations": [{"from": "system", "value": "Be brief."}, *_turns("<video>\nWhat?", "Blinks.")],
    }
    messages = record_to_conversation(
        record, roots=MediaRoots(None, tmp_path), source_file=SRC, index=3, video_options={"fps": 2}
    )
    assert messages[0] == {"role": "system", "content": [{"type": "text", "text": "Be brief."}]}
    assert messages[1]["content"] == [
        {"type": "video", "path": str(tmp_path / "clip.mp4"), "fps": 2},
        {"type": "text", "text": "What?"},
    ]


def test_image_without_placeholder_is_prepended_to_first_human_turn(tmp_path: Path) -> None:
    record = {"image": "red.png", "conversations": _turns("What colour?", "Red.", "Sure?", "Yes.")}
    messages = record_to_conversation(record, roots=MediaRoots(tmp_path, None), source_file=SRC, index=0)
    assert messages[0]["content"] == [{"type": "image", "path": str(tmp_path / "red.png")}, {"type": "text", "text": "What colour?"}]
    assert messages[2]["content"] == [{"type": "text", "text": "Sure?"}]


def test_text_only_record(tmp_path: Path) -> None:
    messages = record_to_conversation(GOOD_RECORDS[1], roots=MediaRoots(), source_file=SRC, index=0)
    assert [m["role"] for m in messages] == ["user", "assistant", "user", "assistant"]
    assert all(part["type"] == "text" for m in messages for part in m["content"])


@pytest.mark.parametrize(
    ("record", "problem"),
    [
        ({"id": "x"}, "'conversations' is missing or empty"),
        ({"conversations": []}, "'conversations' is missing or empty"),
        ({"conversations": [{"from": "human", "value": "q"}, {"from": "bot", "value": "a"}]}, "role 'bot'"),
        ({"conversations": _turns("a", "b")[::-1]}, "'gpt' but 'human' was expected"),
        ({"conversations": [{"from": "human", "value": "q"}, {"from": "human", "value": "q"}]}, "'human' but 'gpt'"),
        ({"conversations": _turns("q", "a", "q2")}, "ends with a 'human' turn"),
        ({"conversations": [{"from": "human"}, {"from": "gpt", "value": "a"}]}, "string 'value'"),
        ({"image": ["red.png", "blue.jpg"], "conversations": _turns("<image> q", "a")}, "1 <image> placeholders but the record has 2"),
        ({"conversations": _turns("<image> q", "a")}, "1 <image> placeholders but the record has 0"),
        ({"video": "clip.mp4", "conversations": _turns("<video><video> q", "a")}, "2 <video> placeholders"),
        ({"image": "red.png", "conversations": _turns("<image> q", "<image> a")}, "holds a media placeholder"),
        ({"image": 3, "conversations": _turns("<image> q", "a")}, "must be a path or a list of paths"),
    ],
)
def test_malformed_records_name_file_and_index(tmp_path: Path, record: dict, problem: str) -> None:
    with pytest.raises(ValueError, match=r"/data/train\.json: record 7") as info:
        record_to_conversation(record, roots=MediaRoots(tmp_path, tmp_path), source_file=SRC, index=7)
    assert problem in str(info.value)


def test_malformed_record_surfaces_at_dataset_construction(tmp_path: Path, tiny_processor) -> None:
    path = _write(tmp_path / "d.jsonl", [*GOOD_RECORDS[1:2], {"conversations": _turns("q")}])
    with pytest.raises(ValueError, match=r"d\.jsonl: record 1"):
        ConversationDataset([DatasetSpec(path)], tiny_processor, template="vicuna_v1")


# --------------------------------------------------------------------------- path safety
def test_relative_and_absolute_paths_inside_root(media) -> None:
    root = media["images"]
    real_root = Path(os.path.realpath(root))
    kwargs = {"kind": "image", "source_file": SRC, "index": 0}
    assert resolve_media_path("red.png", root, **kwargs) == real_root / "red.png"
    assert resolve_media_path(str(root / "red.png"), root, **kwargs) == real_root / "red.png"
    assert resolve_media_path("sub/../red.png", root, **kwargs) == real_root / "red.png"


def test_paths_escaping_the_root_are_refused(media) -> None:
    root = media["images"]
    outside = media["root"] / "secret.png"
    Image.new("RGB", (8, 8)).save(outside)
    (root / "link.png").symlink_to(outside)
    kwargs = {"kind": "image", "source_file": SRC, "index": 5}
    for bad in ("../../etc/passwd", "/etc/passwd", str(outside), "link.png", ".", ""):
        with pytest.raises(ValueError, match=r"/data/train\.json: record 5") as info:
            resolve_media_path(bad, root, **kwargs)
        if bad:
            assert repr(bad) in str(info.value)
            assert bad == "." or "escapes image_root" in str(info.value)


def test_no_root_means_the_dataset_folder(media) -> None:
    dataset_file = media["images"] / "train.json"
    assert resolve_media_path("red.png", None, kind="image", source_file=dataset_file, index=0) == Path(
        os.path.realpath(media["images"] / "red.png")
    )
    with pytest.raises(ValueError, match="escapes the dataset folder"):
        resolve_media_path("../videos/clip.mp4", None, kind="video", source_file=dataset_file, index=0)


def test_escape_in_a_record_names_file_and_index(media) -> None:
    record = {"image": "../../etc/passwd", "conversations": _turns("<image> q", "a")}
    with pytest.raises(ValueError, match=r"record 2: image path '\.\./\.\./etc/passwd' escapes image_root"):
        record_to_conversation(record, roots=MediaRoots(media["images"], None), source_file=SRC, index=2)


# --------------------------------------------------------------------------- dataset
def _dataset(media, tiny_processor, records=GOOD_RECORDS + VIDEO_RECORDS, **kwargs) -> ConversationDataset:
    path = _write(media["root"] / "train.json", records)
    spec = DatasetSpec(path, image_root=media["images"], video_root=media["videos"], video_options={"num_frames": 4})
    return ConversationDataset([spec], tiny_processor, template=kwargs.pop("template", "vicuna_v1"), **kwargs)


def test_dataset_is_lazy(media, tiny_processor, monkeypatch) -> None:
    calls = []
    import llava_vid.processing.processor as processor_module
    import llava_vid.processing.video as video_module

    monkeypatch.setattr(processor_module, "load_image", lambda *a, **k: calls.append(a))
    monkeypatch.setattr(video_module, "load_video", lambda *a, **k: calls.append(a))
    dataset = _dataset(media, tiny_processor)
    assert len(dataset) == 4 and calls == []


def test_getitem_returns_processor_outputs(media, tiny_processor) -> None:
    dataset = _dataset(media, tiny_processor)
    image, text, two, video = (dataset[i] for i in range(4))
    for sample in (image, text, two, video):
        assert not isinstance(sample, SkippedSample)
        assert sample["input_ids"].dim() == 1 and sample["labels"].shape == sample["input_ids"].shape
        assert (sample["labels"] != IGNORE_INDEX).any()
    per_image = tiny_processor.tokens_per_image
    assert image["pixel_values"].shape[0] == 1 and image["image_token_counts"].tolist() == [per_image]
    assert (image["input_ids"] == tiny_processor.image_token_id).sum() == per_image
    assert two["image_sizes"].tolist() == [[30, 40], [40, 30]]  # in placeholder order
    assert "pixel_values" not in text and "pixel_values_videos" not in text
    assert video["video_frames"].tolist() == [4] and video["pixel_values_videos"].shape[0] == 4
    assert (video["input_ids"] == tiny_processor.video_token_id).sum() == video["video_token_counts"].sum()
    # identical to calling the processor directly
    direct = tiny_processor.apply_chat_template(dataset.conversation(0), template="vicuna_v1", tokenize=True, return_dict=True)
    torch.testing.assert_close(direct["input_ids"][0], image["input_ids"])
    torch.testing.assert_close(direct["pixel_values"], image["pixel_values"])


def test_plain_template_stage1(media, tiny_processor) -> None:
    sample = _dataset(media, tiny_processor, records=GOOD_RECORDS[:1], template="plain")[0]
    assert tiny_processor.decode(sample["labels"][sample["labels"] != IGNORE_INDEX]) == "Red.\n"


@pytest.mark.parametrize("image", ["missing.png", "corrupt.png"])
def test_unreadable_image_is_skipped_not_replaced(media, tiny_processor, image: str) -> None:
    records = [{"id": "bad", "image": image, "conversations": _turns("<image>\nq", "a")}]
    sample = _dataset(media, tiny_processor, records=records)[0]
    assert isinstance(sample, SkippedSample)
    assert sample.reason == "unreadable_media" and sample.index == 0
    assert image in sample.detail and "record 0" in sample.detail


def test_corrupt_video_is_skipped(media, tiny_processor) -> None:
    (media["videos"] / "bad.mp4").write_text("not a video")
    records = [{"video": "bad.mp4", "conversations": _turns("<video>\nq", "a")}]
    sample = _dataset(media, tiny_processor, records=records)[0]
    assert isinstance(sample, SkippedSample) and sample.reason == "unreadable_media"


def test_over_long_sample_is_skipped(media, tiny_processor) -> None:
    processor = copy.deepcopy(tiny_processor)
    processor.tokenizer.model_max_length = 20
    dataset = _dataset(media, processor, records=GOOD_RECORDS[:1])
    sample = dataset[0]
    assert isinstance(sample, SkippedSample) and sample.reason == "too_long" and "longer than the maximum" in sample.detail


def test_other_errors_propagate(media, tiny_processor) -> None:
    dataset = _dataset(media, tiny_processor, records=GOOD_RECORDS[:1], max_visual_tokens=1)
    with pytest.raises(ValueError, match="max_visual_tokens=1 is too small"):
        dataset[0]


# --------------------------------------------------------------------------- mixing
def test_mixing_ratios_are_deterministic(tmp_path: Path, tiny_processor) -> None:
    text = GOOD_RECORDS[1]
    a = _write(tmp_path / "a.json", [text] * 10)
    b = _write(tmp_path / "b.jsonl", [text] * 4)
    c = _write(tmp_path / "c.json", [text] * 3)
    specs = [DatasetSpec(a, ratio=0.5), DatasetSpec(b, ratio=2.5), DatasetSpec(c, ratio=0)]
    first = ConversationDataset(specs, tiny_processor, template="vicuna_v1", seed=3)
    again = ConversationDataset(specs, tiny_processor, template="vicuna_v1", seed=3)
    assert first.dataset_counts() == [5, 10, 0] and len(first) == 15
    assert first.pairs == again.pairs
    a_records = [r for d, r in first.pairs if d == 0]
    assert len(set(a_records)) == 5  # without replacement
    b_records = [r for d, r in first.pairs if d == 1]
    assert all(b_records.count(r) in (2, 3) for r in range(4)) and sorted(set(b_records)) == [0, 1, 2, 3]
    others = {tuple(epoch_plan([10, 4], [0.5, 2.5], seed)) for seed in range(10)}
    assert len(others) > 1  # the seed matters


def test_sample_lengths(media, tiny_processor) -> None:
    dataset = _dataset(media, tiny_processor)
    lengths = dataset.sample_lengths()
    assert len(lengths) == len(dataset) == 4
    for i in range(4):
        actual = len(dataset[i]["input_ids"])
        assert lengths[i] == actual  # exact for images, text and videos (no EXIF rotation here)
    # The video's 4 sampled frames are really counted (1 + g² tokens each), not guessed.
    assert lengths[3] - 4 * (1 + tiny_processor.video_content_grid**2) == len(
        dataset.processor.tokenizer(dataset.processor.apply_chat_template(dataset.conversation(3), template="vicuna_v1"))["input_ids"]
    ) - 1


VIDEO_AND_IMAGE = {"image": "red.png", "video": "clip.mp4", "conversations": _turns("<image> <video>\nSame?", "No.")}


@pytest.mark.parametrize(
    ("video_options", "records", "max_visual_tokens"),
    [
        ({"fps": 2}, VIDEO_RECORDS, None),  # 8 frames at 4 fps, sampled at 2 fps: 4 frames
        ({"num_frames": 3, "content_grid": 2}, VIDEO_RECORDS, None),
        ({"fps": 4, "max_frames": 5}, VIDEO_RECORDS, 30),  # budget picks the content grid
        ({"num_frames": 8}, VIDEO_RECORDS, 12),  # 8 frames at g=1 need 16: frames dropped
        ({"num_frames": 2}, [VIDEO_RECORDS[0], VIDEO_RECORDS[0] | {"video": "frames"}], 40),  # a frame folder too
        ({"num_frames": 2}, [VIDEO_AND_IMAGE], None),  # the image becomes a global view beside a video
        ({"num_frames": 2}, [VIDEO_AND_IMAGE], 100),
    ],
)
def test_video_sample_lengths_equal_the_processed_lengths(
    media, tiny_processor, video_options: dict, records: list[dict], max_visual_tokens: int | None
) -> None:
    frames = media["videos"] / "frames"
    frames.mkdir()
    for index in range(5):
        Image.new("RGB", (32, 24), (index * 40, 0, 0)).save(frames / f"frame_{index}.png")
    path = _write(media["root"] / "train.json", records)
    spec = DatasetSpec(path, image_root=media["images"], video_root=media["videos"], video_options=video_options)
    dataset = ConversationDataset([spec], tiny_processor, template="vicuna_v1", max_visual_tokens=max_visual_tokens)
    lengths = dataset.sample_lengths()
    for index, length in enumerate(lengths):
        sample = dataset[index]
        assert not isinstance(sample, SkippedSample), sample
        assert length == len(sample["input_ids"])
        assert length > int(sample["video_token_counts"].sum())  # the visual tokens are in the estimate


def test_video_frame_count_comes_from_the_header_not_decoding(media, tiny_processor, monkeypatch) -> None:
    import llava_vid.processing.video as video_module

    monkeypatch.setattr(video_module, "_decode_file", lambda *a, **k: pytest.fail("decoded frames"))
    monkeypatch.setattr(video_module, "load_video", lambda *a, **k: pytest.fail("loaded the video"))
    dataset = _dataset(media, tiny_processor, records=VIDEO_RECORDS * 3)
    assert dataset.sample_lengths() == [dataset.sample_lengths()[0]] * 3 and dataset.sample_lengths()[0] > 4


def test_unreadable_video_or_plan_failure_length_is_none(media, tiny_processor) -> None:
    (media["videos"] / "bad.mp4").write_text("not a video")
    records = [
        {"video": "bad.mp4", "conversations": _turns("<video>\nq", "a")},
        {"video": "missing.mp4", "conversations": _turns("<video>\nq", "a")},
        *VIDEO_RECORDS,
    ]
    assert _dataset(media, tiny_processor, records=records).sample_lengths()[:2] == [None, None]
    # A budget below one token per sampled frame: the processor refuses it, the estimate is unknown.
    assert _dataset(media, tiny_processor, records=VIDEO_RECORDS, max_visual_tokens=3).sample_lengths() == [None]


def test_sample_modalities(media, tiny_processor) -> None:
    records = GOOD_RECORDS + VIDEO_RECORDS + [VIDEO_AND_IMAGE]
    dataset = _dataset(media, tiny_processor, records=records)
    assert dataset.sample_modalities() == ["image", "text", "multi_image", "video", "video"]


# --------------------------------------------------------------------------- collator
def test_collator_pads_right_and_concatenates_in_order(media, tiny_processor) -> None:
    dataset = _dataset(media, tiny_processor)
    samples = [dataset[i] for i in range(4)]
    skipped = SkippedSample("unreadable_media", "x", 9)
    collator = TrainingCollator(pad_token_id=tiny_processor.tokenizer.pad_token_id or 0)
    batch = collator([samples[0], skipped, samples[1], samples[2], samples[3]])
    assert batch["skipped"] == {"unreadable_media": 1}
    kept = [samples[0], samples[1], samples[2], samples[3]]
    length = max(len(s["input_ids"]) for s in kept)
    assert batch["input_ids"].shape == (4, length)
    for row, sample in enumerate(kept):
        n = len(sample["input_ids"])
        assert torch.equal(batch["input_ids"][row, :n], sample["input_ids"])
        assert (batch["attention_mask"][row, n:] == 0).all() and (batch["attention_mask"][row, :n] == 1).all()
        assert (batch["labels"][row, n:] == IGNORE_INDEX).all()
    torch.testing.assert_close(batch["pixel_values"], torch.cat([samples[0]["pixel_values"], samples[2]["pixel_values"]]))
    assert batch["image_sizes"].tolist() == [[30, 40], [30, 40], [40, 30]]
    assert batch["video_frames"].tolist() == [4]
    assert batch["qformer_input_ids"].shape == samples[3]["qformer_input_ids"].shape


def test_collator_pads_qformer_text_right(tiny_processor) -> None:
    def video_sample(q: int) -> dict:
        return {
            "input_ids": torch.ones(3, dtype=torch.long),
            "attention_mask": torch.ones(3, dtype=torch.long),
            "labels": torch.ones(3, dtype=torch.long),
            "qformer_input_ids": torch.full((1, q), 7),
            "qformer_attention_mask": torch.ones(1, q, dtype=torch.long),
        }

    batch = TrainingCollator(pad_token_id=0)([video_sample(2), video_sample(4)])
    assert batch["qformer_input_ids"].tolist() == [[7, 7, 0, 0], [7, 7, 7, 7]]
    assert batch["qformer_attention_mask"].tolist() == [[1, 1, 0, 0], [1, 1, 1, 1]]


def test_all_skipped_batch_is_marked_empty() -> None:
    batch = TrainingCollator(pad_token_id=0)([SkippedSample("too_long", "x", 0), SkippedSample("too_long", "y", 1)])
    assert batch == {"empty": True, "skipped": {"too_long": 2}}
    counter = SkipCounter()
    counter.update_from_batch(batch)
    assert counter.seen == 2 and counter.total == 2


def test_skip_counter_check() -> None:
    counter = SkipCounter(min_samples=20)
    counter.update({"unreadable_media": 1}, kept=0)
    counter.check(0.05)  # one bad first sample does not stop the run
    counter.update({}, kept=99)
    counter.check(0.05)  # 1 %
    counter.update({"too_long": 4, "unreadable_media": 2}, kept=0)
    assert counter.seen == 106 and counter.total == 7
    with pytest.raises(RuntimeError, match=r"7 of 106 samples .*too_long: 4, unreadable_media: 3"):
        counter.check(0.05)


def test_collator_stops_when_too_many_skips() -> None:
    collator = TrainingCollator(pad_token_id=0, max_skip_fraction=0.1, min_samples=4)
    with pytest.raises(RuntimeError, match="were skipped"):
        collator([SkippedSample("unreadable_media", "x", i) for i in range(4)])


def test_batch_through_the_model_gives_finite_loss(media, tiny_processor, tiny_model) -> None:
    dataset = _dataset(media, tiny_processor)
    collator = TrainingCollator(pad_token_id=tiny_processor.tokenizer.pad_token_id or 0)
    loader = torch.utils.data.DataLoader(dataset, batch_size=4, collate_fn=collator)
    batch = next(iter(loader))
    assert pop_skipped(batch) == {}
    with torch.no_grad():
        output = tiny_model(**batch)
    assert torch.isfinite(output.loss)


def test_worker_processes_load_and_report_skips(media, tiny_processor) -> None:
    records = [*GOOD_RECORDS, {"image": "missing.png", "conversations": _turns("<image>\nq", "a")}]
    dataset = _dataset(media, tiny_processor, records=records)
    collator = TrainingCollator(pad_token_id=0, max_skip_fraction=1.0)
    loader = torch.utils.data.DataLoader(dataset, batch_size=2, collate_fn=collator, num_workers=1)
    counter = SkipCounter(min_samples=1)
    for batch in loader:
        skipped = pop_skipped(batch)
        counter.update_from_batch(batch, skipped)
        assert "skipped" not in batch
    assert counter.seen == 4 and dict(counter.reasons) == {"unreadable_media": 1}
    with pytest.raises(RuntimeError, match="unreadable_media: 1"):
        counter.check(0.2)


def test_anyres_lengths_follow_the_per_request_treatment(media) -> None:
    """Under AnyRes a lone image is tiled, but beside a video it is a global view: the estimate must
    plan it the way the processor does."""
    from llava_vid.build import build_config, build_processor, build_tokenizer, load_model_spec

    spec = load_model_spec(Path(__file__).resolve().parents[1] / "configs/model/tiny_anyres.yaml")
    tokenizer = build_tokenizer(spec.tokenizer)
    processor = build_processor(build_config(spec, tokenizer), tokenizer, spec.template)
    Image.new("RGB", (300, 900), "white").save(media["images"] / "tall.png")
    records = [
        {"image": "tall.png", "conversations": _turns("<image>\nRead.", "Text.")},
        VIDEO_AND_IMAGE | {"image": "tall.png"},
    ]
    dataset = _dataset(media, processor, records=records)
    lengths = dataset.sample_lengths()
    samples = [dataset[0], dataset[1]]
    assert samples[0]["image_grids"].tolist() != [[0, 0]] and samples[1]["image_grids"].tolist() == [[0, 0]]
    assert lengths == [len(sample["input_ids"]) for sample in samples]
