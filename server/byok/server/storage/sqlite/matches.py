"""Where a query's phrases occur in a message, for SQLite search: relevance and snippets.

Relevance is BM25 over a bounded window of the newest matches.

FTS5's own `bm25()` needs each phrase's document frequency, and it gets it by counting
every row that matches the phrase (`xQueryPhrase` over the whole doclist) once per query.
That pass is O(all matches): ~30 ms for a word in half of 1M messages, ~70 ms for a
phrase of two such words, whatever window is ranked. Python's `sqlite3` cannot register
an FTS5 auxiliary function, so the window is scored here instead, with FTS5's formula
and parameters (k1 1.2, b 0.75; the title weighs 0.3 of the message text) and:

- term frequencies counted in the window's own text, folded the way the index's
  `unicode61 remove_diacritics 2` tokenizer folds it;
- document lengths and the average length read from the index's own statistics
  (`messages_fts_docsize`, the averages record);
- each phrase's document frequency bounded too. A word's (or prefix's) matches are
  counted exactly up to `DF_EXACT_LIMIT` and, beyond that, extrapolated from how densely
  the newest matches occur: that reads at most that many entries of one doclist. A
  phrase of several words costs more per match (FTS5 walks every word's positions), and
  a rare phrase of common words would mean reading those words' whole doclists, so its
  frequency is sampled over the newest `PHRASE_SAMPLE_ROWS` messages. The IDF of a term
  in half the corpus hardly changes with its exact count, so a bounded count is enough
  to weigh the terms of a query against each other. A one-term query needs no count at
  all: its IDF scales every score alike, so the window's own density stands in for it.

Snippets are cut here too, from the text the page already holds, in FTS5's `snippet()`
shape (16 tokens, matches in [brackets], … where text was left out): asking FTS5 for them
means evaluating the query again for every row of the page.

Matching stays FTS5's: this module only orders and marks what `MATCH` found. Query operators are
read loosely here (words, "phrases", prefix*, NEAR groups, column filters); a term it
misreads only loses weight, it never adds or drops a hit.
"""

from __future__ import annotations

import bisect
import functools
import math
import re
import unicodedata
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

K1 = 1.2
B = 0.75
TITLE_WEIGHT = 0.3
DF_EXACT_LIMIT = 2_000  # matches of a word counted before extrapolating
PHRASE_SAMPLE_ROWS = 20_000  # newest messages a phrase's frequency is sampled over

_QUERY_PART = re.compile(
    r'(?P<phrase>"(?P<body>[^"]*)"(?P<pstar>\*)?)'
    r"|(?P<column>(?:\{[^}]*\}|\w+)\s*:)"
    r"|(?P<word>[^\W_]+)(?P<wstar>\*)?"
)
_OPERATORS = {"AND", "OR", "NOT", "NEAR"}
_NEAR_DISTANCE = re.compile(r",\s*\d+\s*\)")
# A token as unicode61 sees one: letters and digits (Python's \w also takes "_").
_LETTER = r"[^\W_]"
_WORD = re.compile(_LETTER + "+")


@dataclass(frozen=True, slots=True)
class Phrase:
    """Folded tokens in order; `prefix` when the last one ends with `*`."""

    tokens: tuple[str, ...]
    prefix: bool = False

    def fts_query(self) -> str:
        """The phrase alone, as an FTS5 query (its tokens are plain words)."""
        return '"' + " ".join(self.tokens) + '"' + ("*" if self.prefix else "")


@functools.lru_cache(maxsize=256)
def pattern_of(phrase: Phrase) -> re.Pattern[str]:
    """Finds the phrase in folded text, token boundaries included.

    The first token comes first, so the regex engine can scan for it as a literal; the
    boundary before it is a lookbehind of its fixed length (8x faster than a leading
    `\\b` here).
    """
    first, *rest = phrase.tokens
    head = re.escape(first) + rf"(?<!{_LETTER}[\s\S]{{{len(first)}}})"
    tail = _LETTER + "*" if phrase.prefix else f"(?!{_LETTER})"
    gap = r"(?:[\W_])+"
    return re.compile(gap.join([head, *(re.escape(t) for t in rest)]) + tail)


def fold(text: str) -> str:
    """Lower case without diacritics, as the index's tokenizer sees the text."""
    text = text.lower()
    if text.isascii():
        return text
    decomposed = unicodedata.normalize("NFKD", text)
    return "".join(ch for ch in decomposed if not unicodedata.combining(ch))


def phrases(query: str) -> list[Phrase]:
    """The distinct positive phrases of an FTS5 query (operands of NOT are left out)."""
    found: list[Phrase] = []
    negate = False
    for part in _QUERY_PART.finditer(_NEAR_DISTANCE.sub(")", query)):
        if part["column"]:
            continue
        if part["word"] and part["word"] in _OPERATORS:
            negate = part["word"] == "NOT"
            continue
        if part["phrase"]:
            tokens = tuple(_WORD.findall(fold(part["body"])))
            phrase = Phrase(tokens, bool(part["pstar"])) if tokens else None
        else:
            phrase = Phrase((fold(part["word"]),), bool(part["wstar"]))
        if phrase is not None and not negate and phrase not in found:
            found.append(phrase)
        negate = False
    return found


