"""Tests for the offline byte-level BPE tokenizer and the media placeholder tokens."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from transformers import AutoTokenizer, LlamaTokenizer, PreTrainedTokenizerBase, PreTrainedTokenizerFast

from llava_vid.tokenizer import (
    IMAGE_TOKEN,
    SPECIAL_TOKENS,
    SYSTEM_PROMPT,
    VIDEO_TOKEN,
    add_media_tokens,
    build_offline_tokenizer,
)

N_MEDIA = 2  # <image>, <video>

ROUND_TRIP_TEXTS = [
    "",
    " ",
    "hello",
    SYSTEM_PROMPT,
    "USER: <image>\nWhat is in the image? ASSISTANT: A red circle.</s>",
    "  leading and trailing spaces  ",
    "tabs\tand\nnewlines\r\nand   runs   of spaces",
    "héllo wörld, ça va? Ærøskøbing",
    "日本語のテキストと中文",
    "emoji 🤖👍🏽 family 👨‍👩‍👧 flag 🇯🇵",
    "zero\u200bwidth and combining e\u0301",
    "math Ω≈ç√∫ and arrows ←→",
    "control \x00\x01\x7f chars",
    "<not a token> <imag <image <video> </s",
    "a<image>b",
    "answer</s>USER",
    "<s><pad><unk>",
    "1234567890 3.14159 -42 1,000,000 50%",
]


_TOK_CACHE: list[PreTrainedTokenizerFast] = []


def _shared_tok() -> PreTrainedTokenizerFast:
    # hypothesis does not mix with pytest fixtures; build once per session instead.
    if not _TOK_CACHE:
        _TOK_CACHE.append(build_offline_tokenizer())
    return _TOK_CACHE[0]


@pytest.fixture(scope="module")
def tok() -> PreTrainedTokenizerFast:
    return build_offline_tokenizer()


def test_constants() -> None:
    assert IMAGE_TOKEN == "<image>"
    assert VIDEO_TOKEN == "<video>"
    assert SPECIAL_TOKENS == {"bos_token": "<s>", "eos_token": "</s>", "unk_token": "<unk>", "pad_token": "<pad>"}


def test_wrapper_settings(tok: PreTrainedTokenizerFast) -> None:
    assert isinstance(tok, PreTrainedTokenizerFast)
    assert tok.padding_side == "left"
    assert tok.model_max_length == 2048
    assert (tok.bos_token, tok.eos_token, tok.unk_token, tok.pad_token) == ("<s>", "</s>", "<unk>", "<pad>")
    # LLaMA layout for the named specials.
    assert (tok.unk_token_id, tok.bos_token_id, tok.eos_token_id, tok.pad_token_id) == (0, 1, 2, 3)


@pytest.mark.parametrize("text", ROUND_TRIP_TEXTS)
def test_round_trip(tok: PreTrainedTokenizerFast, text: str) -> None:
    ids = tok(text, add_special_tokens=False).input_ids
    assert tok.decode(ids) == text
    if "<unk>" not in text:
        assert tok.unk_token_id not in ids  # byte-level: nothing is ever unknown


@settings(max_examples=200, deadline=None)
@given(text=st.text(max_size=64))
def test_round_trip_any_unicode(text: str) -> None:
    tok = _shared_tok()
    assert tok.decode(tok(text, add_special_tokens=False).input_ids) == text


@pytest.mark.parametrize(
    ("text", "tokens"),
    [
        ("a<image>b", ["a", "<image>", "b"]),
        ("<image><image>", ["<image>", "<image>"]),
        ("x<video>y", ["x", "<video>", "y"]),
        ("<image>\n", ["<image>", "Ċ"]),
    ],
)
def test_media_tokens_never_split(tok: PreTrainedTokenizerFast, text: str, tokens: list[str]) -> None:
    assert tok.tokenize(text) == tokens


def test_specials_single_token_when_glued(tok: PreTrainedTokenizerFast) -> None:
    ids = tok("answer</s>USER", add_special_tokens=False).input_ids
    assert ids.count(tok.eos_token_id) == 1
    assert tok.decode(ids[: ids.index(tok.eos_token_id)]) == "answer"
    assert tok.decode(ids[ids.index(tok.eos_token_id) + 1 :]) == "USER"
    image_id = tok.convert_tokens_to_ids(IMAGE_TOKEN)
    for text in ("a<image>b", "USER: <image>\nhi", "<image>", ".<image>."):
        ids = tok(text, add_special_tokens=False).input_ids
        assert ids.count(image_id) == 1


def test_skip_special_tokens_drops_media(tok: PreTrainedTokenizerFast) -> None:
    ids = tok("USER: <image>\nhi<video></s>").input_ids
    assert tok.decode(ids, skip_special_tokens=True) == "USER: \nhi"
    assert tok.decode(ids) == "<s>USER: <image>\nhi<video></s>"


def test_bos_only_with_add_special_tokens(tok: PreTrainedTokenizerFast) -> None:
    text = "What is in the image?"
    plain = tok(text, add_special_tokens=False).input_ids
    with_specials = tok(text).input_ids
    assert with_specials == [tok.bos_token_id, *plain]
    assert tok.bos_token_id not in plain
    assert tok.eos_token_id not in with_specials  # LLaMA-style: no eos appended
    assert tok.num_special_tokens_to_add() == 1
    assert tok("").input_ids == [tok.bos_token_id]


def _check_offsets(tok: PreTrainedTokenizerFast, text: str) -> None:
    enc = tok(text, return_offsets_mapping=True)
    ids, offsets = enc.input_ids, enc.offset_mapping
    assert ids[0] == tok.bos_token_id and offsets[0] == (0, 0)
    spans = offsets[1:]
    # Contiguous, non-overlapping cover of the text (byte pieces of one character share that character's span).
    distinct = [s for i, s in enumerate(spans) if i == 0 or s != spans[i - 1]]
    assert "".join(text[a:b] for a, b in distinct) == text
    for (a, b), (c, _) in zip(distinct, distinct[1:]):
        assert b == c and a < b
    # A token whose span holds whole characters decodes to exactly that substring (incl. its leading space).
    for token_id, (a, b) in zip(ids[1:], spans):
        if spans.count((a, b)) == 1:
            assert tok.decode([token_id]) == text[a:b]


@pytest.mark.parametrize(
    "text",
    [
        "USER: <image>\nWhat is in the image? ASSISTANT: A red circle.",
        "a<image>b answer</s>USER",
        "  two  spaces\tand tab",
        "héllo 🤖 世界 e\u0301",
    ],
)
def test_offsets_map_to_substrings(tok: PreTrainedTokenizerFast, text: str) -> None:
    _check_offsets(tok, text)


def test_offsets_include_leading_space(tok: PreTrainedTokenizerFast) -> None:
    text = "What is the image"
    enc = tok(text, add_special_tokens=False, return_offsets_mapping=True)
    assert [text[a:b] for a, b in enc.offset_mapping] == ["What", " is", " the", " image"]
    media = "x <image> y"
    enc = tok(media, add_special_tokens=False, return_offsets_mapping=True)
    image_pos = enc.input_ids.index(tok.convert_tokens_to_ids(IMAGE_TOKEN))
    a, b = enc.offset_mapping[image_pos]
    assert media[a:b] == IMAGE_TOKEN


def test_common_words_are_single_tokens(tok: PreTrainedTokenizerFast) -> None:
    for word in ["USER", " ASSISTANT", " image", " video", " the", " red", " circle", " document", " What"]:
        assert len(tok(word, add_special_tokens=False).input_ids) == 1, word
    # The LLaVA system prompt is roughly one token per word, not per byte.
    assert len(tok(SYSTEM_PROMPT, add_special_tokens=False).input_ids) < 40


def test_left_padding_default_and_right_override(tok: PreTrainedTokenizerFast) -> None:
    batch = tok(["hi", "a much longer sentence here"], padding=True)
    short_ids, short_mask = batch.input_ids[0], batch.attention_mask[0]
    n_pad = short_mask.count(0)
    assert n_pad > 0
    assert short_ids[:n_pad] == [tok.pad_token_id] * n_pad and short_mask[:n_pad] == [0] * n_pad
    assert short_ids[n_pad] == tok.bos_token_id
    # Training collators ask for right padding explicitly.
    right = tok(["hi", "a much longer sentence here"], padding=True, padding_side="right")
    assert right.input_ids[0][-n_pad:] == [tok.pad_token_id] * n_pad
    assert right.input_ids[0][0] == tok.bos_token_id


def test_save_and_autotokenizer_round_trip(tok: PreTrainedTokenizerFast, tmp_path: Path) -> None:
    tok.save_pretrained(tmp_path)
    loaded = AutoTokenizer.from_pretrained(tmp_path)
    assert isinstance(loaded, PreTrainedTokenizerBase)
    assert loaded.padding_side == "left"
    assert loaded.model_max_length == 2048
    assert len(loaded) == len(tok)
    assert loaded.get_vocab() == tok.get_vocab()
    assert [str(t) for t in loaded.extra_special_tokens] == [IMAGE_TOKEN, VIDEO_TOKEN]
    image_id = tok.convert_tokens_to_ids(IMAGE_TOKEN)
    assert loaded(IMAGE_TOKEN, add_special_tokens=False).input_ids == [image_id]
    for text in ROUND_TRIP_TEXTS:
        for add in (True, False):
            assert loaded(text, add_special_tokens=add).input_ids == tok(text, add_special_tokens=add).input_ids
    text = "USER: <image>\nhi ASSISTANT: ok</s>"
    ids = loaded(text).input_ids
    assert loaded.decode(ids, skip_special_tokens=True) == "USER: \nhi ASSISTANT: ok"
    offsets = tok(text, return_offsets_mapping=True).offset_mapping
    assert loaded(text, return_offsets_mapping=True).offset_mapping == offsets
    assert add_media_tokens(loaded) == {IMAGE_TOKEN: image_id, VIDEO_TOKEN: tok.convert_tokens_to_ids(VIDEO_TOKEN)}
    assert len(loaded) == len(tok)


def test_deterministic() -> None:
    a, b = build_offline_tokenizer(), build_offline_tokenizer()
    assert a.get_vocab() == b.get_vocab()
    assert a.backend_tokenizer.to_str() == b.backend_tokenizer.to_str()


@pytest.mark.parametrize("vocab_size", [300, 512, 1024, 2048])
def test_vocab_size_respected(vocab_size: int) -> None:
    tok = build_offline_tokenizer(vocab_size=vocab_size)
    assert tok.vocab_size <= vocab_size
    assert len(tok) <= vocab_size + N_MEDIA
    text = "USER: <image>\nDescribe the video 🎬 in détail."
    assert tok.decode(tok(text, add_special_tokens=False).input_ids) == text


def test_vocab_size_too_small_raises() -> None:
    with pytest.raises(ValueError, match="vocab_size"):
        build_offline_tokenizer(vocab_size=100)


def test_custom_corpus() -> None:
    tok = build_offline_tokenizer(vocab_size=400, corpus=["the cat sat on the mat"] * 10)
    assert len(tok("the cat", add_special_tokens=False).input_ids) <= 2
    assert tok.decode(tok("Zebra ü 🐍", add_special_tokens=False).input_ids) == "Zebra ü 🐍"


def test_build_is_fast() -> None:
    start = time.perf_counter()
    build_offline_tokenizer()
    assert time.perf_counter() - start < 5.0


def test_add_media_tokens_idempotent(tok: PreTrainedTokenizerFast) -> None:
    before = len(tok)
    ids = add_media_tokens(tok)
    assert ids == {t: tok.convert_tokens_to_ids(t) for t in (IMAGE_TOKEN, VIDEO_TOKEN)}
    assert add_media_tokens(tok) == ids
    assert len(tok) == before
    assert [str(t) for t in tok.extra_special_tokens] == [IMAGE_TOKEN, VIDEO_TOKEN]
    assert set(ids.values()) <= set(tok.all_special_ids)


def _tiny_llama() -> LlamaTokenizer:
    vocab = {"<unk>": 0, "<s>": 1, "</s>": 2, "▁": 3, "x": 4, "y": 5, "▁x": 6, "▁y": 7}
    return LlamaTokenizer(vocab=vocab, merges=[("▁", "x"), ("▁", "y")], extra_special_tokens=["<|im_start|>"])


def test_add_media_tokens_on_llama_tokenizer() -> None:
    llama = _tiny_llama()
    n = len(llama)
    ids = add_media_tokens(llama)
    assert len(llama) == n + N_MEDIA
    # The tokenizer's own extra specials are kept, not replaced.
    assert [str(t) for t in llama.extra_special_tokens] == ["<|im_start|>", IMAGE_TOKEN, VIDEO_TOKEN]
    enc = llama("x <image> y", add_special_tokens=False).input_ids
    assert enc.count(ids[IMAGE_TOKEN]) == 1
    assert IMAGE_TOKEN not in llama.decode(enc, skip_special_tokens=True)
    assert add_media_tokens(llama) == ids and len(llama) == n + N_MEDIA


def test_add_media_tokens_reuses_existing_plain_token() -> None:
    # Some checkpoints already carry "<image>" as a plain added token: keep its id, just make it special.
    llama = _tiny_llama()
    llama.add_tokens([IMAGE_TOKEN])
    existing = llama.convert_tokens_to_ids(IMAGE_TOKEN)
    ids = add_media_tokens(llama)
    assert ids[IMAGE_TOKEN] == existing
    assert existing in llama.all_special_ids
