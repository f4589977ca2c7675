"""The synthetic world generator: loadable LLaVA records, decodable media, determinism, disjoint
splits, balanced answers, option validation, vision-pretraining pairs."""

from __future__ import annotations

import hashlib
import json
from collections import Counter
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from llava_vid.data.formats import MediaRoots, read_records, record_to_conversation
from llava_vid.data.synthetic import (
    COLOURS,
    COUNT_WORDS,
    ORDINALS,
    QA_TASKS,
    SHAPES,
    SYMBOLS,
    TASKS,
    VISION_GROUPS,
    WORDS,
    WorldOptions,
    generate_world,
    main,
    render_contact_sheet,
)
from llava_vid.processing.video import FrameSampling, load_video

SMALL = WorldOptions(
    seed=7,
    train_counts={task: 8 for task in QA_TASKS},
    heldout_counts={task: 6 for task in QA_TASKS},
    caption_images=10,
    caption_videos=4,
    caption_views=6,
    caption_mix_ratio=0.5,
    video_frames=8,
    video_fps=4.0,
    long_video_frames=40,
    long_video_fps=1.0,
    vision_pairs=48,
    vision_heldout_pairs=24,
    workers=1,
)


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory):
    return generate_world(tmp_path_factory.mktemp("world") / "w", SMALL, progress=False)


def _all_files(root: Path) -> dict[str, bytes]:
    return {str(path.relative_to(root)): path.read_bytes() for path in sorted(root.rglob("*")) if path.is_file()}


def _jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


def _media_paths(jsonl: Path) -> list[Path]:
    paths = []
    records = _jsonl(jsonl) if jsonl.name == "vision_pairs.jsonl" else read_records(jsonl)
    for record in records:
        for key in ("image", "video"):
            value = record.get(key)
            if value is not None:
                paths += [jsonl.parent / item for item in ([value] if isinstance(value, str) else value)]
    return paths


def test_layout_and_counts(world) -> None:
    root = world.root
    assert {"captions.jsonl", "train.jsonl", "tasks.json", "world.json", "heldout", "media"} <= {p.name for p in root.iterdir()}
    assert len(read_records(world.captions_file)) == SMALL.caption_images + SMALL.caption_videos + SMALL.caption_views
    train_tasks = Counter(record["task"] for record in read_records(world.train_file))
    assert {task: train_tasks[task] for task in QA_TASKS} == dict(SMALL.train_counts)
    assert train_tasks["caption"] == 10  # half of the 20 caption records
    for task in QA_TASKS:
        assert len(read_records(world.heldout_files[task])) == SMALL.heldout_counts[task]
    tasks = json.loads(world.tasks_file.read_text())
    assert set(tasks) == set(QA_TASKS)
    assert tasks["compare_colour"]["answers"] == ["yes", "no"] and tasks["compare_colour"]["chance"] == 0.5
    assert "first/second" not in world.summary_table() and "needle" in world.summary_table()


def test_records_convert_and_media_exist(world) -> None:
    files = [world.captions_file, world.train_file, *world.heldout_files.values()]
    for path in files:
        for index, record in enumerate(read_records(path)):
            messages = record_to_conversation(record, roots=MediaRoots(), source_file=path, index=index)
            assert messages[-1]["role"] == "assistant"
            media = [part for part in messages[0]["content"] if part["type"] in ("image", "video")]
            assert media and all(Path(part["path"]).is_file() for part in media)
            if record["task"] != "caption":
                spec = TASKS[record["task"]]
                answer = messages[1]["content"][0]["text"]  # the first turn's; follow-ups may come after
                assert answer == record["answer"] and answer in spec.answers
                assert all(len(message["content"][0]["text"].split()) <= 2 for message in messages[1::2])


def test_records_load_through_the_dataset(world, tiny_processor) -> None:
    from llava_vid.data import ConversationDataset, DatasetSpec, SkippedSample

    spec = DatasetSpec(world.train_file, video_options=SMALL.train_video_options)
    dataset = ConversationDataset([spec], tiny_processor, template="vicuna_v1")
    tasks_seen = set()
    records = read_records(world.train_file)
    for index in range(len(dataset)):
        sample = dataset[index]
        assert not isinstance(sample, SkippedSample), sample
        tasks_seen.add(records[dataset.pairs[index][1]]["task"])
    assert set(QA_TASKS) <= tasks_seen