_PLAIN_QUERY = re.compile(r'(?:\s*(?:"[^"]*"\*?|[^\W_]+\*?))+\s*')


def plain_phrases(query: str) -> list[Phrase] | None:
    """The phrases of a query made only of words, "phrases" and prefix* terms (all of
    which a match must contain), or None for anything with operators or columns."""
    if not _PLAIN_QUERY.fullmatch(query):
        return None
    if any(w in _OPERATORS for w in re.findall(r"\b[A-Z]+\b", query)):
        return None
    return phrases(query)


def contains_all(content: str, title: str, query_phrases: Sequence[Phrase]) -> bool:
    """Whether every phrase occurs in the text or the title (FTS5's implicit AND)."""
    text, heading = fold(content), fold(title)
    return all(
        (pattern := pattern_of(p)).search(text) or pattern.search(heading) for p in query_phrases
    )


def varints(blob: bytes) -> list[int]:
    """SQLite varints (FTS5's docsize and averages records are lists of them)."""
    values: list[int] = []
    value = 0
    length = 0
    for byte in blob:
        length += 1
        if length == 9:
            values.append((value << 8) | byte)
            value = length = 0
        elif byte & 0x80:
            value = (value << 7) | (byte & 0x7F)
        else:
            values.append((value << 7) | byte)
            value = length = 0
    return values


def estimated_df(
    counted: int,
    oldest_counted: int | None,
    newest: int,
    rows: int,
    limit: int = DF_EXACT_LIMIT,
) -> float:
    """Matches of a phrase in `rows` documents, from its newest `counted` (up to `limit`).

    Fewer than the limit: that is the exact count. At the limit, the matches seen span
    rowids `oldest_counted..newest`, and the rest of the index is assumed to hold the
    phrase as densely.
    """
    if counted < limit or oldest_counted is None:
        return float(counted)
    span = max(newest - oldest_counted + 1, counted)
    return min(float(rows), counted * rows / span)


def sampled_df(counted: int, rows: int) -> float:
    """Matches of a phrase in `rows` documents, from `counted` in the newest sample.

    A phrase not seen in the sample counts as half a match there: rare, not absent.
    """
    sample = min(PHRASE_SAMPLE_ROWS, rows)
    if rows <= sample:
        return float(counted)
    return min(float(rows), max(counted, 0.5) * rows / sample)


def idf(df: float, rows: int) -> float:
    """FTS5's IDF, floored the same way (a word in over half the rows still counts)."""
    value = math.log((rows - df + 0.5) / (df + 0.5))
    return value if value > 0 else 1e-6


def row_length(docsize: bytes | None) -> int:
    """Tokens in a row, all columns, from its FTS5 docsize record."""
    if not docsize:
        return 0
    if len(docsize) == 2:  # the usual case: both column sizes under 128 tokens
        return docsize[0] + docsize[1]
    return sum(varints(docsize))


# (seq, content, title, docsize record): what the window query returns per match.
Candidate = tuple[int, str, str, bytes | None]


def rank(
    candidates: Iterable[Candidate],
    query_phrases: Sequence[Phrase],
    dfs: Sequence[float],
    rows: int,
    average_length: float,
) -> list[tuple[int, float]]:
    """(seq, score) best first; ties newest first. Higher is better."""
    scorers = [
        (pattern_of(p).findall, idf(df, rows)) for p, df in zip(query_phrases, dfs, strict=True)
    ]
    average = average_length if average_length > 0 else 1.0
    saturation = K1 + 1
    base, per_token = K1 * (1 - B), K1 * B / average
    in_titles: dict[str, list[float]] = {}  # a thread's messages share its title
    scored: list[tuple[int, float]] = []
    for seq, content, title, docsize in candidates:
        title_tfs = in_titles.get(title)
        if title_tfs is None:
            heading = fold(title)
            title_tfs = in_titles[title] = [
                TITLE_WEIGHT * len(findall(heading)) if heading else 0.0 for findall, _ in scorers
            ]
        text = fold(content)
        norm = base + per_token * row_length(docsize)
        score = 0.0
        for (findall, weight), title_tf in zip(scorers, title_tfs, strict=True):
            tf = len(findall(text)) + title_tf
            if tf:
                score += weight * tf * saturation / (tf + norm)
        scored.append((seq, score))
    scored.sort(key=lambda item: (-item[1], -item[0]))
    return scored


SNIPPET_TOKENS = 16


