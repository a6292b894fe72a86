"""The evaluation report as one self-contained HTML page (inline CSS, plots as data URIs): tables, paired
comparisons, gate verdicts, per-k curves, the Matryoshka curve, the regression check and the failures."""

from __future__ import annotations

import re
from html import escape

from embed_pipeline.core.evaluation import KS
from embed_pipeline.core.plots import (
    delta_bars_uri,
    matryoshka_curve_uri,
    metric_bars_uri,
    per_k_curves_uri,
    realism_histograms_uri,
)
from embed_pipeline.core.report import (
    HEADLINE_METRICS,
    comparison_text,
    deltas_text,
    gate_summary,
    improvement_summary,
    seeds_note,
    training_summary,
)

STYLE = """
body { font-family: system-ui, sans-serif; margin: 2em auto; max-width: 1100px; color: #222; }
.scroll { overflow-x: auto; }
table { border-collapse: collapse; margin: 0.5em 0 1em; font-size: 0.85em; }
td:first-child { max-width: 22em; overflow-wrap: anywhere; }
th, td { border: 1px solid #ccc; padding: 0.25em 0.6em; text-align: right; }
th:first-child, td:first-child { text-align: left; }
tr.best td { font-weight: bold; }
.passed { color: #1a7f37; } .failed { color: #c62828; font-weight: bold; }
.warning { color: #a15c00; font-weight: bold; }
.loss { margin: 0.4em 0 0.8em; } .hit { font-size: 0.85em; margin-left: 1.5em; }
img { max-width: 100%; margin: 0.3em 0; }
"""
TABLE_METRICS = [f"{m}@{k}" for m in ("nDCG", "Recall") for k in KS] + ["MAP@10", "P@10", "MRR@10"]


def _table(systems: dict[str, dict[str, float]], metrics: list[str]) -> str:
    best = max(systems, key=lambda s: systems[s].get("nDCG@10", 0.0))
    head = "".join(f"<th>{escape(m)}</th>" for m in metrics)
    rows = "".join(
        f"<tr{' class=best' if s == best else ''}><td>{escape(s)}</td>"
        + "".join(f"<td>{v[m]:.4f}</td>" for m in metrics)
        + "</tr>"
        for s, v in systems.items()
    )
    return f"<div class=scroll><table><tr><th>system</th>{head}</tr>{rows}</table></div>"


def _verdict(verdict: dict) -> str:
    css = "passed" if verdict["passed"] else "failed"
    return f"<p class={css}>{escape(gate_summary(verdict))}</p>"


def _comparisons(entry: dict) -> str:
    items = [f"<li>{escape(comparison_text(system, c))}</li>" for system, c in entry.get("vs_base", {}).items()]
    if entry.get("fine_tuned_minus_base"):
        items.append(f"<li>fine-tuned − base per metric: {escape(deltas_text(entry['fine_tuned_minus_base']))}</li>")
    return f"<ul>{''.join(items)}</ul>" if items else ""


def _matryoshka(systems: dict[str, dict[str, float]], full_dimension: int | None) -> str:
    points = {int(m.group(1)): v["nDCG@10"] for s, v in systems.items() if (m := re.fullmatch(r"fine-tuned @(\d+)", s))}
    if not points or "fine-tuned" not in systems:
        return ""
    if full_dimension:
        points[full_dimension] = systems["fine-tuned"]["nDCG@10"]
    uri = matryoshka_curve_uri(points, systems["base"]["nDCG@10"], "nDCG@10")
    return f"<h3>Matryoshka: nDCG@10 by embedding size</h3><img alt='Matryoshka curve' src='{uri}'>"


def _losses(losses: list[dict]) -> str:
    if not losses:
        return ""
    parts = ["<h3>Largest losses against base</h3>"]
    for loss in losses:
        hits = "".join(
            f"<div class=hit>{'✓' if h['relevant'] else '✗'} <code>{escape(h['id'])}</code> {escape(h['text'])}…</div>"
            for h in loss["fine_tuned_top"]
        )
        parts.append(
            f"<div class=loss><b>{escape(loss['query'])}</b> nDCG@10 {loss['base_ndcg@10']:.2f} → "
            f"{loss['fine_tuned_ndcg@10']:.2f}; relevant: {escape(', '.join(loss['relevant']))}; "
            f"fine-tuned top hits:{hits}</div>"
        )
    return "".join(parts)