def test_videos_decode_with_expected_frames(world) -> None:
    for task in ("video_colour", "video_order"):
        for path in _media_paths(world.heldout_files[task]):
            clip = load_video(path, FrameSampling(fps=SMALL.video_fps))
            assert clip.total_frames == SMALL.video_frames and len(clip.frames) == SMALL.video_frames
            assert clip.frames.shape[1:] == (SMALL.video_size, SMALL.video_size, 3)
    for path in _media_paths(world.heldout_files["needle"]):
        clip = load_video(path, FrameSampling(fps=SMALL.long_video_fps))
        assert len(clip.frames) == SMALL.long_video_frames


def _frame_change(frames: np.ndarray) -> np.ndarray:
    """(T,) mean absolute difference of each frame to its neighbours (the background drifts slowly,
    so only a frame that differs from both sides stands out)."""
    frames = frames.astype(np.float32)
    padded = np.concatenate([frames[1:2], frames, frames[-2:-1]])  # reflect at both ends
    neighbours = (padded[:-2] + padded[2:]) / 2
    return np.abs(frames - neighbours).mean(axis=(1, 2, 3))


def test_needle_is_where_claimed(world) -> None:
    path = world.heldout_files["needle"]
    for record in read_records(path):
        clip = load_video(path.parent / record["video"], FrameSampling(fps=SMALL.long_video_fps))
        change = _frame_change(clip.frames)
        assert int(np.argmax(change)) == record["needle_frame"]
        # The neighbours see half the needle through their own neighbour average; leave them out.
        near = [record["needle_frame"] + offset for offset in (-1, 0, 1) if 0 <= record["needle_frame"] + offset < len(change)]
        others = np.delete(change, near)
        assert change[record["needle_frame"]] > 5 * others.max()


def test_train_needles_vary_in_length_heldout_ones_do_not(world) -> None:
    """Train needle videos run from needle_train_shortest × long_video_frames to long_video_frames (the
    needle inside); every held-out one is long_video_frames long."""
    shortest = round(SMALL.needle_train_shortest * SMALL.long_video_frames)
    records = [record for record in read_records(world.train_file) if record["task"] == "needle"]
    lengths = []
    for record in records:
        clip = load_video(world.root / record["video"], FrameSampling(fps=SMALL.long_video_fps))
        assert shortest <= len(clip.frames) <= SMALL.long_video_frames
        assert 0 <= record["needle_frame"] < len(clip.frames)
        lengths.append(len(clip.frames))
    assert len(set(lengths)) > 1
    heldout = world.heldout_files["needle"]
    for record in read_records(heldout):
        assert load_video(heldout.parent / record["video"], FrameSampling(fps=SMALL.long_video_fps)).total_frames == SMALL.long_video_frames


def test_motion_goes_the_claimed_way(world) -> None:
    path = world.heldout_files["video_motion"]
    for record in read_records(path):
        frames = load_video(path.parent / record["video"], FrameSampling(fps=SMALL.video_fps)).frames
        masks = [_saturated(frame) for frame in frames]
        columns = [np.nonzero(mask)[1].mean() for mask in masks if mask.sum() > 20]
        assert len(columns) >= len(frames) * 3 // 4  # visible from the first quarter on
        columns = [columns[0], columns[-1]]
        assert ("right" if columns[1] > columns[0] else "left") == record["answer"]


def test_compare_count_has_a_unique_winner_among_three(world) -> None:
    # Always three images: with pairs too, "how many images" would give part of the answer away.
    for record in read_records(world.heldout_files["compare_count"]):
        counts = record["counts"]
        assert len(counts) == len(record["image"]) == 3 and counts.count(max(counts)) == 1
        assert ["first", "second", "third"][counts.index(max(counts))] == record["answer"]


def _pixels(path: Path) -> np.ndarray:
    return np.asarray(Image.open(path).convert("RGB"))


def _saturated(pixels: np.ndarray) -> np.ndarray:
    """``(H, W, 3)`` → ``(H, W)`` bool: the shapes' pixels (the background is grey, every shape colour
    saturated)."""
    pixels = pixels.astype(np.int32)
    return pixels.max(axis=2) - pixels.min(axis=2) > 60


