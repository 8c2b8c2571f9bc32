"""Keeping a brand's avoided words out of everything it shows: prompts, captions, the end card.

Shared by the prompting stage (prompts and captions) and finishing (end card text, the compliance
report), so both decide "contains an avoided word" the same way: whole words or phrases, any case,
plurals included.
"""

import re
from collections.abc import Iterable, Sequence

#: Characters trimmed from the ends of cleaned text (spaces, punctuation, dashes).
_TRIM = " ,;:-\u2013\u2014"


def avoid_pattern(phrase: str) -> re.Pattern[str]:
    """A whole-word, case-insensitive match for a word or phrase, plurals included."""
    words = [re.escape(w) for w in phrase.split()]
    return re.compile(r"(?<!\w)" + r"\s+".join(words) + r"(?:s|es)?(?!\w)", re.IGNORECASE)


def _tidy(text: str) -> str:
    """Repair the gaps a removal leaves: doubled spaces, orphaned commas, leading punctuation."""
    text = re.sub(r"[ \t]{2,}", " ", text)
    text = re.sub(r"\s+([,.;:!?…])", r"\1", text)
    text = re.sub(r"([,;:])(?:\s*[,;:])+", r"\1", text)
    text = re.sub(r"\(\s*\)|“\s*”|\"\s*\"", "", text)
    return text.strip(_TRIM)


def remove_words(text: str, avoid: Iterable[str]) -> str:
    """``text`` with every avoided word or phrase removed (whole words, any case).

    Repeated until nothing changes, because removing one word can bring two others together into
    an avoided phrase ("free free shipping shipping").
    """
    patterns = [avoid_pattern(w) for w in avoid if w.strip()]
    if not patterns:
        return text
    for _ in range(16):
        before = text
        for pattern in patterns:
            text = pattern.sub(" ", text)
        text = _tidy(text)
        if text == before:
            break
    return text


def has_avoided(text: str, avoid: Sequence[str]) -> bool:
    """Whether ``text`` contains any avoided word or phrase (whole words, any case)."""
    return any(avoid_pattern(w).search(text) for w in avoid if w.strip())


def found(texts: Iterable[str | None], avoid: Sequence[str]) -> list[str]:
    """The avoided words or phrases that occur in any of ``texts`` (in the brand's order)."""
    present = [t for t in texts if t]
    return [w for w in avoid if w.strip() and any(avoid_pattern(w).search(t) for t in present)]
