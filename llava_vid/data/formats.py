"""LLaVA's dataset files (JSON / JSONL) → validated chat messages with media paths resolved safely.

A LLaVA record::

    {"id": "000123", "image": "coco/1.jpg" | ["a.jpg", "b.jpg"], "video": "clips/7.mp4",
     "conversations": [{"from": "human", "value": "<image>\\nWhat is this?"},
                       {"from": "gpt", "value": "A cat."}]}

becomes the chat messages the processor reads (:mod:`llava_vid.processing.templates`)::

    [{"role": "user", "content": [{"type": "image", "path": "/data/coco/1.jpg"},
                                  {"type": "text", "text": "What is this?"}]},
     {"role": "assistant", "content": [{"type": "text", "text": "A cat."}]}]

Conventions (LLaVA's, kept so existing data loads unchanged):

* Each ``<image>`` / ``<video>`` in a human turn is replaced, at its position, by the next image /
  video of the record (in order); the single ``\\n`` LLaVA writes right after a placeholder is dropped
  (the template puts its own separator back).
* A record with media but *no* placeholder of that kind gets all of them prepended to the first human
  turn (LLaVA's loader does the same for its single-image records). When placeholders are present their
  number must equal the number of media items.
* Text-only records (no ``image`` / ``video`` key, no placeholder) are valid.
* Media paths are resolved against the configured ``image_root`` / ``video_root``. Without a root, the
  folder holding the dataset file is the root. Either way the resolved *real* path (symlinks followed)
  must lie inside the root: ``../../etc/passwd``, an absolute path elsewhere, or a symlink in the root
  pointing out of it are refused. Files are not opened here (loading is lazy, in the data workers);
  a missing file is found and counted as a skip when the sample is loaded.

Every problem with a record raises ``ValueError`` naming the dataset file and the record index.
"""

from __future__ import annotations

import json
import math
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from llava_vid.processing.templates import VIDEO_OPTION_KEYS
from llava_vid.tokenizer import IMAGE_TOKEN, VIDEO_TOKEN

__all__ = [
    "DatasetSpec",
    "MediaKind",
    "MediaRoots",
    "read_records",
    "record_to_conversation",
    "resolve_media_path",
]

MediaKind = Literal["image", "video"]
_PLACEHOLDERS: dict[MediaKind, str] = {"image": IMAGE_TOKEN, "video": VIDEO_TOKEN}
_PLACEHOLDER_PATTERN = re.compile(f"({re.escape(IMAGE_TOKEN)}|{re.escape(VIDEO_TOKEN)})")
_KIND_OF_PLACEHOLDER = {IMAGE_TOKEN: "image", VIDEO_TOKEN: "video"}
_ROLES = {"human": "user", "gpt": "assistant"}


@dataclass(frozen=True)
class MediaRoots:
    """Folders media paths are resolved against (``None``: the dataset file's folder)."""

    image_root: Path | None = None
    video_root: Path | None = None

    def root(self, kind: MediaKind) -> Path | None:
        return self.image_root if kind == "image" else self.video_root


@dataclass
class DatasetSpec:
    """One dataset of a training mix.

    Attributes:
        path: the ``.json`` (a list of records) or ``.jsonl`` (one record a line) file.
        image_root: folder the records' ``image`` paths are relative to (``None``: the file's folder).
        video_root: folder the records' ``video`` paths are relative to (``None``: the file's folder).
        ratio: how many samples this dataset contributes per epoch, as a multiple of its record count:
            ``round(ratio × len)``; below 1 subsamples without replacement, above 1 repeats every record
            ``⌊ratio⌋`` times plus a subsample for the fraction; 0 leaves it out.
        video_options: per-video sampling options put on every video part (``fps``, ``num_frames``,
            ``max_frames``, ``content_grid``; see :class:`~llava_vid.processing.video.FrameSampling`).
    """

    path: Path
    image_root: Path | None = None
    video_root: Path | None = None
    ratio: float = 1.0
    video_options: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.path = Path(self.path)
        self.image_root = None if self.image_root is None else Path(self.image_root)
        self.video_root = None if self.video_root is None else Path(self.video_root)
        if isinstance(self.ratio, bool) or not isinstance(self.ratio, (int, float)) or not math.isfinite(self.ratio) or self.ratio < 0:
            raise ValueError(f"DatasetSpec({self.path}): ratio must be a finite number >= 0, got {self.ratio!r}")
        unknown = sorted(set(self.video_options) - set(VIDEO_OPTION_KEYS))
        if unknown:
            raise ValueError(
                f"DatasetSpec({self.path}): unknown video_options {unknown}; expected some of {list(VIDEO_OPTION_KEYS)}"
            )

    @property
    def roots(self) -> MediaRoots:
        return MediaRoots(self.image_root, self.video_root)