def _blob_count(mask: np.ndarray) -> int:
    """4-connected components of ``mask`` (flood fill; the images are 56 px)."""
    seen, blobs = np.zeros_like(mask), 0
    for start in zip(*np.nonzero(mask)):
        if seen[start]:
            continue
        blobs, stack = blobs + 1, [start]
        seen[start] = True
        while stack:
            row, column = stack.pop()
            for r, c in ((row + 1, column), (row - 1, column), (row, column + 1), (row, column - 1)):
                if 0 <= r < mask.shape[0] and 0 <= c < mask.shape[1] and mask[r, c] and not seen[r, c]:
                    seen[r, c] = True
                    stack.append((r, c))
    return blobs


def test_pick_count_answers_for_the_named_image(world) -> None:
    path = world.heldout_files["pick_count"]
    for record in read_records(path):
        asked = ["first", "second", "third"].index(record["asked"])
        assert f"in the {record['asked']} image?" in record["conversations"][0]["value"]
        assert len(record["image"]) == 3
        circles = [_blob_count(_saturated(_pixels(path.parent / image))) for image in record["image"]]
        assert circles == record["counts"]
        assert ["one", "two", "three", "four"][circles[asked] - 1] == record["answer"]


def test_pick_colour_answers_for_the_named_image(world) -> None:
    path = world.heldout_files["pick_colour"]
    for record in read_records(path):
        asked = ["first", "second"].index(record["asked"])
        assert f"in the {record['asked']} image?" in record["conversations"][0]["value"]
        for image, colour in zip(record["image"], record["colours"]):
            pixels = _pixels(path.parent / image)
            shape = pixels[_saturated(pixels)]  # (n, 3) the shape's pixels
            assert len(shape) > 20 and (shape == COLOURS[colour]).all(axis=1).mean() > 0.9
        assert record["colours"][asked] == record["answer"]


def test_multi_image_prompts_name_each_image_as_the_questions_do(world) -> None:
    # "the second image" in a question, "Second image: <image>" before that image's tokens.
    for task in ("compare_count", "compare_colour", "pick_count", "pick_colour"):
        for record in read_records(world.heldout_files[task]) + [r for r in read_records(world.train_file) if r["task"] == task]:
            labels = "".join(f"{ordinal.capitalize()} image: <image>\n" for ordinal in ORDINALS[: len(record["image"])])
            assert record["conversations"][0]["value"] == labels + TASKS[task].question.format(image=record.get("asked")), record["id"]


def _follow_ups(record: dict) -> dict[str, str]:
    """question → answer of every turn after the first (follow-ups carry no media placeholder)."""
    values = [turn["value"] for turn in record["conversations"][2:]]
    assert not any("<image>" in value or "<video>" in value for value in values)
    return dict(zip(values[::2], values[1::2]))


def _nearest_colour(pixels: np.ndarray) -> str:
    """The named colour nearest to the mean of ``(n, 3)`` pixels."""
    mean = pixels.reshape(-1, 3).mean(axis=0)
    return min(COLOURS, key=lambda name: float(np.abs(mean - np.array(COLOURS[name])).sum()))


def test_train_multi_image_records_follow_up_with_each_image(world) -> None:
    """After its own question a train record asks what else its images answer, checked on the pixels:
    each image's circle count after "which has the most", each shape's colour after "same colour"."""
    pick_count, pick_colour = TASKS["pick_count"].question, TASKS["pick_colour"].question
    seen = Counter()
    for record in read_records(world.train_file):
        task, follow_ups = record["task"], _follow_ups(record)
        if task in ("compare_count", "pick_count"):
            circles = [_blob_count(_saturated(_pixels(world.root / image))) for image in record["image"]]
            expected = {pick_count.format(image=o): COUNT_WORDS[c - 1] for o, c in zip(ORDINALS, circles) if o != record.get("asked")}
            if task == "pick_count" and circles.count(max(circles)) == 1:
                expected[TASKS["compare_count"].question] = ORDINALS[circles.index(max(circles))]
        elif task in ("compare_colour", "pick_colour"):
            colours = [_nearest_colour(_pixels(world.root / image)[_saturated(_pixels(world.root / image))]) for image in record["image"]]
            expected = {pick_colour.format(image=o): c for o, c in zip(ORDINALS, colours) if o != record.get("asked")}
            if task == "pick_colour":
                expected[TASKS["compare_colour"].question] = "yes" if colours[0] == colours[1] else "no"
        else:
            continue
        assert follow_ups == expected, record["id"]
        seen[task] += 1
    assert set(seen) == {"compare_count", "pick_count", "compare_colour", "pick_colour"}


