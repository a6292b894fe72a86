"""How much generated queries look like real users' queries: form, length and lexical overlap.

Generated questions tend to copy their passage (about half of their content words against about a tenth
for real queries) and to share one length and one form. These measures describe a set of queries, and
compare two sets (generated against real) so a prompt can be judged before any training.
"""

from __future__ import annotations

import math
import re
from collections import Counter
from collections.abc import Iterable
from typing import Literal, get_args

import numpy as np
from scipy.stats import mannwhitneyu

QueryForm = Literal["question", "keywords", "claim", "problem"]
QUERY_FORMS: tuple[str, ...] = get_args(QueryForm)

STOPWORDS = frozenset(
    "a about after all also am an and any are as at be been before being but by can could did do does doing "
    "for from had has have having he her here his how i if in into is it its just me more most my no not of "
    "on once only or other our out over own same she should so some such than that the their them then there "
    "these they this those through to too under until up very was we were what when where which while who "
    "whom why will with would you your".split()
)
_WORD = re.compile(r"[a-z0-9]+(?:[-'][a-z0-9]+)*")
_QUESTION_START = re.compile(
    r"^(what|which|who|whom|whose|when|where|why|how|is|are|was|were|do|does|did|can|could|should|would|will|"
    r"has|have|had)\b",
    re.IGNORECASE,
)
FIRST_PERSON = re.compile(r"\b(i|i'm|i've|my|me|we|our|us)\b", re.IGNORECASE)
LENGTH_BINS = (1, 3, 5, 7, 10, 14, 20, 30, 50, 80)  # upper edges (words) of the length histogram
OVERLAP_BINS = (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9)  # the last bin: above 0.9


def words(text: str) -> list[str]:
    return _WORD.findall(text.lower())


def content_words(text: str) -> set[str]:
    """Lower-cased words that carry content (no stop words, no one-letter tokens), compared by their
    first five letters: a crude stemmer that matches "inhibit" with "inhibits" and "inhibition"."""
    return {w[:5] for w in words(text) if w not in STOPWORDS and len(w) > 1}


def lexical_overlap(query: str, passage: str) -> float:
    """Share of the query's content words that also occur in the passage (0: none copied, 1: all)."""
    query_words = content_words(query)
    if not query_words:
        return 0.0
    return len(query_words & content_words(passage)) / len(query_words)


def query_length(query: str) -> int:
    return len(query.split())


def form_of(query: str) -> str:
    """The form a query is written in, read from its wording: a question (it starts with a question word),
    a problem told in the first person, a question (by its mark), a short keyword query, or else a
    statement (claim)."""
    text = query.strip()
    n_words = query_length(text)
    if _QUESTION_START.match(text):
        return "question"
    if FIRST_PERSON.search(text) and n_words >= 5:
        return "problem"
    if text.endswith("?"):
        return "question"
    if n_words <= 6 and not re.search(r"[.!;]$", text):
        return "keywords"
    return "claim"


def _histogram(values: Iterable[float], edges: tuple[float, ...]) -> list[int]:
    counts = [0] * (len(edges) + 1)
    for value in values:
        counts[next((i for i, edge in enumerate(edges) if value <= edge), len(edges))] += 1
    return counts


def _bin_labels(edges: tuple[float, ...]) -> list[str]:
    lows = [0, *edges]
    return [f"<={edge:g}" if i == 0 else f"{lows[i]:g}-{edge:g}" for i, edge in enumerate(edges)] + [f">{edges[-1]:g}"]


def realism_profile(queries: list[str], passages: list[str | None]) -> dict:
    """Length (words), overlap with the passage each query is about (None: unknown, left out) and form of a
    set of queries: summary numbers, histograms and the count per form."""
    lengths = [query_length(q) for q in queries]
    overlaps = [lexical_overlap(q, p) for q, p in zip(queries, passages, strict=True) if p is not None]
    forms = Counter(form_of(q) for q in queries)

    def summary(values: list[float]) -> dict:
        if not values:
            return {"mean": None, "median": None, "p10": None, "p90": None}
        array = np.asarray(values, dtype=float)
        return {
            "mean": round(float(array.mean()), 3),
            "median": round(float(np.median(array)), 3),
            "p10": round(float(np.percentile(array, 10)), 3),
            "p90": round(float(np.percentile(array, 90)), 3),
        }

    return {
        "n": len(queries),
        "length": summary(lengths),
        "overlap": {**summary(overlaps), "n": len(overlaps)},
        "forms": {form: forms.get(form, 0) for form in QUERY_FORMS},
        "length_histogram": dict(zip(_bin_labels(LENGTH_BINS), _histogram(lengths, LENGTH_BINS), strict=True)),
        "overlap_histogram": dict(zip(_bin_labels(OVERLAP_BINS), _histogram(overlaps, OVERLAP_BINS), strict=True)),
        "_lengths": lengths,
        "_overlaps": overlaps,
    }


def _kl(p_counts: list[int], q_counts: list[int], smoothing: float = 0.5) -> float:
    """KL(P || Q) of two histograms in nats, add-`smoothing` so empty bins stay finite."""
    p = np.asarray(p_counts, dtype=float) + smoothing
    q = np.asarray(q_counts, dtype=float) + smoothing
    p, q = p / p.sum(), q / q.sum()
    return float(np.sum(p * np.log(p / q)))


