"""Scoring closed-set answers: exact match after a light, documented normalisation.

The rule (:func:`normalize_answer`), applied to the prediction and the reference alike:

1. Unicode NFKC, then case-folding ("Red" → "red", full-width letters → ASCII);
2. every punctuation character (Unicode category ``P*``) becomes a space ("red." → "red",
   "left/right" → "left right");
3. runs of whitespace collapse to one space, and the ends are stripped.

Nothing else: no article or filler-word removal, no synonyms, no "answer contains the reference".
"The first." normalises to "the first", which does *not* match "first" — a model that pads its
answer is scored as wrong, so the number reported is an honest exact-match accuracy.
"""

from __future__ import annotations

import unicodedata
from collections.abc import Sequence

__all__ = ["accuracy", "is_exact_match", "normalize_answer"]


def normalize_answer(text: str) -> str:
    """``text`` lower-cased, punctuation turned into spaces, whitespace collapsed (see the module docstring)."""
    folded = unicodedata.normalize("NFKC", text).casefold()
    # Punctuation → space (not deletion), so "left,right" stays two words rather than "leftright".
    spaced = "".join(" " if unicodedata.category(character).startswith("P") else character for character in folded)
    return " ".join(spaced.split())


def is_exact_match(prediction: str, reference: str) -> bool:
    """Whether the two answers are equal after :func:`normalize_answer`."""
    return normalize_answer(prediction) == normalize_answer(reference)


def accuracy(predictions: Sequence[str], references: Sequence[str]) -> float:
    """Share of exact matches; raises ``ValueError`` on unequal lengths or no samples (0/0 is not 0 %)."""
    if len(predictions) != len(references):
        raise ValueError(f"got {len(predictions)} predictions for {len(references)} references")
    if not references:
        raise ValueError("no samples to score")
    return sum(is_exact_match(p, r) for p, r in zip(predictions, references)) / len(references)
