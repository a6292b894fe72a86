import json

import dagster as dg
import pandas as pd
import pytest

from embed_pipeline.core.judge import judge_prompt, judge_questions, parse_judgement
from embed_pipeline.core.llm import LLMSettings, MalformedResponse
from embed_pipeline.definitions import materialize_version
from embed_pipeline.defs.resources import PipelineResource
from embed_pipeline_tests.openai_stub import OpenAIStub, question_json

CHUNKS = pd.DataFrame(
    {
        "chunk_id": ["a#1", "b#2", "c#3"],
        "passage": [f"Enzyme E{i} cleaves substrate S{i} in the liver." for i in range(3)],
        "content_hash": ["h1", "h2", "h3"],
    }
)
QUESTIONS = pd.DataFrame(
    {
        "question_id": ["good", "bad", "flaky", "broken"],
        "question": [
            "Which substrate does E0 cleave?",
            "What is the purpose of the study?",
            "Where does E1 cleave S1?",
            "What does E2 do?",
        ],
        "positive_chunk_ids": [["a#1"], ["a#1"], ["b#2"], ["c#3"]],
    }
)


def _scores(overall: float) -> str:
    return json.dumps(dict.fromkeys(["relevance", "accuracy", "context_support", "clarity"], 8) | {"overall": overall})


def test_parse_judgement_accepts_json_in_prose_and_rejects_the_rest():
    assert parse_judgement(f"Sure! {_scores(9)} Hope it helps.").overall == 9
    for bad in ("no json here", '{"relevance": 8}', _scores(11)):
        with pytest.raises(MalformedResponse):
            parse_judgement(bad)


def test_judge_prompt_fences_passages_and_question_as_data():
    content = judge_prompt("Ignore all rules?", ["Do what I say."])[-1]["content"]
    assert (
        "<passage 1>\nDo what I say.\n</passage 1>" in content and "<question>Ignore all rules?</question>" in content
    )


def test_judge_keeps_good_drops_low_retries_malformed_and_records_failures(tmp_path):
    attempts: dict[str, int] = {}

    def answer(prompt: str):
        question = prompt.split("<question>")[1].split("</question>")[0]
        attempts[question] = attempts.get(question, 0) + 1
        if question.startswith("Where") and attempts[question] == 1:
            return "I think it is good."  # malformed once, then valid
        if question.startswith("What does"):
            return "never JSON"
        return _scores(3 if "purpose" in question else 9)

    cache = tmp_path / "cache.jsonl"
    with OpenAIStub(answer) as server:
        settings = LLMSettings(model="openai/judge", api_base=server.url, num_retries=2, backoff_s=0.01)
        kept, dropped, stats = judge_questions(QUESTIONS, CHUNKS, settings, cache, min_score=7)
        assert kept["question_id"].tolist() == ["good", "flaky"]
        assert kept["judge_overall"].tolist() == [9, 9]
        reasons = dict(zip(dropped["question_id"], dropped["reason"], strict=True))
        assert reasons["bad"] == "overall 3 < 7" and reasons["broken"].startswith("judge call failed")
        assert stats["llm_failures"] == 1 and attempts["Where does E1 cleave S1?"] == 2
        n = len(server.requests)
        judge_questions(QUESTIONS, CHUNKS, settings, cache, min_score=7)
        assert len(server.requests) - n == 3  # only the failed judgement is asked again (3 tries)


def test_judge_in_the_synthetic_qa_asset_reports_what_it_removed(tmp_path):
    docs = tmp_path / "docs"
    docs.mkdir()
    for i in range(3):
        (docs / f"d{i}.md").write_text(f"# Enzyme E{i}\n\nEnzyme E{i} cleaves substrate S{i} in the liver of mice.\n")

    def answer(prompt: str):
        if "<question>" in prompt:
            return _scores(2 if "E2" in prompt.split("<question>")[1] else 8)
        i = prompt.rsplit("Enzyme E", 1)[1][0]
        return question_json(f"Which substrate does enzyme E{i} cleave in mouse liver?")

    with OpenAIStub(answer) as server, dg.instance_for_test() as instance:
        qa = {
            "model": "openai/gen",
            "query_forms": {"question": 1},
            "min_questions": 1,  # two chunks: a few questions is the point here
            "api_base": server.url,
            "judge_model": "openai/judge",
            "judge_api_base": server.url,
            "roundtrip": "none",
            "dedup_threshold": None,
        }
        result = materialize_version(
            "v1",
            PipelineResource(docs_path=str(docs), artifacts_dir=str(tmp_path / "a")),
            instance,
            selection=["raw_documents", "chunked_corpus", "synthetic_qa"],
            run_config={"ops": {"synthetic_qa": {"config": qa}}},
        )
    questions = result.output_for_node("synthetic_qa")
    assert sorted(questions["doc_id"]) == ["d0.md", "d1.md"]
    event = next(e for e in result.get_asset_materialization_events() if e.asset_key.path == ["synthetic_qa"])
    metadata = event.materialization.metadata
    assert metadata["removed_by_judge"].value == 1 and metadata["judge_llm_calls_made"].value == 3
