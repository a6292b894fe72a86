"""Benchmark: questions/s of the local generators on this machine, per runtime (transformers, xllamacpp, and
llama_cpp when installed), at 1 and at 5 questions per chunk, before (the code of bench/baseline.py's commit;
SmolLM2 on the runtimes it knew) and after (this checkout), with the round-trip pass rate of what they wrote.

Each measurement asks about the same seeded N chunks of the bundled sample with a fresh cache (every call
made), after a warm-up call that loads the model. questions/s = samples generated / seconds (parsed or not);
round-trip pass rate = samples whose query parses and ranks its chunk in the BM25 top 10 / samples generated.
Merges its rows into bench/results/local_generator_speed.{json,md} (a row of the same model, runtime,
questions per chunk and code replaces the earlier one; the others stay, with their commit and date).

    python bench/local_generator_speed.py --chunks 40 --generators smollm2 qwen2.5-coder-1.5b \
        --runtimes transformers xllamacpp
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from transformers import AutoTokenizer

sys.path.insert(0, str(Path(__file__).resolve().parent))

from baseline import BASELINE_COMMIT, baseline_generation, remove_worktree  # noqa: E402
from generator_models import GENERATORS, generator_model  # noqa: E402

from embed_pipeline.core.chunking import chunk_documents  # noqa: E402
from embed_pipeline.core.device import base_model_path  # noqa: E402
from embed_pipeline.core.documents import load_documents  # noqa: E402
from embed_pipeline.core.llm import LLMSettings  # noqa: E402
from embed_pipeline.core.local_llm import llama_cpp_available, xllamacpp_available  # noqa: E402
from embed_pipeline.core.question_filters import roundtrip_filter  # noqa: E402
from embed_pipeline.core.sdg import generate_questions  # noqa: E402
from embed_pipeline.defs.resources import SAMPLE_CORPUS  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results"
ROOT = Path(__file__).resolve().parents[1]
BASELINE_RUNTIMES = ("transformers", "llama_cpp")  # those the baseline commit's code has


def after(generator: str, runtime: str, chunks, n: int, per_chunk: int, work: Path) -> tuple:
    settings = LLMSettings(model=generator_model(generator), local_runtime=runtime)
    generate_questions(chunks.iloc[:1], settings, work / f"warm-{generator}-{runtime}.jsonl")  # loads the model
    cache = work / f"{generator}-{runtime}-{per_chunk}.jsonl"
    result = generate_questions(chunks, settings, cache, questions_per_chunk=per_chunk, max_chunks=n, seed=42)
    return result.questions, result.stats["llm_samples_made"], result.stats["call_seconds"], result.stats


def _measured(row: dict) -> tuple:
    return row["model"], row["runtime"], row["questions_per_chunk"], row["code"]


def merged_rows(path: Path, new: list[dict]) -> list[dict]:
    """The rows already in `path` with `new` in place of those of the same model, runtime, questions per chunk
    and code (new ones last)."""
    replaced = {_measured(r) for r in new}
    old = json.loads(path.read_text()) if path.exists() else []
    return [r for r in old if _measured(r) not in replaced] + new


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--chunks", type=int, default=40)
    parser.add_argument("--generators", nargs="+", default=["smollm2"], choices=sorted(GENERATORS))
    parser.add_argument("--per-chunk", type=int, nargs="+", default=[1, 5])
    installed = ["transformers"] + ["xllamacpp"] * xllamacpp_available() + ["llama_cpp"] * llama_cpp_available()
    parser.add_argument("--runtimes", nargs="+", default=installed, choices=["transformers", "xllamacpp", "llama_cpp"])
    parser.add_argument("--skip-before", action="store_true", help="Measure this checkout only.")
    args = parser.parse_args()
    documents = load_documents(SAMPLE_CORPUS / "corpus.jsonl").documents
    chunks = chunk_documents(documents, AutoTokenizer.from_pretrained(base_model_path(None)))
    commit = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"], capture_output=True, text=True)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        try:
            for generator in args.generators:
                for runtime in args.runtimes:
                    for per_chunk in args.per_chunk:
                        baseline = not args.skip_before and generator == "smollm2" and runtime in BASELINE_RUNTIMES
                        versions = ["after"] + ["before"] * baseline
                        for version in versions:
                            if version == "before":
                                cache = work / f"before-{runtime}-{per_chunk}.jsonl"
                                questions, stats = baseline_generation(
                                    chunks, args.chunks, cache, runtime, work, per_chunk, warm_up=True
                                )
                                made, seconds = stats["llm_calls_made"], stats["call_seconds"]
                            else:
                                questions, made, seconds, stats = after(
                                    generator, runtime, chunks, args.chunks, per_chunk, work
                                )
                            passed, _ = roundtrip_filter(questions, chunks, top_k=10)
                            row = {
                                "model": generator,
                                "runtime": runtime,
                                "questions_per_chunk": per_chunk,
                                "questions_per_s": round(made / seconds, 2),
                                "roundtrip_pass_rate": round(len(passed) / made, 3),
                                "commit": BASELINE_COMMIT if version == "before" else commit.stdout.strip(),
                                "code": version,
                                "date": time.strftime("%Y-%m-%d"),
                                "samples": made,
                                "parsed": len(questions),
                                "seconds": round(seconds, 1),
                                "prompt_tokens": stats.get("prompt_tokens"),
                                "cached_prompt_tokens": stats.get("cached_prompt_tokens"),
                            }
                            rows.append(row)
                            print(json.dumps(row), flush=True)
        finally:
            remove_worktree(work)
    meta = {
        "command": "python " + " ".join(sys.argv),
        "machine": f"{os.cpu_count()} CPU cores, no GPU",
        "date": time.strftime("%Y-%m-%d"),
        "chunks": args.chunks,
        "rows": rows,
    }
    rows = merged_rows(RESULTS / "local_generator_speed.json", rows)
    lines = [
        f"Last run: `{meta['command']}` on {meta['machine']}, {meta['date']}; {args.chunks} seeded chunks of the "
        "bundled sample; rows of earlier runs keep their commit and date (compare speeds within one run only). "
        "questions/s = samples generated / seconds after the model is loaded; round-trip pass = samples whose "
        "query parses and ranks its chunk in the BM25 top 10, over samples generated.",
        "",
        "| model | runtime | code (commit, date) | questions/chunk | questions/s | round-trip pass | "
        "parsed / samples | prompt tokens (from cache) |",
        "|---|---|---|---:|---:|---:|---|---|",
        *(
            f"| {r['model']} | {r['runtime']} | {r['code']} ({r['commit']}{', ' + r['date'] if 'date' in r else ''}) | "
            f"{r['questions_per_chunk']} | {r['questions_per_s']} | {r['roundtrip_pass_rate']} | "
            f"{r['parsed']} / {r['samples']} | "
            f"{r['prompt_tokens']} ({r['cached_prompt_tokens'] if r['cached_prompt_tokens'] is not None else '–'}) |"
            for r in rows
        ),
    ]
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "local_generator_speed.json").write_text(json.dumps(rows, indent=2))
    (RESULTS / "local_generator_speed.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