def test_train_video_records_follow_up_with_what_else_they_show(world) -> None:
    """A short single-shape video is also asked its other attributes (the colour checked on the pixels),
    the order video which shape came last, the needle video its symbol's colour (on the needle frame)."""
    shape_question, colour_question = TASKS["video_shape"].question, TASKS["video_colour"].question
    expected_questions = {
        "video_colour": {shape_question},
        "video_shape": {colour_question},
        "video_motion": {shape_question, colour_question},
        "video_order": {"Which shape appeared last? Answer with one word."},
        "needle": {"What colour was the symbol? Answer with one word."},
    }
    for record in read_records(world.train_file):
        task = record["task"]
        if task not in expected_questions:
            continue
        follow_ups = _follow_ups(record)
        assert set(follow_ups) == expected_questions[task], record["id"]
        if task == "needle":
            frames = load_video(world.root / record["video"], FrameSampling(fps=SMALL.long_video_fps)).frames
            needle = frames[record["needle_frame"]].astype(np.int32)
            other = frames[record["needle_frame"] - 1 if record["needle_frame"] else 1].astype(np.int32)
            symbol = needle[np.abs(needle - other).sum(axis=2) > 90]  # (n, 3) where the symbol is
            assert follow_ups["What colour was the symbol? Answer with one word."] == record["colour"] == _nearest_colour(symbol)
            continue
        frames = load_video(world.root / record["video"], FrameSampling(fps=SMALL.video_fps)).frames
        if task == "video_order":
            assert follow_ups.popitem()[1] in set(SHAPES) - {record["answer"]}
            continue
        colour = follow_ups.get(colour_question, record["answer"])
        assert _nearest_colour(frames[-1][_saturated(frames[-1])]) == colour, record["id"]
        assert follow_ups.get(shape_question, record["answer"]) in SHAPES


def test_follow_ups_only_add_turns(world, tmp_path: Path) -> None:
    """Without follow-ups the train records are the same records cut to their first turn, the media the
    same files; held-out records never have follow-ups."""
    without = generate_world(tmp_path / "without", replace(SMALL, follow_ups=False, vision_pairs=0, vision_heldout_pairs=0), progress=False)
    records, single = read_records(world.train_file), read_records(without.train_file)
    assert [{**record, "conversations": record["conversations"][:2]} for record in records] == single
    assert sum(len(record["conversations"]) > 2 for record in records) > len(records) // 2
    media = {path.relative_to(world.root): path.read_bytes() for path in _media_paths(world.train_file)}
    assert media == {path.relative_to(without.root): path.read_bytes() for path in _media_paths(without.train_file)}
    for task in QA_TASKS:
        assert without.heldout_files[task].read_bytes() == world.heldout_files[task].read_bytes()
        assert all(len(record["conversations"]) == 2 for record in read_records(world.heldout_files[task]))


def test_document_word_page_size(world) -> None:
    for path in _media_paths(world.heldout_files["document_word"]):
        image = Image.open(path)
        assert image.size == (SMALL.page_size, SMALL.page_size)
        assert np.asarray(image.convert("L")).min() == 0  # the word is drawn in pure black


def test_same_seed_gives_identical_files(world, tmp_path: Path) -> None:
    # Two workers render in another order than the fixture's one: the output must not change.
    again = generate_world(tmp_path / "again", replace(SMALL, workers=2), progress=False)
    first, second = _all_files(world.root), _all_files(again.root)
    assert first.keys() == second.keys()
    assert [name for name in first if first[name] != second[name]] == []


def test_other_seed_gives_other_data(world, tmp_path: Path) -> None:
    other = generate_world(tmp_path / "other", replace(SMALL, seed=8), progress=False)
    assert other.train_file.read_bytes() != world.train_file.read_bytes()


