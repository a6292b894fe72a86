"""Multi-hop questions: written over neighbouring chunks, every supporting chunk a positive after unrolling."""

import pandas as pd
from sentence_transformers import SentenceTransformer
from transformers import AutoTokenizer

from embed_pipeline.core.chunking import chunk_documents
from embed_pipeline.core.device import base_model_path
from embed_pipeline.core.llm import LLMSettings
from embed_pipeline.core.mining import mine_negatives, unroll_training_rows
from embed_pipeline.core.sdg import generate_questions, generation_jobs
from embed_pipeline.core.settings import ChunkingSettings, MiningSettings
from embed_pipeline_tests.openai_stub import OpenAIStub, question_json

FILLER = [
    "Cats sleep for most of the day in warm places.",
    "The Nile flows north into the Mediterranean Sea.",
    "Copper conducts electricity better than iron does.",
    "Volcanic soil is rich in minerals that plants need.",
    "Glaciers carve U-shaped valleys as they move downhill.",
]


def _corpus() -> pd.DataFrame:
    trial = " ".join(
        [
            "The VITAL trial enrolled 400 adults with type 2 diabetes across twelve hospitals in Norway.",
            *[f"Site {i} recruited patients between 2015 and 2017 under the same protocol." for i in range(12)],
            "Patients given drug X lost on average 3 kg more than those on placebo after one year.",
        ]
    )
    docs = [{"doc_id": "trial.md", "title": "", "text": trial}]
    docs += [{"doc_id": f"filler{i}.md", "title": "", "text": t} for i, t in enumerate(FILLER)]
    return pd.DataFrame(docs)


def test_multihop_question_has_every_supporting_chunk_as_a_positive_after_unrolling(tmp_path):
    tokenizer = AutoTokenizer.from_pretrained(base_model_path(None))
    chunks = chunk_documents(_corpus(), tokenizer, ChunkingSettings(max_tokens=64, overlap_sentences=0))
    trial_chunks = chunks[chunks["doc_id"] == "trial.md"]
    assert len(trial_chunks) >= 3

    def answer(prompt: str) -> str:
        if "<passage 2>" in prompt:
            return question_json(
                "How much weight did the adults with type 2 diabetes in the VITAL trial lose on drug X?", "causal", 4
            )
        return question_json("Where did the VITAL trial recruit its patients?")

    with OpenAIStub(answer) as server:
        settings = LLMSettings(model="openai/stub", api_base=server.url)
        result = generate_questions(
            chunks,
            settings,
            tmp_path / "cache.jsonl",
            max_chunks=None,
            multihop_per_document=1,
            form_mix={"question": 1},
        )
    multihop = result.questions[result.questions["hops"] > 1]
    assert len(multihop) == 1 and result.stats["accepted_multihop"] == 1
    positives = list(multihop["positive_chunk_ids"].iloc[0])
    assert len(positives) == multihop["hops"].iloc[0] in (2, 3)
    ordered = trial_chunks.sort_values("chunk_index")["chunk_id"].tolist()
    start = ordered.index(positives[0])
    assert positives == ordered[start : start + len(positives)]  # neighbouring chunks of one document

    model = SentenceTransformer(base_model_path(None), device="cpu")
    mined = mine_negatives(multihop, chunks, model, MiningSettings(num_mined=3))
    rows = unroll_training_rows(mined, chunks, num_negatives=2)
    passage_of = dict(zip(chunks["chunk_id"], chunks["passage"], strict=True))
    assert sorted(rows["positive"]) == sorted(passage_of[c] for c in positives)
    negatives = set(rows[["negative_1", "negative_2"]].to_numpy().ravel())
    assert not negatives & {passage_of[c] for c in positives}


def test_multihop_windows_are_stable_when_other_documents_are_added():
    tokenizer = AutoTokenizer.from_pretrained(base_model_path(None))
    chunks = chunk_documents(_corpus(), tokenizer, ChunkingSettings(max_tokens=64, overlap_sentences=0))
    grown = pd.concat([chunks, chunks.assign(doc_id="copy.md", chunk_id=chunks["chunk_id"] + "-copy")])

    def windows(frame):
        jobs = generation_jobs(frame, frame, 1, 2, seed=42)
        return sorted(j.chunk_ids for j in jobs if j.hops > 1 and j.doc_id == "trial.md")

    assert windows(chunks) == windows(grown) and len(windows(chunks)) == 2