# ---------------------------------------------------------------------------------------------- paths
def resolve_media_path(
    path: str, root: Path | None, *, kind: MediaKind, source_file: Path, index: int
) -> Path:
    """The real path of a record's media ``path``, refused when it leaves its root.

    Relative paths are joined to ``root``; absolute paths are accepted only when they lie inside it.
    ``root=None`` means the folder of ``source_file``. Symlinks are followed (``os.path.realpath``)
    before the check, so a link inside the root that points elsewhere is refused too. The file's
    existence is *not* checked (that happens lazily, when the sample is loaded).

    Raises:
        ValueError: naming ``source_file``, ``index`` and ``path``.
    """
    where = f"{source_file}: record {index}"
    if not isinstance(path, str) or not path:
        raise ValueError(f"{where}: {kind} path must be a non-empty string, got {path!r}")
    if "\x00" in path:
        raise ValueError(f"{where}: {kind} path {path!r} holds a NUL byte")
    root_name = f"{kind}_root" if root is not None else f"the dataset folder (no {kind}_root configured)"
    base = Path(source_file).parent if root is None else Path(root)
    real_root = os.path.realpath(base)
    real = os.path.realpath(os.path.join(real_root, path))  # join keeps an absolute ``path`` as is
    if os.path.commonpath([real_root, real]) != real_root or real == real_root:
        raise ValueError(f"{where}: {kind} path {path!r} escapes {root_name} {real_root} (resolves to {real})")
    return Path(real)


# ---------------------------------------------------------------------------------------------- files
def read_records(path: str | os.PathLike) -> list[dict]:
    """Records of a ``.json`` file (a list of objects) or a ``.jsonl`` file (one object a line;
    blank lines are skipped). Raises ``ValueError`` naming the file (and line) on malformed input."""
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix not in (".json", ".jsonl"):
        raise ValueError(f"{path}: unsupported dataset format {suffix!r}; expected .json or .jsonl")
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ValueError(f"{path}: cannot read the dataset file ({exc})") from exc
    if suffix == ".json":
        try:
            records = json.loads(text)
        except json.JSONDecodeError as exc:
            raise ValueError(f"{path}: not valid JSON ({exc})") from exc
        if not isinstance(records, list):
            raise ValueError(f"{path}: a .json dataset must hold a list of records, got {type(records).__name__}")
        for index, record in enumerate(records):
            if not isinstance(record, dict):
                raise ValueError(f"{path}: record {index} must be an object, got {type(record).__name__}")
        return records
    records = []
    for line_number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as exc:
            raise ValueError(f"{path}: line {line_number} is not valid JSON ({exc})") from exc
        if not isinstance(record, dict):
            raise ValueError(f"{path}: line {line_number} must be an object, got {type(record).__name__}")
        records.append(record)
    return records


# ---------------------------------------------------------------------------------------------- records
def _media_list(record: dict, key: MediaKind, where: str) -> list[str]:
    value = record.get(key)
    if value is None:
        return []
    items = [value] if isinstance(value, str) else value
    if not isinstance(items, list) or not all(isinstance(item, str) for item in items):
        raise ValueError(f"{where}: {key!r} must be a path or a list of paths, got {value!r}")
    return items


def _split_human(text: str, media: dict[MediaKind, list[dict]], used: dict[MediaKind, int]) -> list[dict]:
    """Cut a human value at its placeholders; each becomes the next media part of its kind."""
    parts: list[dict] = []
    strip_newline = False
    for piece in _PLACEHOLDER_PATTERN.split(text):
        if piece in _KIND_OF_PLACEHOLDER:
            kind = _KIND_OF_PLACEHOLDER[piece]
            parts.append(media[kind][used[kind]])
            used[kind] += 1
            strip_newline = True
            continue
        if strip_newline and piece.startswith("\n"):
            piece = piece[1:]  # LLaVA writes "<image>\n"; the template adds its own separator
        strip_newline = False
        if piece:
            parts.append({"type": "text", "text": piece})
    return parts