def _pixel_hash(path: Path) -> str:
    if path.suffix == ".png":
        return hashlib.sha256(np.asarray(Image.open(path).convert("RGB")).tobytes()).hexdigest()
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_heldout_media_unseen_in_train(world) -> None:
    train_files = (world.train_file, world.captions_file, world.vision_pairs_file)
    train = {_pixel_hash(path) for jsonl in train_files for path in _media_paths(jsonl)}
    heldout = [path for jsonl in (*world.heldout_files.values(), world.vision_heldout_file) for path in _media_paths(jsonl)]
    assert heldout and all(path.is_relative_to(world.root / "heldout") for path in heldout)
    assert not train.intersection(_pixel_hash(path) for path in heldout)
    train_ids = {record["id"] for record in read_records(world.train_file)}
    heldout_ids = {record["id"] for jsonl in world.heldout_files.values() for record in read_records(jsonl)}
    assert not train_ids & heldout_ids


def test_caption_views_name_what_the_shape_captions_do_not(world) -> None:
    """The last ``caption_views`` captions are one 56 px view each of a needle symbol, circles or a word
    tile, in equal shares, captioned as the vision pairs are."""
    captions = read_records(world.captions_file)
    scenes, views = captions[: SMALL.caption_images + SMALL.caption_videos], captions[-SMALL.caption_views :]
    assert not any(record["answer"].startswith(("the word", "a star", "an arrow")) for record in scenes)
    kinds = Counter()
    for record in views:
        caption = record["answer"]
        if caption.startswith("the word "):
            kinds["word"] += 1
            assert caption.removeprefix("the word ") in WORDS
        elif caption.split()[-1] in ("circle", "circles"):
            kinds["count"] += 1
            assert caption.split()[0] in COUNT_WORDS
        else:
            kinds["symbol"] += 1
            assert caption.split()[-1] in SYMBOLS
        assert isinstance(record["image"], str) and (world.root / record["image"]).is_file()
        with Image.open(world.root / record["image"]) as image:
            assert image.size == (SMALL.image_size, SMALL.image_size)
    assert kinds == Counter(symbol=2, count=2, word=2)


def test_answers_are_balanced(tmp_path: Path) -> None:
    counts = {task: 0 for task in QA_TASKS} | {"compare_colour": 20, "compare_count": 13, "video_motion": 7}
    options = replace(SMALL, train_counts=counts, heldout_counts={task: 0 for task in QA_TASKS}, caption_images=1, caption_videos=0)
    manifest = generate_world(tmp_path / "w", options, progress=False)
    by_task: dict[str, Counter] = {}
    for record in read_records(manifest.train_file):
        by_task.setdefault(record["task"], Counter())[record["answer"]] += 1
    assert by_task["compare_colour"] == Counter(yes=10, no=10)
    assert sorted(by_task["compare_count"].values()) == [4, 4, 5]
    assert sorted(by_task["video_motion"].values()) == [3, 4]


def test_answers_stay_balanced_over_every_turn(tmp_path: Path) -> None:
    """Follow-ups ask other tasks' questions; over every turn of the train file (first questions and
    follow-ups alike) a yes/no question still gets each answer about as often: a follow-up whose answer
    is "no" five times in six would teach its task that prior."""
    counts = {task: 0 for task in QA_TASKS} | {"compare_colour": 40, "pick_colour": 40}
    options = replace(SMALL, train_counts=counts, heldout_counts={task: 0 for task in QA_TASKS}, caption_images=1, caption_videos=0)
    manifest = generate_world(tmp_path / "w", options, progress=False)
    same_colour = Counter()
    for record in read_records(manifest.train_file):
        turns = record["conversations"]
        for question, answer in zip(turns[::2], turns[1::2]):
            if question["value"].endswith(TASKS["compare_colour"].question):
                same_colour[answer["value"]] += 1
    assert sum(same_colour.values()) >= 40
    assert 0.4 <= same_colour["yes"] / sum(same_colour.values()) <= 0.6, same_colour