def _occurrences(
    text: str, spans: Sequence[tuple[int, int]], query_phrases: Sequence[Phrase]
) -> list[tuple[int, int, int]]:
    """(first token, last token, phrase index) of every phrase instance in `text`."""
    if not text.isascii():  # folding may move offsets: compare token by token
        return _instances([fold(text[a:b]) for a, b in spans], query_phrases)
    folded = text.lower()
    starts = [a for a, _ in spans]
    found: list[tuple[int, int, int]] = []
    for index, phrase in enumerate(query_phrases):
        for match in pattern_of(phrase).finditer(folded):
            first = bisect.bisect_left(starts, match.start())
            found.append((first, bisect.bisect_right(starts, match.end() - 1) - 1, index))
    found.sort()
    return found


def _instances(words: Sequence[str], query_phrases: Sequence[Phrase]) -> list[tuple[int, int, int]]:
    """(first token, last token, phrase index) of every phrase instance in `words`."""
    found: list[tuple[int, int, int]] = []
    for index, phrase in enumerate(query_phrases):
        size = len(phrase.tokens)
        last = size - 1
        for start in range(len(words) - size + 1):
            for offset, token in enumerate(phrase.tokens):
                word = words[start + offset]
                if word != token and not (
                    phrase.prefix and offset == last and word.startswith(token)
                ):
                    break
            else:
                found.append((start, start + last, index))
    found.sort()
    return found


# FTS5's sentence rule: a token opens a sentence after '.' or ':' and whitespace.
_SENTENCE_BREAK = re.compile(rf"[.:][ \t\n\r]+(?={_LETTER})")


def _sentence_start(text: str, spans: Sequence[tuple[int, int]], index: int) -> int:
    """The token that opens the sentence holding token `index` (0 for the first)."""
    start = spans[index][0]
    cut = max(text.rfind(".", 0, start), text.rfind(":", 0, start))
    while cut >= 0:
        found = _SENTENCE_BREAK.match(text, cut)
        if found is not None and found.end() <= start:
            return bisect.bisect_left(spans, (found.end(), -1))
        cut = max(text.rfind(".", 0, cut), text.rfind(":", 0, cut))
    return 0


def _window_score(
    found: Sequence[tuple[int, int, int]], start: int, size: int
) -> tuple[int, int, int]:
    """FTS5's snippet score of the window at `start`: 1000 per phrase, 1 per repeat;
    with the first match and the end of the last one inside it."""
    seen: set[int] = set()
    score, first, last = 0, -1, -1
    for begin, end, phrase in found:
        if start <= begin < start + size:
            score += 1 if phrase in seen else 1000
            seen.add(phrase)
            if first < 0:
                first = begin
            last = end + 1
    return score, first, last


def _best_window(
    text: str, spans: Sequence[tuple[int, int]], found: Sequence[tuple[int, int, int]]
) -> tuple[int, int]:
    """(score, first token) of the best window, the way FTS5's snippet() picks it."""
    size, count = SNIPPET_TOKENS, len(spans)
    best_score, best_start = 0, 0
    for begin, _, _ in found:
        score, first, last = _window_score(found, begin, size)
        adjusted = max(0, min(first - int((size - (last - first)) / 2), count - size))
        if score > best_score:
            best_score, best_start = score, adjusted
        opening = _sentence_start(text, spans, begin) if count > size else begin
        if opening < begin:
            score = _window_score(found, opening, size)[0] + (120 if opening == 0 else 100)
            if score > best_score:
                best_score, best_start = score, opening
    return best_score, best_start


def _cut(
    text: str, spans: Sequence[tuple[int, int]], found: Sequence[tuple[int, int, int]], start: int
) -> str:
    end = min(len(spans), start + SNIPPET_TOKENS)
    out: list[str] = ["…"] if start > 0 else []
    cursor = spans[start][0] if start > 0 else 0
    marked_to = -1
    for first, last, _ in found:
        if first < start or first >= end or first <= marked_to:
            continue  # outside the window, or inside a marked one
        last = min(last, end - 1)
        out += [text[cursor : spans[first][0]], "[", text[spans[first][0] : spans[last][1]], "]"]
        cursor, marked_to = spans[last][1], last
    if end < len(spans):
        out += [text[cursor : spans[end - 1][1]], "…"]
    else:
        out.append(text[cursor:])
    return "".join(out)


def best_snippet(content: str, title: str, query_phrases: Sequence[Phrase]) -> str:
    """`snippet(messages_fts, -1, '[', ']', '…', 16)` computed from the row's text.

    The column whose best window scores highest wins (the message text on a tie); with
    no match at all, the opening of the message text.
    """
    best: tuple[int, str, list[tuple[int, int]], list[tuple[int, int, int]], int] | None = None
    for text in (content, title):
        spans = [m.span() for m in _WORD.finditer(text)]
        found = _occurrences(text, spans, query_phrases)
        score, start = _best_window(text, spans, found) if found else (0, 0)
        if best is None or score > best[0]:
            best = (score, text, spans, found, start)
    assert best is not None
    _, text, spans, found, start = best
    if not spans:
        return text
    return _cut(text, spans, found, start)
