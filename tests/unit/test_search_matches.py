"""SQLite relevance scoring: the window ranking must agree with FTS5's own bm25()."""

from __future__ import annotations

import random
import sqlite3

import pytest

from byok.server.storage.sqlite import matches

WORDS = ["borrow", "checker", "lifetime", "rust", "café", "trait", "async", "tokio", "the"]


def _corpus(n: int, seed: int = 7) -> list[tuple[str, str]]:
    """Messages of 3-40 words with sentences, commas and a leading quote now and then."""
    rng = random.Random(seed)
    docs = []
    for _ in range(n):
        words = [
            rng.choice(WORDS) + rng.choice(["", "", "", "", ",", ".", "!", ":"])
            for _ in range(rng.randint(3, 40))
        ]
        if rng.random() < 0.1:
            words[0] = "«" + words[0]
        title = " ".join(rng.choice(WORDS) for _ in range(rng.randint(0, 4)))
        docs.append((" ".join(words).capitalize() + ".", title))
    return docs


def _fts(docs: list[tuple[str, str]]) -> sqlite3.Connection:
    db = sqlite3.connect(":memory:")
    db.execute(
        "CREATE VIRTUAL TABLE t USING fts5(content, title,"
        " tokenize='unicode61 remove_diacritics 2')"
    )
    db.executemany("INSERT INTO t(rowid, content, title) VALUES (?, ?, ?)", _rows(docs))
    db.commit()  # FTS5 writes its averages record when the transaction ends
    return db


def _rows(docs: list[tuple[str, str]]) -> list[tuple[int, str, str]]:
    return [(i + 1, content, title) for i, (content, title) in enumerate(docs)]


def _ours(db: sqlite3.Connection, query: str) -> list[tuple[int, float]]:
    """The window ranking over every match, with the same statistics the store reads."""
    rows = db.execute(
        "SELECT t.rowid, t.content, t.title, d.sz FROM t JOIN t_docsize d ON d.id = t.rowid"
        " WHERE t MATCH ?",
        (query,),
    ).fetchall()
    totals = matches.varints(db.execute("SELECT block FROM t_data WHERE id = 1").fetchone()[0])
    documents, average = totals[0], sum(totals[1:]) / totals[0]
    phrases = matches.phrases(query)
    dfs = [
        float(db.execute("SELECT count(*) FROM t WHERE t MATCH ?", (p.fts_query(),)).fetchone()[0])
        for p in phrases
    ]
    return matches.rank(rows, phrases, dfs, documents, average)


@pytest.mark.parametrize(
    "query",
    ["borrow", "cafe", "borrow checker", '"borrow checker"', "bor*", "rust OR tokio", "tra* async"],
)
def test_scores_equal_fts5_bm25(query: str) -> None:
    db = _fts(_corpus(400))
    theirs = {
        rowid: -score
        for rowid, score in db.execute(
            "SELECT rowid, bm25(t, 1.0, 0.3) FROM t WHERE t MATCH ?", (query,)
        )
    }
    ours = dict(_ours(db, query))
    assert theirs, "the query must match something"
    assert ours.keys() == theirs.keys()
    for rowid, score in theirs.items():
        assert ours[rowid] == pytest.approx(score, rel=1e-9, abs=1e-9), rowid


def test_best_first_and_ties_newest_first() -> None:
    cands: list[matches.Candidate] = [
        (1, "rust rust rust", "", bytes([3, 0])),
        (2, "rust and more", "", bytes([3, 0])),
        (3, "rust and more", "", bytes([3, 0])),
    ]
    ranked = matches.rank(cands, matches.phrases("rust"), [3.0], 100, 3.0)
    assert [seq for seq, _ in ranked] == [1, 3, 2]


def test_phrases_read_the_query_loosely() -> None:
    got = matches.phrases('title: Rust NOT unsafe "Borrow  Checker"* NEAR(café tokio, 5) rust')
    assert got == [
        matches.Phrase(("rust",)),
        matches.Phrase(("borrow", "checker"), prefix=True),
        matches.Phrase(("cafe",)),
        matches.Phrase(("tokio",)),
    ]
    assert got[1].fts_query() == '"borrow checker"*'


def test_document_frequency_is_exact_below_the_limit_then_extrapolated() -> None:
    assert matches.estimated_df(42, 7, 1000, 1000) == 42
    limit = matches.DF_EXACT_LIMIT
    # The newest `limit` matches span the newest 2 * limit rows: half the rows match.
    assert matches.estimated_df(limit, 1_000_001 - 2 * limit, 1_000_000, 1_000_000) == (
        pytest.approx(500_000)
    )


def test_varints_read_fts5_records() -> None:
    db = _fts([("a b c", "d e"), ("x " * 300, ""), ("y " * 70_000, "z " * 200)])
    sizes = [matches.varints(r[0]) for r in db.execute("SELECT sz FROM t_docsize ORDER BY id")]
    assert sizes == [[3, 2], [300, 0], [70_000, 200]]
    docsizes = [r[0] for r in db.execute("SELECT sz FROM t_docsize ORDER BY id")]
    assert [matches.row_length(d) for d in docsizes] == [5, 300, 70_200]
    averages = db.execute("SELECT block FROM t_data WHERE id = 1").fetchone()[0]
    assert matches.varints(averages) == [3, 70_303, 202]


@pytest.mark.parametrize(
    "query", ["borrow", "cafe", '"borrow checker"', "bor*", "rust OR tokio", "tra* async"]
)
def test_snippets_equal_fts5_snippet(query: str) -> None:
    """Same window and marks as FTS5's snippet() on plain word-and-space text."""
    db = _fts(_corpus(200))
    phrases = matches.phrases(query)
    rows = db.execute(
        "SELECT content, title, snippet(t, -1, '[', ']', '…', 16) FROM t WHERE t MATCH ?",
        (query,),
    ).fetchall()
    assert rows
    differ = [
        (theirs, ours)
        for content, title, theirs in rows
        if (ours := matches.best_snippet(content, title, phrases)) != theirs
    ]
    assert not differ, differ[:3]


def test_snippet_marks_and_ellipses() -> None:
    phrases = matches.phrases('"borrow checker" rust')
    text = " ".join(f"w{i}" for i in range(30)) + " the Borrow checker, in Rust; " + "end " * 30
    cut = matches.best_snippet(text, "", phrases)
    assert "[Borrow checker]" in cut and "[Rust]" in cut
    assert cut.startswith("…") and cut.endswith("…")
    assert matches.best_snippet("no match here", "Rust notes", phrases) == "[Rust] notes"
    assert matches.best_snippet("no match", "", phrases) == "no match"


def test_plain_queries_are_checked_in_python_the_rest_by_fts5() -> None:
    plain = matches.plain_phrases('borrow "lifetime elision" tra*')
    assert plain is not None and len(plain) == 3
    assert matches.contains_all("Borrow the trait; lifetime—elision.", "", plain)
    assert matches.contains_all("the trait: lifetime elision", "Borrow notes", plain)
    assert not matches.contains_all("borrow the trait, lifetime and elision", "", plain)
    for query in ("rust OR go", "rust NOT go", "title: rust", "NEAR(a b)", "a + b", "-x", "(a)"):
        assert matches.plain_phrases(query) is None, query


def test_phrase_frequency_is_sampled_from_the_newest_rows() -> None:
    sample = matches.PHRASE_SAMPLE_ROWS
    assert matches.sampled_df(7, sample // 2) == 7  # the whole index is the sample
    assert matches.sampled_df(10, sample * 20) == 200
    assert matches.sampled_df(0, sample * 20) == 10  # unseen: rare, not absent
