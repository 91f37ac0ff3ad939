"""Real English prose without a network: the help texts of Python's own documentation (``pydoc_data.topics``).

Every CPython install ships ``pydoc_data.topics`` (the language reference behind ``help("if")``), so the examples
need no download. The text differs a little between Python minor versions; within one version it is fixed, and
the calibration / evaluation split below depends only on each sentence's own text, never on list positions, so a
sentence is on the same side of the split on every version that contains it.

Markup is stripped (``*emphasis*``, footnote marks ``[3]``, list bullets); code blocks, grammar rules and tables are
dropped; what is left is cut into sentences and the sentences are wrapped into text lines of bounded length.
"""

from __future__ import annotations

import re
import textwrap
import zlib
from collections.abc import Callable, Iterable

_SENTENCE_END = re.compile(r"(?<=[.!?])\s+(?=[A-Z])")
_EMPHASIS = re.compile(r"\*{1,2}([^*\s][^*]*?)\*{1,2}")
_FOOTNOTE = re.compile(r"\s*\[\d+\]")
_BULLET = re.compile(r"^\s*(?:[*\-]|\d+\.)\s+")
# A paragraph holding any of these is code, grammar or a table rather than prose.
_NOT_PROSE = re.compile(r"::=|>>>|\.\.\.\s|^\s*[+|]|[{}]|==|\s{2,}\S+\s{2,}", re.MULTILINE)
_HEADING_RULE = re.compile(r"^[*=\-~^]{3,}\s*$")


def _paragraphs(text: str) -> Iterable[str]:
    for block in re.split(r"\n\s*\n", text):
        lines = [line for line in block.splitlines() if line.strip()]
        if not lines or any(_HEADING_RULE.match(line) for line in lines):
            continue  # empty, or a heading with its underline
        first = lines[0]
        indent = len(first) - len(first.lstrip())
        # Code blocks are indented by three or more spaces; list items (indented or not) start with a bullet.
        if indent >= 3 and not _BULLET.match(first):
            continue
        if _NOT_PROSE.search(block):
            continue
        yield " ".join(line.strip() for line in lines)


def _clean(paragraph: str) -> str:
    paragraph = _BULLET.sub("", paragraph)
    paragraph = _EMPHASIS.sub(r"\1", paragraph)
    paragraph = _FOOTNOTE.sub("", paragraph)
    return re.sub(r"\s+", " ", paragraph).strip()


def _is_sentence(sentence: str, min_words: int) -> bool:
    if not (sentence[:1].isupper() and sentence.endswith(".")):
        return False
    if len(sentence.split()) < min_words:
        return False
    letters = sum(ch.isalpha() or ch == " " for ch in sentence)
    return letters >= 0.85 * len(sentence)


def english_sentences(min_words: int = 5, allowed: Callable[[str], bool] | None = None) -> list[str]:
    """Distinct English sentences from Python's documentation, in a fixed order (topics sorted by name).

    ``allowed(ch)`` keeps only sentences whose every character passes (for example: in an OCR model's dictionary).
    Only printable ASCII is kept in any case, so the text is plain English.
    """
    from pydoc_data.topics import topics

    seen: set[str] = set()
    result: list[str] = []
    for name in sorted(topics):
        for paragraph in _paragraphs(topics[name]):
            for sentence in _SENTENCE_END.split(_clean(paragraph)):
                sentence = sentence.strip()
                if sentence in seen or not _is_sentence(sentence, min_words):
                    continue
                if not all(32 <= ord(ch) < 127 for ch in sentence):
                    continue
                if allowed is not None and not all(ch == " " or allowed(ch) for ch in sentence):
                    continue
                seen.add(sentence)
                result.append(sentence)
    return result


def split_of(sentence: str, eval_fraction: float = 0.25) -> str:
    """``"eval"`` or ``"calib"``, decided by a checksum of the sentence itself (stable across Python versions)."""
    return "eval" if zlib.crc32(sentence.encode()) % 1000 < eval_fraction * 1000 else "calib"


def text_lines(sentences: Iterable[str], max_chars: int = 48, min_chars: int = 12) -> list[str]:
    """Wrap sentences into text lines of at most ``max_chars`` characters, as a page of printed text would."""
    lines: list[str] = []
    for sentence in sentences:
        lines.extend(line for line in textwrap.wrap(sentence, max_chars) if len(line) >= min_chars)
    return lines


def calib_eval_lines(
    n_calib: int, n_eval: int, max_chars: int = 48, allowed: Callable[[str], bool] | None = None
) -> tuple[list[str], list[str]]:
    """The first ``n_calib`` calibration lines and ``n_eval`` evaluation lines, from disjoint sets of sentences."""
    sentences = english_sentences(allowed=allowed)
    calib = text_lines((s for s in sentences if split_of(s) == "calib"), max_chars)
    evaluation = text_lines((s for s in sentences if split_of(s) == "eval"), max_chars)
    if len(calib) < n_calib or len(evaluation) < n_eval:
        raise ValueError(
            f"asked for {n_calib} calibration and {n_eval} evaluation lines, the text has {len(calib)} and "
            f"{len(evaluation)}"
        )
    return calib[:n_calib], evaluation[:n_eval]
