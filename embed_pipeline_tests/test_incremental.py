"""A new corpus version pays the LLM only for its new chunks (Dagster assets, real litellm path, local server)."""

import re

import dagster as dg
import pandas as pd

from embed_pipeline.core.versions import corpus_version_key
from embed_pipeline.definitions import materialize_version
from embed_pipeline.defs.resources import PipelineResource
from embed_pipeline_tests.openai_stub import OpenAIStub, question_json

TOPICS = ["kinase signalling", "bone remodelling", "viral entry", "lipid transport"]


def _write_doc(folder, i: int, topic: str) -> None:
    sentences = " ".join(f"Finding {j} about {topic} in study {i} concerns marker M{i}{j}." for j in range(6))
    (folder / f"doc{i}.md").write_text(f"# Study {i} on {topic}\n\n{sentences}\n")


def test_two_corpus_versions_share_cached_questions_for_their_shared_chunks(tmp_path):
    """Two versions (the documents before and after one was added), built one after the other as a backfill
    builds them: the second calls the LLM for its new chunks only, and the first keeps its own artifacts."""
    docs = tmp_path / "docs"
    docs.mkdir()
    for i, topic in enumerate(TOPICS[:3]):
        _write_doc(docs, i, topic)
    first_version = corpus_version_key(docs)
    _write_doc(docs, 3, TOPICS[3])
    second_version = corpus_version_key(docs)
    (docs / "doc3.md").rename(tmp_path / "doc3.md")  # back to the first version's documents
    assert corpus_version_key(docs) == first_version != second_version

    def answer(prompt: str) -> str:
        study = re.search(r"Study (\d+) on", prompt).group(1)
        return question_json(f"Which marker did study {study} report for its main finding?")

    selection = ["raw_documents", "chunked_corpus", "synthetic_qa"]
    artifacts = tmp_path / "artifacts"
    pipeline = PipelineResource(docs_path=str(docs), artifacts_dir=str(artifacts))
    with OpenAIStub(answer) as server, dg.instance_for_test() as instance:
        # The stub's questions are near-identical by design: the filters are not under test here.
        llm = {
            "model": "openai/stub",
            "api_base": server.url,
            "query_forms": {"question": 1},
            "min_questions": 1,  # a few chunks: a handful of questions is the point here
            "roundtrip": "none",
            "dedup_threshold": None,
        }
        run_config = {"ops": {"synthetic_qa": {"config": llm}}}

        first = materialize_version(first_version, pipeline, instance, selection=selection, run_config=run_config)
        n_first = len(server.requests)
        chunks_before = set(first.output_for_node("chunked_corpus")["chunk_id"])
        assert n_first == len(chunks_before) > 0

        (tmp_path / "doc3.md").rename(docs / "doc3.md")
        second = materialize_version(second_version, pipeline, instance, selection=selection, run_config=run_config)
        chunks_after = second.output_for_node("chunked_corpus")
        new_chunks = chunks_after[~chunks_after["chunk_id"].isin(chunks_before)]
        new_prompts = server.requests[n_first:]
        assert instance.get_dynamic_partitions("corpus_versions") == [first_version, second_version]

    assert set(new_chunks["doc_id"]) == {"doc3.md"}
    assert len(new_prompts) == len(new_chunks)
    assert all("Study 3 on lipid transport" in p for p in new_prompts)
    questions = second.output_for_node("synthetic_qa")
    assert set(questions["doc_id"]) == {"doc0.md", "doc1.md", "doc2.md", "doc3.md"}
    events = second.get_asset_materialization_events()
    metadata = next(e for e in events if e.asset_key.path == ["synthetic_qa"]).materialization.metadata
    assert metadata["llm_calls_cached"].value == len(chunks_before)
    assert metadata["llm_calls_made"].value == len(new_chunks)
    # Each version keeps its own pinned documents and artifacts.
    first_dir, second_dir = artifacts / "versions" / first_version, artifacts / "versions" / second_version
    assert sorted(p.name for p in (first_dir / "documents").iterdir()) == ["doc0.md", "doc1.md", "doc2.md"]
    assert (second_dir / "documents" / "doc3.md").is_file()
    assert set(pd.read_parquet(first_dir / "synthetic_qa.parquet")["doc_id"]) == {"doc0.md", "doc1.md", "doc2.md"}


def test_api_key_never_reaches_logs_metadata_or_artifacts(tmp_path, monkeypatch):
    secret = "sk-live-do-not-leak-1234567890"
    monkeypatch.setenv("EMBED_TEST_LLM_KEY", secret)
    docs = tmp_path / "docs"
    docs.mkdir()
    _write_doc(docs, 0, TOPICS[0])
    _write_doc(docs, 1, TOPICS[1])

    def answer(prompt: str) -> str:
        study = re.search(r"Study (\d+) on", prompt).group(1)
        return question_json(f"Which marker did study {study} report for its main finding?")

    artifacts = tmp_path / "artifacts"
    with OpenAIStub(answer) as server, dg.instance_for_test() as instance:
        qa = {
            "model": "openai/stub",
            "api_base": server.url,
            "query_forms": {"question": 1},
            "min_questions": 1,  # a few chunks: a handful of questions is the point here
            "api_key_env": "EMBED_TEST_LLM_KEY",
            "roundtrip": "none",
        }
        result = materialize_version(
            "v1",
            PipelineResource(docs_path=str(docs), artifacts_dir=str(artifacts)),
            instance,
            selection=["raw_documents", "chunked_corpus", "synthetic_qa"],
            run_config={"ops": {"synthetic_qa": {"config": qa}}},
        )
        assert result.success and server.authorizations[0] == f"Bearer {secret}"  # the key was really used
        event_log = "\n".join(str(record) for record in instance.all_logs(result.run_id))
    assert secret not in event_log
    for path in artifacts.rglob("*"):
        if path.is_file():
            assert secret.encode() not in path.read_bytes(), path