def realism_distance(generated: dict, real: dict) -> dict:
    """How far a generated set's profile is from a real one's: KL divergence (real || generated) of the
    length and overlap histograms, the Mann-Whitney U test's p of each (two-sample, no shape assumed), the
    total variation distance of the form mixes, and the differences of the medians."""
    out: dict = {}
    for measure, edges in (("length", LENGTH_BINS), ("overlap", OVERLAP_BINS)):
        ours, theirs = generated[f"_{measure}s"], real[f"_{measure}s"]
        if not ours or not theirs:
            out[measure] = None
            continue
        p_value = float(mannwhitneyu(ours, theirs).pvalue) if len(set(ours) | set(theirs)) > 1 else 1.0
        out[measure] = {
            "kl_real_vs_generated": round(_kl(_histogram(theirs, edges), _histogram(ours, edges)), 4),
            "mannwhitney_p": p_value if p_value < 1e-4 or math.isnan(p_value) else round(p_value, 4),
            "median_difference": round(float(np.median(ours) - np.median(theirs)), 3),
        }
    ours_forms, theirs_forms = generated["forms"], real["forms"]
    n_ours, n_theirs = max(1, sum(ours_forms.values())), max(1, sum(theirs_forms.values()))
    out["forms_total_variation"] = round(
        0.5 * sum(abs(ours_forms[f] / n_ours - theirs_forms[f] / n_theirs) for f in QUERY_FORMS), 4
    )
    return out


def public_profile(profile: dict) -> dict:
    """The profile without its raw value lists (for reports and metadata)."""
    return {k: v for k, v in profile.items() if not k.startswith("_")}


def realism_section(sets: dict[str, tuple[list[str], list[str | None]]], reference: str | None) -> dict:
    """Profiles of several query sets (name -> (queries, the passage each is about or None)) and each one's
    distance to the `reference` set (the real queries, when there are any), for reports and metadata."""
    profiles = {name: realism_profile(queries, passages) for name, (queries, passages) in sets.items() if queries}
    ref = profiles.get(reference) if reference else None
    return {
        "reference": reference if ref else None,
        "profiles": {name: public_profile(p) for name, p in profiles.items()},
        "distances": {name: realism_distance(p, ref) for name, p in profiles.items() if ref and name != reference},
    }


def realism_figures(section: dict) -> dict[str, float]:
    """The generated queries' headline realism numbers from a `query_realism` section: median words, median
    overlap with their passage, and the KL divergences from the real queries when there are any."""
    generated = section["profiles"].get("generated")
    if not generated:
        return {}
    figures = {
        "realism_words_median": generated["length"]["median"],
        "realism_overlap_median": generated["overlap"]["median"],
    }
    distance = section["distances"].get("generated") or {}
    for measure in ("length", "overlap"):
        if distance.get(measure):
            figures[f"realism_kl_{measure}_vs_real"] = distance[measure]["kl_real_vs_generated"]
    return {name: value for name, value in figures.items() if value is not None}


def realism_markdown(section: dict) -> str:
    """The realism section as a Markdown table: one row per query set."""
    reference = section.get("reference")
    lines = [
        "| queries | n | words: median (p10-p90) | overlap with passage: median (mean) | forms (question/keywords/"
        f"claim/problem) | KL length{' vs ' + reference if reference else ''} | KL overlap |",
        "|---|---:|---|---|---|---:|---:|",
    ]
    for name, p in section["profiles"].items():
        length, overlap = p["length"], p["overlap"]
        d = section["distances"].get(name) or {}
        kl = [f"{d[m]['kl_real_vs_generated']:.3f}" if d.get(m) else "–" for m in ("length", "overlap")]
        overlap_text = f"{overlap['median']:.2f} ({overlap['mean']:.2f})" if overlap["n"] else "–"
        lines.append(
            f"| {name} | {p['n']} | {length['median']:g} ({length['p10']:g}-{length['p90']:g}) | {overlap_text} | "
            f"{'/'.join(str(p['forms'][f]) for f in QUERY_FORMS)} | {kl[0]} | {kl[1]} |"
        )
    return "\n".join(lines)


def source_passages(questions, chunks) -> list[str]:
    """The text each generated query was written from: its positive chunks, joined."""
    passages = dict(zip(chunks["chunk_id"], chunks["passage"], strict=True))
    return [" ".join(passages.get(c, "") for c in ids) for ids in questions["positive_chunk_ids"]]


def query_realism(
    questions,
    chunks,
    real_queries: dict[str, str] | None = None,
    real_qrels: dict[str, dict[str, int]] | None = None,
    seed_queries: list[str] | None = None,
) -> dict:
    """The realism section of a run: its generated queries (all, and per form), the seed queries, and the
    real queries (each compared with the text of its most relevant documents), with distances to the real
    ones. `questions` has question, form and positive_chunk_ids; `chunks` chunk_id, doc_id and passage."""
    documents = chunks.groupby("doc_id", sort=False)["passage"].agg(" ".join).to_dict()
    about = source_passages(questions, chunks)
    sets: dict[str, tuple[list[str], list[str | None]]] = {"generated": (questions["question"].tolist(), about)}
    # Questions written before query forms existed have no form column: they were all questions.
    forms = questions["form"].tolist() if "form" in questions else ["question"] * len(questions)
    for form in QUERY_FORMS:
        mask = [f == form for f in forms]
        if any(mask) and not all(mask):
            picked = [i for i, m in enumerate(mask) if m]
            sets[f"generated: {form}"] = ([questions["question"].iloc[i] for i in picked], [about[i] for i in picked])
    if seed_queries:
        sets["seed queries"] = (list(seed_queries), [None] * len(seed_queries))
    if real_queries:
        qrels = real_qrels or {}

        def relevant_text(qid: str) -> str | None:
            judged = qrels.get(qid, {})
            top = max(judged.values(), default=0)
            text = " ".join(documents.get(d, "") for d, grade in judged.items() if grade == top and grade > 0)
            return text or None

        sets["real queries"] = (list(real_queries.values()), [relevant_text(q) for q in real_queries])
    return realism_section(sets, "real queries" if real_queries else None)
