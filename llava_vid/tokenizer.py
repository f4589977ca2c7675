"""Offline tokenizer and media placeholder tokens.

Two jobs:

* ``add_media_tokens`` registers the ``<image>`` / ``<video>`` placeholders as extra *special* tokens on any
  transformers tokenizer (our offline one or a real LLaMA one). Special means the tokenizer never splits them,
  even when glued to text (``"a<image>b"``), and ``decode(..., skip_special_tokens=True)`` drops them. Each
  placeholder stands for one image/video; the processor later expands it to the right number of feature slots.
* ``build_offline_tokenizer`` trains a small byte-level BPE on a built-in English corpus so tests, examples and
  tiny models work without a model hub. Byte-level means every unicode string round-trips exactly; the corpus
  makes common prompt words (USER, ASSISTANT, the LLaVA system prompt, shapes, colours, ...) single tokens so
  sequences stay short.

Ids of the named specials in the offline tokenizer follow LLaMA: ``<unk>``=0, ``<s>``=1, ``</s>``=2, then
``<pad>``=3; the media tokens are appended after the trained vocabulary.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator

from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers, processors, trainers
from transformers import PreTrainedTokenizerBase, PreTrainedTokenizerFast

IMAGE_TOKEN = "<image>"
VIDEO_TOKEN = "<video>"
MEDIA_TOKENS: tuple[str, ...] = (IMAGE_TOKEN, VIDEO_TOKEN)

# transformers attribute name -> token string; splat into a tokenizer constructor with ``**SPECIAL_TOKENS``.
SPECIAL_TOKENS: dict[str, str] = {
    "bos_token": "<s>",
    "eos_token": "</s>",
    "unk_token": "<unk>",
    "pad_token": "<pad>",
}
# Training order fixes the ids (LLaMA layout: unk 0, bos 1, eos 2; pad is extra so it comes last).
_TRAIN_SPECIALS: tuple[str, ...] = (
    SPECIAL_TOKENS["unk_token"],
    SPECIAL_TOKENS["bos_token"],
    SPECIAL_TOKENS["eos_token"],
    SPECIAL_TOKENS["pad_token"],
)

SYSTEM_PROMPT = (
    "A chat between a curious human and an artificial intelligence assistant. "
    "The assistant gives helpful, detailed, and polite answers to the human's questions."
)

# 256 byte symbols + the named specials: the smallest vocabulary that can still encode every string.
_MIN_VOCAB_SIZE = 256 + len(_TRAIN_SPECIALS)


def _builtin_corpus() -> Iterator[str]:
    """Yield a few hundred deterministic English sentences covering the words our prompts use.

    Generated from small word lists (no randomness) so two builds see the same text in the same order, which
    keeps the trained vocabulary identical.
    """
    colours = ["red", "green", "blue", "yellow", "black", "white", "orange", "purple", "pink", "brown", "gray"]
    shapes = ["circle", "square", "triangle", "rectangle", "star", "line", "box", "dot", "arrow", "cube"]
    places = ["top left", "top right", "bottom left", "bottom right", "center", "middle", "left side", "right side"]
    documents = ["document", "page", "table", "chart", "receipt", "invoice", "form", "letter", "report", "slide"]
    actions = ["walking", "running", "talking", "cooking", "driving", "reading", "writing", "playing", "sitting"]
    subjects = ["man", "woman", "child", "dog", "cat", "person", "people", "car", "bird", "group of friends"]
    questions = [
        "What is in the image?",
        "What colour is the {s}?",
        "How many {s}s are there?",
        "Where is the {c} {s}?",
        "What happens in the video?",
        "What is the {s} doing?",
        "Can you describe the picture in detail?",
        "What does the {d} say?",
        "Which object is on the {p}?",
        "Is there a {c} {s} in the frame?",
        "When does the {a} start?",
        "Why is the {subj} {a}?",
    ]
    yield SYSTEM_PROMPT
    yield "USER: <image>\nWhat is shown here? ASSISTANT: A picture."
    yield "0 1 2 3 4 5 6 7 8 9 10 11 12 100 256 1024 3.14 -7 +42 1,000 50% 2024-01-31 12:30"
    yield "Punctuation: . , ; : ! ? ' \" ( ) [ ] { } < > / \\ | - _ = + * & ^ % $ # @ ~ `"
    for i, colour in enumerate(colours):
        for j, shape in enumerate(shapes):
            place = places[(i + j) % len(places)]
            count = (i * 3 + j) % 9 + 1
            yield f"There is a {colour} {shape} in the {place} of the image."
            yield f"The image shows {count} {colour} {shape}s on a {colours[(i + 1) % len(colours)]} background."
            if (i + j) % 3 == 0:
                yield f"USER: How many {shape}s are there? ASSISTANT: There are {count} {shape}s."
    for i, doc in enumerate(documents):
        yield f"The {doc} has a title, {i + 2} paragraphs and a table with {i + 3} rows."
        yield f"This {doc} is dated {i + 1}/{i + 10}/20{i + 10} and the total is ${(i + 1) * 12}.{i}0."
        yield f"USER: Read the text in the {doc}. ASSISTANT: The {doc} says: \"Hello, world!\""
    for i, subj in enumerate(subjects):
        act = actions[i % len(actions)]
        yield f"In the video, a {subj} is {act} from second {i} to second {i + 5}."
        yield f"At the beginning of the video the {subj} is {act}; at the end the {subj} stops."
        yield f"USER: <video>\nWhat is the {subj} doing? ASSISTANT: The {subj} is {act}."
    for i, template in enumerate(questions):
        for k in range(4):
            s = shapes[(i + k) % len(shapes)]
            c = colours[(i * 2 + k) % len(colours)]
            q = template.format(
                s=s, c=c, d=documents[(i + k) % len(documents)], p=places[k % len(places)],
                a=actions[(i + k) % len(actions)], subj=subjects[(i + k) % len(subjects)],
            )  # fmt: skip
            yield f"{SYSTEM_PROMPT} USER: {q} ASSISTANT: The answer is {c}, and it is near the {s}.</s>"
    # General conversational English so everyday words in questions and answers are not split into bytes.
    general = [
        "Yes. No. Maybe. I don't know. It's a photo of a cat, isn't it? The assistant answers politely.",
        "Describe the scene, the objects, their colors, sizes and positions, and the text in the image.",
        "Please answer the question with a single word or phrase.",
        "Answer the question using a short sentence, then explain your reasoning step by step.",
        "The first frame is dark, the second frame is bright, and the last frame shows the sky.",
        "Look at the picture carefully and tell me what you see, including any people or animals.",
        "The weather is sunny today, so the children are playing outside in the park.",
        "She opened the door, turned on the light and sat down at the table to read a book.",
        "He said that the train would arrive at the station before noon, but it was late.",
        "This is a close-up photo of a small house with a large window and a wooden roof.",
        "The chart compares the number of sales in each month of the year.",
        "Summarize the main points of the video in three sentences.",
        "Which of the following options is correct? (A) one (B) two (C) three (D) four",
        "The answer is (B), because the second option matches the picture.",
        "First, find the object. Second, count it. Finally, write the number.",
        "They were happy to see the old friends again after a long time.",
        "Could you tell me more about the background, the lighting and the camera angle?",
        "There are no people in this image; it is an empty street at night.",
        "The text on the sign reads \"Stop\" in large white letters.",
        "I think the object is a book, but it could also be a small box.",
    ]
    for k in range(3):  # repeated so their word pieces clear min_frequency
        yield from general


def build_offline_tokenizer(vocab_size: int = 1024, corpus: Iterable[str] | None = None) -> PreTrainedTokenizerFast:
    """Train a deterministic byte-level BPE offline and wrap it as a transformers fast tokenizer.

    Args:
        vocab_size: Size of the trained vocabulary, including the 256 byte symbols and the four named specials
            (``<unk> <s> </s> <pad>``). The media tokens added afterwards come on top (``len(tok) ==
            vocab_size + 2`` at most).
        corpus: Training sentences; defaults to the built-in English corpus.

    Returns:
        A ``PreTrainedTokenizerFast`` that prepends ``<s>`` when ``add_special_tokens=True`` (no ``</s>``, like
        LLaMA), pads on the left (what batched decoder-only generation needs; training collators should pass
        ``padding_side="right"`` explicitly or pad themselves), and has ``<image>``/``<video>`` registered.
        The bos rule lives in the backend post-processor (saved in tokenizer.json); transformers 5 does not
        persist ``add_bos_token``, so that flag reads False here. Use ``num_special_tokens_to_add()`` instead.
    """
    if vocab_size < _MIN_VOCAB_SIZE:
        raise ValueError(f"vocab_size={vocab_size} is too small; need at least {_MIN_VOCAB_SIZE} (bytes + specials)")
    texts = list(_builtin_corpus() if corpus is None else corpus)

    backend = Tokenizer(models.BPE(unk_token=SPECIAL_TOKENS["unk_token"]))
    # No normalizer: any normalisation would break exact round trips.
    # add_prefix_space=False so "Hello" and the start of a prompt keep their exact bytes.
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        min_frequency=2,  # a pair seen once is noise, not a "common word"
        special_tokens=list(_TRAIN_SPECIALS),
        # Seed all 256 bytes so text the corpus never saw (emoji, CJK, ...) still encodes without <unk>.
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    backend.train_from_iterator(texts, trainer=trainer)

    bos = SPECIAL_TOKENS["bos_token"]
    bos_id = backend.token_to_id(bos)
    backend.post_processor = processors.Sequence(
        [
            # trim_offsets=False: a token's offsets include its leading space byte, so text[start:end] is
            # exactly what the token decodes to.
            processors.ByteLevel(trim_offsets=False),
            processors.TemplateProcessing(
                single=f"{bos}:0 $A:0", pair=f"{bos}:0 $A:0 {bos}:1 $B:1", special_tokens=[(bos, bos_id)]
            ),
        ]
    )

    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=backend,
        **SPECIAL_TOKENS,
        padding_side="left",
        model_max_length=2048,
        clean_up_tokenization_spaces=False,  # cleanup would rewrite " ," to "," and break round trips
    )
    add_media_tokens(tokenizer)
    return tokenizer


def add_media_tokens(tokenizer: PreTrainedTokenizerBase) -> dict[str, int]:
    """Register ``<image>`` and ``<video>`` as extra special tokens; idempotent.

    Works on any transformers 5 tokenizer (the offline one, a LLaMA tokenizer, a checkpoint that already has
    ``<image>`` as a plain added token). Existing extra special tokens are kept and existing ids are reused, so
    calling this twice or on a tokenizer that already knows the tokens changes nothing. Remember to resize the
    LM's embeddings to ``len(tokenizer)`` when this added new ids.

    Returns:
        ``{"<image>": id, "<video>": id}``.
    """
    registered = {str(t) for t in tokenizer.extra_special_tokens}
    missing = [
        # normalized=False: match the raw text, so a lowercasing/prefix-space normalizer cannot hide the token.
        AddedToken(t, special=True, normalized=False, lstrip=False, rstrip=False, single_word=False)
        for t in MEDIA_TOKENS
        if t not in registered
    ]
    if missing:
        # transformers 5 renamed additional_special_tokens -> extra_special_tokens; replace=False keeps the
        # tokenizer's own extras (e.g. chat markers) instead of overwriting the list.
        tokenizer.add_special_tokens({"extra_special_tokens": missing}, replace_extra_special_tokens=False)

    ids = {t: tokenizer.convert_tokens_to_ids(t) for t in MEDIA_TOKENS}
    unk_id = tokenizer.unk_token_id
    for token, token_id in ids.items():
        if token_id is None or (unk_id is not None and token_id == unk_id):
            raise RuntimeError(f"{token!r} was not added to {type(tokenizer).__name__}")
    return ids