def _realism(section: dict) -> str:
    """Length, overlap and form of each query set, and its distance to the real queries."""
    reference = section.get("reference")
    head = "".join(
        f"<th>{escape(h)}</th>"
        for h in (
            "queries",
            "n",
            "words: median (p10-p90)",
            "overlap: median (mean)",
            "question/keywords/claim/problem",
            f"KL length{' vs ' + reference if reference else ''}",
            "KL overlap",
        )
    )
    rows = []
    for name, p in section["profiles"].items():
        d = section["distances"].get(name) or {}
        kl = [f"{d[m]['kl_real_vs_generated']:.3f}" if d.get(m) else "–" for m in ("length", "overlap")]
        overlap = f"{p['overlap']['median']:.2f} ({p['overlap']['mean']:.2f})" if p["overlap"]["n"] else "–"
        cells = [
            name,
            p["n"],
            f"{p['length']['median']:g} ({p['length']['p10']:g}-{p['length']['p90']:g})",
            overlap,
            "/".join(str(v) for v in p["forms"].values()),
            *kl,
        ]
        rows.append("<tr>" + "".join(f"<td>{escape(str(c))}</td>" for c in cells) + "</tr>")
    note = (
        "<p>Overlap: the share of a query's content words found in the passage it is about (for real queries, "
        "their most relevant documents). KL: divergence of the real queries' histogram from this set's.</p>"
    )
    return f"<table><tr>{head}</tr>{''.join(rows)}</table>{note}"


def report_html(
    report: dict, title: str = "embed_pipeline evaluation report", full_dimension: int | None = None
) -> str:
    """The whole report as a standalone HTML document."""
    parts = [f"<h1>{escape(title)}</h1>"]
    if report.get("model_path"):
        parts.append(f"<p>Fine-tuned model: <code>{escape(report['model_path'])}</code></p>")
    if "gate" in report:
        parts.append(_verdict(report["gate"]))
    if "regression" in report:
        parts.append(_verdict(report["regression"]["gate"]))
    if "improvement" in report:  # a warning, not a gate: amber when no gain is shown
        css = "passed" if report["improvement"]["improved"] else "warning"
        parts.append(f"<p class={css}>{escape(improvement_summary(report['improvement']))}</p>")
    if report.get("training"):
        parts.append(f"<p>{escape(training_summary(report['training']))}</p>")
    for name, entry in report["query_sets"].items():
        systems = entry["systems"]
        parts += [
            f"<h2>{escape(name)} ({entry['n_queries']} queries)</h2>",
            f"<p>{escape(seeds_note(entry['excluded_seed_queries']))}</p>"
            if entry.get("excluded_seed_queries")
            else "",
            _table(systems, TABLE_METRICS),
            _comparisons(entry),
            f"<img alt='{escape(name)} metrics' src='{metric_bars_uri(systems, HEADLINE_METRICS, name)}'>",
            f"<img alt='{escape(name)} differences' src='{delta_bars_uri(entry['fine_tuned_minus_base'], name)}'>"
            if entry.get("fine_tuned_minus_base")
            else "",
            f"<img alt='{escape(name)} per-k curves' src='{per_k_curves_uri(systems, list(KS), name)}'>",
            _matryoshka(systems, full_dimension),
            _losses(entry.get("largest_losses", [])),
        ]
    if "regression" in report:
        regression = report["regression"]
        parts += [
            f"<h2>Out-of-domain regression check ({regression['n_queries']} queries)</h2>",
            f"<p><code>{escape(regression['collection'])}</code></p>",
            _table(regression["systems"], TABLE_METRICS),
        ]
    if report.get("query_realism"):
        parts += [
            "<h2>Query realism: generated next to real queries</h2>",
            _realism(report["query_realism"]),
            f"<img alt='query length and overlap' src='{realism_histograms_uri(report['query_realism']['profiles'])}'>",
        ]
    body = "\n".join(p for p in parts if p)
    return (
        f"<!DOCTYPE html><html lang=en><head><meta charset=utf-8><title>{escape(title)}</title>"
        f"<style>{STYLE}</style></head><body>\n{body}\n</body></html>\n"
    )