def record_to_conversation(
    record: dict,
    *,
    roots: MediaRoots,
    source_file: Path,
    index: int,
    video_options: dict[str, Any] | None = None,
) -> list[dict]:
    """Convert one LLaVA record to chat messages (see the module docstring for the conventions).

    Raises:
        ValueError: naming ``source_file`` and ``index`` — missing/empty ``conversations``, a role other
            than ``human``/``gpt`` (``system`` allowed first), turns not alternating human → gpt, a
            conversation not ending with ``gpt``, placeholders not matching the media, an unsafe path.
    """
    where = f"{source_file}: record {index}"
    if not isinstance(record, dict):
        raise ValueError(f"{where}: must be an object, got {type(record).__name__}")
    turns = record.get("conversations")
    if not isinstance(turns, list) or not turns:
        raise ValueError(f"{where}: 'conversations' is missing or empty")
    for turn_index, turn in enumerate(turns):
        if not isinstance(turn, dict) or not isinstance(turn.get("value"), str):
            raise ValueError(f"{where}: turn {turn_index} must be an object with a string 'value', got {turn!r}")

    messages: list[dict] = []
    body = turns
    if turns[0].get("from") == "system":
        messages.append({"role": "system", "content": [{"type": "text", "text": turns[0]["value"]}]})
        body = turns[1:]
        if not body:
            raise ValueError(f"{where}: the conversation holds only a system turn")
    for offset, turn in enumerate(body):
        turn_index = offset + len(turns) - len(body)
        expected = "human" if offset % 2 == 0 else "gpt"
        role = turn.get("from")
        if role not in _ROLES:
            raise ValueError(f"{where}: turn {turn_index} has role {role!r}; expected 'human' or 'gpt' ('system' only first)")
        if role != expected:
            raise ValueError(
                f"{where}: turn {turn_index} is {role!r} but {expected!r} was expected "
                "(conversations start with 'human' and alternate human/gpt)"
            )
        if role == "gpt" and _PLACEHOLDER_PATTERN.search(turn["value"]):
            raise ValueError(f"{where}: turn {turn_index} ('gpt') holds a media placeholder; only human turns may")
    if body[-1]["from"] != "gpt":
        raise ValueError(f"{where}: the conversation ends with a 'human' turn; it must end with a 'gpt' answer")

    media: dict[MediaKind, list[dict]] = {}
    for kind in ("image", "video"):
        paths = _media_list(record, kind, where)
        resolved = [
            resolve_media_path(p, roots.root(kind), kind=kind, source_file=source_file, index=index) for p in paths
        ]
        if kind == "image":
            media[kind] = [{"type": "image", "path": str(p)} for p in resolved]
        else:
            media[kind] = [{"type": "video", "path": str(p), **(video_options or {})} for p in resolved]

    human_text = "".join(turn["value"] for turn in body if turn["from"] == "human")
    prepend: list[dict] = []
    for kind, placeholder in _PLACEHOLDERS.items():
        count = human_text.count(placeholder)
        if count == 0 and media[kind]:
            prepend += media[kind]  # LLaVA's convention: media without a placeholder go before the first question
        elif count != len(media[kind]):
            raise ValueError(
                f"{where}: the human turns hold {count} {placeholder} placeholders but the record has "
                f"{len(media[kind])} {kind}(s)"
            )

    used: dict[MediaKind, int] = {"image": 0, "video": 0}
    for offset, turn in enumerate(body):
        if turn["from"] == "human":
            parts = _split_human(turn["value"], media, used)
            if offset == 0:
                parts = prepend + parts
            if not parts:
                raise ValueError(f"{where}: turn {offset + len(turns) - len(body)} ('human') is empty")
            messages.append({"role": "user", "content": parts})
        else:
            messages.append({"role": "assistant", "content": [{"type": "text", "text": turn["value"]}]})
    return messages
