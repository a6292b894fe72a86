"""Small matplotlib plots as PNG data URIs: Markdown images in Dagster metadata (the UI renders them) and
images in the self-contained HTML report."""

from __future__ import annotations

import base64
import io

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402


def _data_uri(fig) -> str:
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=90, bbox_inches="tight")
    plt.close(fig)
    return f"data:image/png;base64,{base64.b64encode(buffer.getvalue()).decode()}"


def _markdown_image(fig, alt: str) -> str:
    return f"![{alt}]({_data_uri(fig)})"


def histogram_markdown(series: dict[str, list[float]], title: str = "cosine similarity to the question") -> str:
    fig, ax = plt.subplots(figsize=(6, 3))
    for label, values in series.items():
        if values:
            ax.hist(values, bins=30, alpha=0.6, label=f"{label} (n={len(values)})")
    ax.set_xlabel(title)
    ax.legend()
    return _markdown_image(fig, title)


def training_curves_markdown(loss_curve: list[dict], validation_curve: list[dict]) -> str:
    """Training loss against step and, when validated, validation nDCG@10 against step, side by side."""
    fig, axes = plt.subplots(1, 2 if validation_curve else 1, figsize=(10 if validation_curve else 5, 3), squeeze=False)
    loss_ax = axes[0][0]
    loss_ax.plot([p["step"] for p in loss_curve], [p["loss"] for p in loss_curve], marker=".")
    loss_ax.set_xlabel("step")
    loss_ax.set_ylabel("training loss")
    if validation_curve:
        ax = axes[0][1]
        ax.plot([p["step"] for p in validation_curve], [p["ndcg@10"] for p in validation_curve], marker="o")
        ax.set_xlabel("step")
        ax.set_ylabel("validation nDCG@10")
    return _markdown_image(fig, "training curves")


def _metric_bars(systems: dict[str, dict[str, float]], metrics: list[str], title: str):
    """Grouped bars, each labelled with its value, on an axis fitted to the values (not 0-1), so that a
    difference of a few hundredths between systems is visible; the axis says where it starts."""
    fig, ax = plt.subplots(figsize=(7, 3.2))
    width = 0.8 / max(1, len(systems))
    values = [v[k] for v in systems.values() for k in metrics]
    for i, (system, scores) in enumerate(systems.items()):
        bars = ax.bar([m + i * width for m in range(len(metrics))], [scores[k] for k in metrics], width, label=system)
        ax.bar_label(bars, fmt="%.3f", fontsize=5, rotation=90, padding=2)
    ax.set_xticks([m + width * (len(systems) - 1) / 2 for m in range(len(metrics))], metrics)
    low, high = min(values), max(values)
    pad = max(0.02, (high - low) * 0.15)
    ax.set_ylim(max(0.0, low - pad), high + 3 * pad)  # room above the tallest bar for its label
    ax.set_ylabel("score (axis not from 0)" if low - pad > 0 else "score")
    ax.set_title(title)
    ax.legend(fontsize=7, loc="upper center", bbox_to_anchor=(0.5, -0.12), ncol=2, frameon=False)
    return fig


def metric_bars_markdown(systems: dict[str, dict[str, float]], metrics: list[str], title: str) -> str:
    return _markdown_image(_metric_bars(systems, metrics, title), title)


def metric_bars_uri(systems: dict[str, dict[str, float]], metrics: list[str], title: str) -> str:
    return _data_uri(_metric_bars(systems, metrics, title))


def _delta_bars(comparisons: dict[str, dict], title: str):
    """Fine-tuned minus base per metric with its 95% bootstrap interval: a bar that crosses zero is no
    demonstrated difference."""
    fig, ax = plt.subplots(figsize=(6, 2.8))
    metrics = list(comparisons)
    deltas = [comparisons[m]["delta"] for m in metrics]
    lows = [d - (comparisons[m]["ci95"] or [d, d])[0] for m, d in zip(metrics, deltas, strict=True)]
    highs = [(comparisons[m]["ci95"] or [d, d])[1] - d for m, d in zip(metrics, deltas, strict=True)]
    colors = ["#1a7f37" if d >= 0 else "#c62828" for d in deltas]
    ax.bar(range(len(metrics)), deltas, color=colors, yerr=[lows, highs], capsize=4)
    ax.axhline(0, color="grey", linewidth=0.8)
    ax.set_xticks(range(len(metrics)), metrics)
    ax.set_ylabel("fine-tuned − base")
    ax.set_title(f"{title}: difference with 95% CI")
    return fig


def delta_bars_markdown(comparisons: dict[str, dict], title: str) -> str:
    return _markdown_image(_delta_bars(comparisons, title), f"{title} differences")


def delta_bars_uri(comparisons: dict[str, dict], title: str) -> str:
    return _data_uri(_delta_bars(comparisons, title))


def per_k_curves_uri(systems: dict[str, dict[str, float]], ks: list[int], title: str) -> str:
    """nDCG@k and Recall@k against k, one line per system."""
    fig, axes = plt.subplots(1, 2, figsize=(9, 3))
    for ax, metric in zip(axes, ("nDCG", "Recall"), strict=True):
        for system, values in systems.items():
            ax.plot(ks, [values[f"{metric}@{k}"] for k in ks], marker="o", label=system)
        ax.set_xscale("log")
        ax.set_xticks(ks, [str(k) for k in ks])
        ax.set_xlabel("k")
        ax.set_ylabel(f"{metric}@k")
        ax.set_ylim(0, 1)
    axes[0].set_title(title)
    handles, labels = axes[0].get_legend_handles_labels()
    fig.legend(handles, labels, fontsize=7, loc="upper center", bbox_to_anchor=(0.5, 0.0), ncol=2, frameon=False)
    return _data_uri(fig)


def matryoshka_curve_uri(points: dict[int, float], base: float, metric: str) -> str:
    """The fine-tuned model's `metric` at each embedding size, against the base model's at full size."""
    fig, ax = plt.subplots(figsize=(6, 3))
    dims = sorted(points)
    ax.plot(dims, [points[d] for d in dims], marker="o", label="fine-tuned")
    ax.axhline(base, color="grey", linestyle="--", label="base (full size)")
    ax.set_xscale("log", base=2)
    ax.set_xticks(dims, [str(d) for d in dims])
    ax.set_xlabel("embedding dimensions")
    ax.set_ylabel(metric)
    ax.legend(fontsize=7)
    return _data_uri(fig)


def _realism_figure(profiles: dict[str, dict]):
    """Length and overlap histograms of several query sets, each normalised to shares, side by side."""
    fig, axes = plt.subplots(1, 2, figsize=(10, 3))
    for ax, key, label in ((axes[0], "length_histogram", "words"), (axes[1], "overlap_histogram", "overlap")):
        width = 0.8 / max(1, len(profiles))
        for i, (name, profile) in enumerate(profiles.items()):
            bins = profile[key]
            total = max(1, sum(bins.values()))
            ax.bar([x + i * width for x in range(len(bins))], [v / total for v in bins.values()], width, label=name)
            ax.set_xticks(range(len(bins)), list(bins), rotation=45, fontsize=7)
        ax.set_xlabel(label)
        ax.set_ylabel("share of queries")
    axes[0].legend(fontsize=7)
    return fig


def realism_histograms_markdown(profiles: dict[str, dict]) -> str:
    return _markdown_image(_realism_figure(profiles), "query length and overlap")


def realism_histograms_uri(profiles: dict[str, dict]) -> str:
    return _data_uri(_realism_figure(profiles))
