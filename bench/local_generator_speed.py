"""Benchmark: questions/s of the local generators on this machine, per runtime, at 1 and at 5 questions per
chunk, before (the code of bench/baseline.py's commit) and after (this checkout), with the round-trip pass
rate of what they wrote.

Each measurement asks about the same seeded N chunks of the bundled sample with a fresh cache (every call
made), after a warm-up call that loads the model. questions/s = samples generated / seconds (parsed or not);
round-trip pass rate = samples whose query parses and ranks its chunk in the BM25 top 10 / samples generated.
Writes bench/results/local_generator_speed.{json,md}.

    python bench/local_generator_speed.py --chunks 40 --generators smollm2 qwen2.5-coder-0.5b
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
from embed_pipeline.core.local_llm import llama_cpp_available  # noqa: E402
from embed_pipeline.core.question_filters import roundtrip_filter  # noqa: E402
from embed_pipeline.core.sdg import generate_questions  # noqa: E402
from embed_pipeline.defs.resources import SAMPLE_CORPUS  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results"
ROOT = Path(__file__).resolve().parents[1]


def after(generator: str, runtime: str, chunks, n: int, per_chunk: int, work: Path) -> tuple:
    settings = LLMSettings(model=generator_model(generator), local_runtime=runtime)
    generate_questions(chunks.iloc[:1], settings, work / f"warm-{generator}-{runtime}.jsonl")  # loads the model
    cache = work / f"{generator}-{runtime}-{per_chunk}.jsonl"
    result = generate_questions(chunks, settings, cache, questions_per_chunk=per_chunk, max_chunks=n, seed=42)
    return result.questions, result.stats["llm_samples_made"], result.stats["call_seconds"], result.stats


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--chunks", type=int, default=40)
    parser.add_argument("--generators", nargs="+", default=["smollm2"], choices=sorted(GENERATORS))
    parser.add_argument("--per-chunk", type=int, nargs="+", default=[1, 5])
    parser.add_argument("--skip-before", action="store_true", help="Measure this checkout only.")
    args = parser.parse_args()
    documents = load_documents(SAMPLE_CORPUS / "corpus.jsonl").documents
    chunks = chunk_documents(documents, AutoTokenizer.from_pretrained(base_model_path(None)))
    runtimes = ["transformers"] + (["llama_cpp"] if llama_cpp_available() else [])
    commit = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"], capture_output=True, text=True)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        try:
            for generator in args.generators:
                for runtime in runtimes:
                    for per_chunk in args.per_chunk:
                        versions = ["after"] + ([] if args.skip_before or generator != "smollm2" else ["before"])
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
    lines = [
        f"`{meta['command']}` on {meta['machine']}, {meta['date']}; {args.chunks} seeded chunks of the bundled sample; "
        "questions/s = samples generated / seconds after the model is loaded; round-trip pass = samples whose "
        "query parses and ranks its chunk in the BM25 top 10, over samples generated.",
        "",
        "| model | runtime | code (commit) | questions/chunk | questions/s | round-trip pass | parsed / samples | "
        "prompt tokens (from cache) |",
        "|---|---|---|---:|---:|---:|---|---|",
        *(
            f"| {r['model']} | {r['runtime']} | {r['code']} ({r['commit']}) | {r['questions_per_chunk']} | "
            f"{r['questions_per_s']} | {r['roundtrip_pass_rate']} | {r['parsed']} / {r['samples']} | "
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
