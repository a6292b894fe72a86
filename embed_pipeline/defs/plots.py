"""Small matplotlib plots embedded in Dagster metadata as Markdown images (the UI renders data URIs)."""

from __future__ import annotations

import base64
import io

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402


def _markdown_image(fig, alt: str) -> str:
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=90, bbox_inches="tight")
    plt.close(fig)
    return f"![{alt}](data:image/png;base64,{base64.b64encode(buffer.getvalue()).decode()})"


def histogram_markdown(series: dict[str, list[float]], title: str = "cosine similarity to the question") -> str:
    fig, ax = plt.subplots(figsize=(6, 3))
    for label, values in series.items():
        if values:
            ax.hist(values, bins=30, alpha=0.6, label=f"{label} (n={len(values)})")
    ax.set_xlabel(title)
    ax.legend()
    return _markdown_image(fig, title)


def metric_bars_markdown(systems: dict[str, dict[str, float]], metrics: list[str], title: str) -> str:
    fig, ax = plt.subplots(figsize=(6, 3))
    width = 0.8 / max(1, len(systems))
    for i, (system, values) in enumerate(systems.items()):
        ax.bar([m + i * width for m in range(len(metrics))], [values[k] for k in metrics], width, label=system)
    ax.set_xticks([m + width * (len(systems) - 1) / 2 for m in range(len(metrics))], metrics)
    ax.set_ylim(0, 1)
    ax.set_title(title)
    ax.legend()
    return _markdown_image(fig, title)
