"""The generator as it was before query forms (commit f024d1f), run from a git worktree in a subprocess, so
benchmarks can put today's code next to the code that came before it on the same chunks."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pandas as pd

ROOT = Path(__file__).resolve().parents[1]
BASELINE_COMMIT = "f024d1f"

_SCRIPT = """
import json, sys, time
import pandas as pd
from embed_pipeline.core.llm import LLMSettings
from embed_pipeline.core.sdg import generate_questions
chunks, cache, out, runtime, n, per_chunk, warm = sys.argv[1:8]
chunks = pd.read_parquet(chunks)
settings = LLMSettings(local_runtime=runtime)
if warm != "-":  # load the model outside the timing
    generate_questions(chunks.iloc[:1], settings, warm)
started = time.perf_counter()
result = generate_questions(chunks, settings, cache, questions_per_chunk=int(per_chunk), max_chunks=int(n), seed=42)
result.questions.to_parquet(out + ".parquet")
stats = {**result.stats, "wall_s": time.perf_counter() - started}
open(out + ".json", "w").write(json.dumps(stats, default=str))
"""


def baseline_generation(
    chunks: pd.DataFrame,
    max_chunks: int,
    cache: Path,
    runtime: str,
    work: Path,
    per_chunk: int = 1,
    warm_up: bool = False,
) -> tuple[pd.DataFrame, dict]:
    """The old commit's generate_questions on `chunks` (the same seeded `max_chunks`, seed 42): its questions
    and statistics (`wall_s`: the timed generation, after a warm-up call that loads the model)."""
    tree = work / "baseline-tree"
    if not tree.exists():
        subprocess.run(["git", "-C", str(ROOT), "worktree", "add", "--detach", str(tree), BASELINE_COMMIT], check=True)
    chunks.to_parquet(work / "baseline-chunks.parquet")
    out = work / "baseline-out"
    warm = str(work / "baseline-warm.jsonl") if warm_up else "-"
    args = [str(work / "baseline-chunks.parquet"), str(cache), str(out), runtime, str(max_chunks), str(per_chunk), warm]
    subprocess.run(
        [sys.executable, "-c", _SCRIPT, *args], check=True, env={**os.environ, "PYTHONPATH": str(tree)}, cwd=tree
    )
    questions = pd.read_parquet(out.with_suffix(".parquet"))
    questions["form"] = "question"
    return questions, json.loads(out.with_suffix(".json").read_text())


def remove_worktree(work: Path) -> None:
    subprocess.run(["git", "-C", str(ROOT), "worktree", "remove", "--force", str(work / "baseline-tree")], check=False)
    subprocess.run(["git", "-C", str(ROOT), "worktree", "prune"], check=False)