@pytest.mark.parametrize(
    ("change", "name"),
    [
        ({"caption_images": -1}, "caption_images"),
        ({"video_size": 57}, "video_size"),
        ({"page_size": 20}, "page_size"),
        ({"caption_mix_ratio": 1.5}, "caption_mix_ratio"),
        ({"video_fps": 0.0}, "video_fps"),
        ({"needle_span": 0}, "needle_span"),
        ({"long_video_frames": 3, "needle_span": 5}, "long_video_frames"),
        ({"needle_train_shortest": 0.0}, "needle_train_shortest"),
        ({"needle_train_shortest": 1.5}, "needle_train_shortest"),
        ({"train_counts": {"video_colour": 3}}, "train_counts"),
        ({"heldout_counts": {task: -2 for task in QA_TASKS}}, "heldout_counts"),
        ({"seed": True}, "seed"),
        ({"vision_pairs": -1}, "vision_pairs"),
        ({"caption_views": -3}, "caption_views"),
        ({"vision_heldout_pairs": 1.5}, "vision_heldout_pairs"),
        ({"page_size": 150}, "page_size"),  # vision pairs need a page of at least 3 × 3 tiles
        ({"follow_ups": "no"}, "follow_ups"),
    ],
)
def test_invalid_options_name_the_option(change: dict, name: str) -> None:
    with pytest.raises(ValueError, match=name):
        replace(SMALL, **change)


def test_refuses_a_foreign_non_empty_folder(tmp_path: Path) -> None:
    (tmp_path / "keep.txt").write_text("mine")
    with pytest.raises(FileExistsError):
        generate_world(tmp_path, SMALL, progress=False)
    with pytest.raises(FileExistsError):
        generate_world(tmp_path, SMALL, progress=False, overwrite=True)
    assert (tmp_path / "keep.txt").read_text() == "mine"


