"""The evaluate-and-gate stage: score BM25, the base and the fine-tuned model (and their hybrids, and each
trained Matryoshka size) on the held-out synthetic questions and the real queries, judge the two blocking
gates (fine-tuned not worse than base; no out-of-domain regression) and write the report's files."""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from embed_pipeline.core.atomic import write_atomically
from embed_pipeline.core.evaluation import METRIC_NAMES, judgment_coverage, judgments_note, load_beir_queries
from embed_pipeline.core.html_report import report_html
from embed_pipeline.core.query_examples import SeedQuery
from embed_pipeline.core.realism import query_realism
from embed_pipeline.core.report import (
    REAL,
    SYNTHETIC,
    TRAINING_FACTS,
    evaluate_on_beir,
    evaluate_systems,
    gate,
    gate_summary,
    improvement,
    improvement_summary,
    real_query_set,
    regression_markdown,
    report_markdown,
    synthetic_test_set,
    training_summary,
)
from embed_pipeline.core.settings import EvaluationSettings

log = logging.getLogger(__name__)

TEACHER_ROW = "teacher"
"""The report's row of the teacher the student learned from, scored zero-shot like the other systems."""

BUNDLED_OOD = Path(__file__).resolve().parents[1] / "sample_data" / "general_ood"
"""The out-of-domain collection `regression_beir: bundled` names (120 general-knowledge passages, 60 queries)."""


@dataclass(frozen=True)
class Report:
    """The stage's result: the report (JSON-ready, its verdicts inside), its Markdown and the notes to log."""

    data: dict
    markdown: str
    notes: tuple[str, ...] = ()

    @property
    def gate(self) -> dict:
        """The fine-tuned-not-worse-than-base verdict (see `core.report.gate`)."""
        return self.data["gate"]

    @property
    def improvement(self) -> dict:
        """Whether the fine-tuned model is measurably better than its base (see `core.report.improvement`)."""
        return self.data["improvement"]

    @property
    def regression(self) -> dict | None:
        """The out-of-domain verdict, None when `regression_beir` is off."""
        return self.data.get("regression", {}).get("gate")

    def write(self, stem: Path, title: str, dimension: int | None = None) -> tuple[Path, Path, Path]:
        """The report as `stem`.json, .md and .html (each written atomically); returns the three paths."""
        paths = stem.with_suffix(".json"), stem.with_suffix(".md"), stem.with_suffix(".html")
        html = report_html(self.data, title, dimension)
        for path, text in zip(paths, (json.dumps(self.data, indent=2), self.markdown + "\n", html), strict=True):
            write_atomically(path, lambda tmp, text=text: tmp.write_text(text, encoding="utf-8"))
        return paths


def regression_folder(settings: EvaluationSettings) -> Path | None:
    """The out-of-domain BEIR folder of `settings.regression_beir`; ValueError naming the setting when it is
    not a BEIR folder, found before any scoring."""
    if not settings.regression_beir:
        return None
    folder = BUNDLED_OOD if settings.regression_beir == "bundled" else Path(settings.regression_beir)
    if not (folder / "corpus.jsonl").is_file():
        raise ValueError(f"beir_report.regression_beir: {folder} has no corpus.jsonl (a BEIR folder, or 'bundled')")
    return folder


