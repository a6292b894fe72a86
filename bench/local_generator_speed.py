"""Benchmark: questions/s of the offline generator (SmolLM2-135M) with each installed local runtime.

Asks for one question about each of N seeded chunks of the bundled sample, after a warm-up call that
loads the model (load time reported separately), with a fresh cache per runtime so every call is made.
Writes bench/results/local_generator_speed.{json,md}.

    python bench/local_generator_speed.py --chunks 80
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

from transformers import AutoTokenizer

from embed_pipeline.config import ChunkingConfig, SyntheticQAConfig
from embed_pipeline.core.chunking import chunk_documents
from embed_pipeline.core.device import base_model_path
from embed_pipeline.core.documents import load_documents
from embed_pipeline.core.local_llm import llama_cpp_available
from embed_pipeline.core.sdg import generate_questions
from embed_pipeline.defs.resources import SAMPLE_CORPUS

RESULTS = Path(__file__).resolve().parent / "results"


def measure(runtime: str, chunks, n: int, work: Path) -> dict:
    settings = SyntheticQAConfig(local_runtime=runtime).llm_settings()
    started = time.perf_counter()
    generate_questions(chunks.iloc[:1], settings, work / f"warmup-{runtime}.jsonl")  # loads the model
    load_s = time.perf_counter() - started
    started = time.perf_counter()
    result = generate_questions(chunks.iloc[1:], settings, work / f"{runtime}.jsonl", max_chunks=n, seed=7)
    seconds = time.perf_counter() - started
    stats = result.stats
    return {
        "runtime": runtime,
        "load_and_first_call_s": round(load_s, 1),
        "calls": stats["llm_calls_made"],
        "seconds": round(seconds, 1),
        "questions_per_s": round(stats["llm_calls_made"] / seconds, 2),
        "accepted": stats["accepted"],
        "completion_tokens": stats["completion_tokens"],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--chunks", type=int, default=80)
    args = parser.parse_args()
    documents = load_documents(SAMPLE_CORPUS / "corpus.jsonl").documents
    chunks = chunk_documents(
        documents, AutoTokenizer.from_pretrained(base_model_path(None)), **ChunkingConfig().model_dump()
    )
    runtimes = ["transformers"] + (["llama_cpp"] if llama_cpp_available() else [])
    with tempfile.TemporaryDirectory() as work:
        rows = [measure(runtime, chunks, args.chunks, Path(work)) for runtime in runtimes]
    meta = {
        "command": "python " + " ".join(sys.argv),
        "machine": f"{os.cpu_count()} CPU cores, no GPU",
        "date": time.strftime("%Y-%m-%d"),
        "rows": rows,
    }
    lines = [
        f"`{meta['command']}` on {meta['machine']}, {meta['date']}; one question per chunk of the bundled sample.",
        "",
        "| runtime | load + first call s | calls | seconds | questions/s | parsed questions |",
        "|---|---:|---:|---:|---:|---:|",
        *(
            f"| {r['runtime']} | {r['load_and_first_call_s']} | {r['calls']} | {r['seconds']} | "
            f"{r['questions_per_s']} | {r['accepted']} |"
            for r in rows
        ),
    ]
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "local_generator_speed.json").write_text(json.dumps(meta, indent=2))
    (RESULTS / "local_generator_speed.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