def test_main_prints_a_summary_and_a_contact_sheet(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    sheet = tmp_path / "sheet.png"
    argv = ["--out", str(tmp_path / "w"), "--train-count", "2", "--heldout-count", "2", "--heldout-count", "needle=1",
            "--caption-images", "3", "--caption-videos", "1", "--long-video-frames", "20", "--workers", "1",
            "--quiet", "--contact-sheet", str(sheet)]
    assert main(argv) == 0
    output = capsys.readouterr().out
    assert "document_word" in output and "total" in output
    assert len(read_records(tmp_path / "w" / "heldout" / "needle.jsonl")) == 1
    assert Image.open(sheet).size[0] > 100
    assert json.loads((tmp_path / "w" / "world.json").read_text())["options"]["follow_ups"] is True
    assert main(["--out", str(tmp_path / "w1"), "--train-count", "1", "--heldout-count", "0", "--caption-images", "0",
                 "--caption-videos", "0", "--vision-pairs", "0", "--vision-heldout-pairs", "0", "--long-video-frames", "20",
                 "--workers", "1", "--quiet", "--no-follow-ups"]) == 0
    capsys.readouterr()
    assert all(len(record["conversations"]) == 2 for record in read_records(tmp_path / "w1" / "train.jsonl"))
    assert main(["--out", str(tmp_path / "bad"), "--video-size", "31"]) == 2
    assert "video_size" in capsys.readouterr().err


def test_contact_sheet_from_a_world(world, tmp_path: Path) -> None:
    path = render_contact_sheet(world.root, tmp_path / "sheet.png")
    assert Image.open(path).size[1] > 9 * 56


# ------------------------------------------------------------------------------------------ vision pairs
def _expected_caption(record: dict) -> str:
    labels = record["labels"]
    article = {"orange": "an", "arrow": "an"}
    if record["group"] == "shape":
        return f"{article.get(labels['colour'], 'a')} {labels['colour']} {labels['shape']} {labels['position']}"
    if record["group"] == "symbol":
        return f"{article.get(labels['symbol'], 'a')} {labels['symbol']}"
    if record["group"] == "count":
        return f"{labels['count']} circle" + ("" if labels["count"] == "one" else "s")
    if record["group"] == "word":
        return f"the word {labels['word']}"
    return {"empty": "an empty frame", "blank": "a blank page"}[record["group"]]


def test_vision_pairs_cover_every_group_at_view_size(world) -> None:
    train, heldout = _jsonl(world.vision_pairs_file), _jsonl(world.vision_heldout_file)
    assert len(train) == SMALL.vision_pairs and len(heldout) == SMALL.vision_heldout_pairs
    assert world.counts["vision_pairs"] == {"train": SMALL.vision_pairs, "heldout": SMALL.vision_heldout_pairs}
    assert world.vision_heldout_file.parent == world.root / "heldout"
    groups = Counter(record["group"] for record in train)
    assert set(groups) == set(VISION_GROUPS)
    assert groups["shape"] > groups["word"] > groups["count"] > groups["empty"]  # the hard groups get the most pairs
    values = {"colour": set(COLOURS), "shape": set(SHAPES), "symbol": set(SYMBOLS), "word": set(WORDS),
              "count": {"one", "two", "three", "four"}, "empty": {"empty"}, "blank": {"blank"},
              "position": {"on the left", "in the middle", "on the right"}}
    for records, jsonl in ((train, world.vision_pairs_file), (heldout, world.vision_heldout_file)):
        for record in records:
            assert record["caption"] == _expected_caption(record)
            assert all(value in values[attribute] for attribute, value in record["labels"].items())
            image = Image.open(jsonl.parent / record["image"])
            assert image.size == (SMALL.image_size, SMALL.image_size) and image.mode == "RGB"


def test_shape_pairs_say_which_third_the_shape_is_in(world) -> None:
    """The caption's position is the third of the width holding the shape's centre (its coloured pixels)."""
    seen = set()
    for jsonl in (world.vision_pairs_file, world.vision_heldout_file):
        for record in _jsonl(jsonl):
            if record["group"] != "shape":
                continue
            pixels = np.asarray(Image.open(jsonl.parent / record["image"])).astype(int)
            columns = np.nonzero((pixels.max(axis=2) - pixels.min(axis=2) > 60).any(axis=0))[0]  # saturated: the shape
            centre = (columns.min() + columns.max() + 1) / 2 / SMALL.image_size
            expected = "on the left" if centre < 1 / 3 else "on the right" if centre > 2 / 3 else "in the middle"
            if min(abs(centre - 1 / 3), abs(centre - 2 / 3)) > 0.03:  # a pixel of rounding either side of a boundary
                assert record["labels"]["position"] == expected, (record["id"], centre)
            seen.add(record["labels"]["position"])
    assert len(seen) == 3


def test_vision_page_tiles_hold_the_word_or_nothing(world) -> None:
    """Word tiles carry at least half of the word's pure black glyphs (the tile holding its centre: some
    words are cut by the tile edge, as a third of document_word's are); blank tiles only paper and grey
    marks (never black)."""
    def black_columns(pixels: np.ndarray) -> np.ndarray:
        return np.nonzero((pixels == 0).any(axis=0))[0]

    page_widths = [np.ptp(black_columns(np.asarray(Image.open(path).convert("L")))) + 1 for path in _media_paths(world.heldout_files["document_word"])]
    seen = Counter()
    for jsonl in (world.vision_pairs_file, world.vision_heldout_file):
        for record in _jsonl(jsonl):
            if record["group"] not in ("word", "blank"):
                continue
            pixels = np.asarray(Image.open(jsonl.parent / record["image"]).convert("L"))
            assert np.median(pixels) >= 220  # light paper
            if record["group"] == "word":
                columns = np.nonzero((pixels == 0).any(axis=0))[0]
                rows = np.nonzero((pixels == 0).any(axis=1))[0]
                assert len(columns) and np.ptp(columns) + 1 >= min(page_widths) // 2 - 1
                edge = pixels.shape[0] - 1
                if min(columns.min(), rows.min()) == 0 or max(columns.max(), rows.max()) == edge:
                    seen["cut word"] += 1
            else:
                assert not (pixels == 0).any()
            seen[record["group"]] += 1
    assert seen["word"] and seen["blank"] and seen["cut word"]


def test_vision_pairs_do_not_change_the_qa_data(world, tmp_path: Path) -> None:
    without = generate_world(tmp_path / "without", replace(SMALL, vision_pairs=0, vision_heldout_pairs=0), progress=False)
    assert without.train_file.read_bytes() == world.train_file.read_bytes()
    for task in QA_TASKS:
        assert without.heldout_files[task].read_bytes() == world.heldout_files[task].read_bytes()
    assert without.vision_pairs_file.read_text() == ""