def evaluate_and_gate(
    chunks: pd.DataFrame,
    questions: pd.DataFrame,
    finetuned: dict,
    base_model: str,
    settings: EvaluationSettings = EvaluationSettings(),
    *,
    eval_beir_dir: str | None = None,
    seeds: list[SeedQuery] | None = None,
    device: str = "cpu",
    query_prompt: str | None = None,
    passage_prompt: str | None = None,
    document_caches: dict[str, str | Path] | None = None,
    teacher: tuple[str, Callable] | None = None,
) -> Report:
    """Score and judge the fine-tuned model (`finetuned`: `finetune`'s statistics, its `path` a local folder)
    against `base_model` on the held-out questions and, with `eval_beir_dir`, the real queries (less the `seeds`,
    which shaped the training queries). The gates follow `settings`. `document_caches` maps "base" and
    "fine-tuned" to folders of passage vectors encoded by earlier stages. `teacher` (its name and a chunk
    searcher, `core.teachers.models.searcher`) adds the teacher's own row, zero-shot."""
    if settings.gate_metric not in METRIC_NAMES:
        raise ValueError(
            f"beir_report.gate_metric {settings.gate_metric!r} is not a reported metric: use one of {METRIC_NAMES}"
        )
    ood_folder = regression_folder(settings)
    model_dir, seeds, notes = str(finetuned["path"]), seeds or [], []
    query_sets = {SYNTHETIC: (*synthetic_test_set(questions), False)}
    real: tuple = (None, None)
    if eval_beir_dir:
        judgments = judgment_coverage(eval_beir_dir, load_beir_queries(eval_beir_dir)[1], set(chunks["doc_id"]))
        notes += [note] if (note := judgments_note(judgments)) else []
        real_queries, real_qrels, excluded = real_query_set(eval_beir_dir, seeds)
        if excluded:
            notes.append(f"{len(excluded)} real queries are also seed queries (query_examples): not scored")
        query_sets[REAL] = (real_queries, real_qrels, True)
        real = (real_queries, real_qrels)
    # Each trained Matryoshka size below the full one gets its own row.
    matryoshka = [d for d in finetuned.get("matryoshka_dims") or [] if d < finetuned["dimension"]]
    options = {"device": device, "batch_size": settings.batch_size, "query_prompt": query_prompt}
    options["passage_prompt"] = passage_prompt
    report = evaluate_systems(
        chunks,
        query_sets,
        models={"base": base_model, "fine-tuned": model_dir, **{f"fine-tuned @{d}": model_dir for d in matryoshka}},
        truncate_dims={f"fine-tuned @{d}": d for d in matryoshka},
        hybrids={
            f"hybrid ({'base' if model == 'base' else 'tuned'})": (model, fusion["bm25_weight"])
            for model, fusion in (finetuned.get("fusion") or {}).items()
            if fusion
        },
        ignore_identical_ids=settings.ignore_identical_ids,
        document_caches=document_caches,
        searchers={TEACHER_ROW: teacher[1]} if teacher else None,
        top_k=settings.top_k,
        **options,
    )
    if teacher:
        report["teacher"] = teacher[0]
    if eval_beir_dir:
        report["query_sets"][REAL]["judgments"] = judgments
        if excluded:
            report["query_sets"][REAL]["excluded_seed_queries"] = excluded
    report["query_realism"] = query_realism(questions, chunks, *real, seed_queries=[s.text for s in seeds])
    report["gate"] = gate(report, settings.gate_metric, settings.gate_tolerance, settings.gate_query_set)
    report["improvement"] = improvement(report, finetuned.get("validation_vs_base"))
    report["training"] = {key: finetuned.get(key) for key in TRAINING_FACTS}
    markdown = "\n\n".join(
        [
            report_markdown(report),
            gate_summary(report["gate"]),
            improvement_summary(report["improvement"]),
            training_summary(report["training"]),
        ]
    )
    if ood_folder is not None:
        from transformers import AutoTokenizer

        ood = evaluate_on_beir(
            ood_folder,
            {"base": base_model, "fine-tuned": model_dir},
            AutoTokenizer.from_pretrained(base_model),
            **options,
        )
        verdict = gate(ood, settings.gate_metric, settings.regression_tolerance, REAL)
        verdict["query_set"] = f"out-of-domain {ood_folder.name}"
        report["regression"] = {"collection": str(ood_folder), **ood["query_sets"][REAL], "gate": verdict}
        markdown += "\n\n" + regression_markdown(report["regression"])
    report["eval_beir_dir"] = eval_beir_dir
    return Report(report, markdown, tuple(notes))
