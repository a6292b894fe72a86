"""Data checks on what the chunker, the LLM, the split and the unrolling produce.

Each function inspects one stage's output and returns a `Verdict`: passed or not, one line saying what was
found, and the figures behind it. The assets attach them as asset checks, blocking where a failure makes
the next steps meaningless (a leaked split makes the test scores lies; a question set of three trains
nothing); tests call them directly on crafted bad tables.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import pandas as pd

__all__ = ["Verdict", "check_chunks", "check_questions", "check_splits", "check_training_rows"]


@dataclass(frozen=True)
class Verdict:
    passed: bool
    summary: str
    metadata: dict[str, float | int | str] = field(default_factory=dict)


def _found(counts: dict[str, int]) -> list[str]:
    """ "N what" for each non-zero count: the problems a verdict names."""
    return [f"{n} {what}" for what, n in counts.items() if n]


def _blank(texts: pd.Series) -> pd.Series:
    return texts.fillna("").str.strip().eq("")


def _verdict(problems: list[str], fine: str, metadata: dict) -> Verdict:
    return Verdict(not problems, "; ".join(problems) if problems else fine, metadata)


def check_chunks(chunks: pd.DataFrame) -> Verdict:
    """No empty chunk, no chunk id twice, no text twice within one document. The same text in different
    documents (boilerplate) is counted, not failed."""
    empty = int(_blank(chunks["text"]).sum())
    repeated_ids = int(chunks["chunk_id"].duplicated().sum())
    repeated_in_document = int(chunks.duplicated(["doc_id", "text"]).sum())
    problems = _found(
        {
            "empty chunks": empty,
            "chunk ids used twice": repeated_ids,
            "chunks repeating another chunk of their document": repeated_in_document,
        }
    )
    metadata = {
        "chunks": len(chunks),
        "empty_chunks": empty,
        "repeated_chunk_ids": repeated_ids,
        "repeated_within_document": repeated_in_document,
        "same_text_in_other_documents": int(chunks["text"].duplicated().sum()) - repeated_in_document,
    }
    return _verdict(problems, f"{len(chunks)} chunks, none empty or repeated", metadata)


def check_questions(
    questions: pd.DataFrame, stats: dict, min_questions: int, min_parse_rate: float, max_failure_rate: float
) -> Verdict:
    """Enough questions kept, enough of the LLM's answers usable (parsed into a new query of the asked form;
    generations a time budget left unasked do not count), few failed calls. `stats` are `generate_questions`'
    statistics."""
    generations = max(1, int(stats.get("generations", 0)))
    parse_rate = int(stats.get("accepted", 0)) / max(1, int(stats.get("accepted", 0)) + int(stats.get("rejected", 0)))
    calls = int(stats.get("llm_calls_made", 0)) + int(stats.get("llm_calls_cached", 0))
    failure_rate = int(stats.get("llm_failures", 0)) / max(1, calls)
    empty = int(_blank(questions["question"]).sum()) if len(questions) else 0
    problems = []
    if len(questions) < min_questions:
        problems.append(f"{len(questions)} questions kept, fewer than min_questions={min_questions}")
    if empty:
        problems.append(f"{empty} empty questions")
    if parse_rate < min_parse_rate:
        problems.append(f"{parse_rate:.0%} of the LLM's answers were usable, under min_parse_rate={min_parse_rate:.0%}")
    if failure_rate > max_failure_rate:
        problems.append(f"{failure_rate:.0%} of the LLM calls failed, over max_failure_rate={max_failure_rate:.0%}")
    metadata = {
        "questions": len(questions),
        "generations": int(stats.get("generations", 0)),
        "parse_rate": round(parse_rate, 4),
        "kept_rate": round(len(questions) / generations, 4),
        "llm_failure_rate": round(failure_rate, 4),
        "empty_questions": empty,
    }
    fine = f"{len(questions)} questions; {parse_rate:.0%} of answers usable, {failure_rate:.0%} of calls failed"
    return _verdict(problems, fine, metadata)


def check_splits(splits: pd.DataFrame, expected: tuple[str, ...]) -> Verdict:
    """Each split in `expected` non-empty, and no document with questions on two sides (a leak: the test
    questions' passages would have been trained on)."""
    sizes = splits["split"].value_counts()
    sides = splits.groupby("doc_id")["split"].nunique()
    leaked = sorted(sides[sides > 1].index)
    problems = [f"split {name!r} is empty" for name in expected if not sizes.get(name, 0)]
    if leaked:
        problems.append(f"{len(leaked)} documents have questions on two sides (e.g. {', '.join(map(str, leaked[:3]))})")
    metadata = {
        **{f"{name}_questions": int(n) for name, n in sizes.items()},
        "documents_on_two_sides": len(leaked),
    }
    fine = ", ".join(f"{name} {int(sizes.get(name, 0))}" for name in expected) + " questions; no document shared"
    return _verdict(problems, fine, metadata)


def check_training_rows(rows: pd.DataFrame, num_negatives: int) -> Verdict:
    """Rows to train on, each with its `num_negatives` negatives, none empty and none equal to its positive."""
    negatives = [f"negative_{i}" for i in range(1, num_negatives + 1)]
    missing = [c for c in negatives if c not in rows.columns]
    if missing:
        return Verdict(False, f"columns {missing} are missing", {"rows": len(rows)})
    texts = rows[negatives].fillna("")
    empty = int(texts.apply(_blank).any(axis=1).sum())
    same_as_positive = int(texts.eq(rows["positive"], axis=0).any(axis=1).sum())
    problems = [] if len(rows) else ["no training rows"]
    problems += _found(
        {"rows with an empty negative": empty, "rows with a negative equal to the positive": same_as_positive}
    )
    metadata = {
        "rows": len(rows),
        "rows_with_empty_negative": empty,
        "rows_with_negative_equal_to_positive": same_as_positive,
    }
    return _verdict(problems, f"{len(rows)} rows, each with {num_negatives} distinct negatives", metadata)
