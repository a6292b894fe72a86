import pandas as pd
import pytest
from transformers import AutoTokenizer

from embed_pipeline.core.chunking import chunk_documents
from embed_pipeline.core.device import base_model_path
from embed_pipeline.core.document_pairs import document_pairs, positive_without_anchor, with_document_pairs
from embed_pipeline.core.documents import load_documents
from embed_pipeline.core.settings import ChunkingSettings

GUIDE = """# Deploying the billing service

The billing service runs as three containers behind the gateway. Each container reads its settings from the
environment at start-up.

## Rotating the payment provider keys

Keys expire every ninety days and the provider sends a warning a week before. Create the new key in the
provider's console first. Store it in the vault under the billing path. Restart the containers one at a time so
that payments never stop.
"""


@pytest.fixture(scope="module")
def chunks(tmp_path_factory):
    folder = tmp_path_factory.mktemp("docs")
    (folder / "guide.md").write_text(GUIDE)
    (folder / "faq.html").write_text(
        "<html><head><title>Billing questions from customers</title></head><body>"
        "<h2>Why was my card charged twice today</h2><p>A pending authorisation shows until the bank releases it. "
        "It disappears within three days. Only one charge is ever settled.</p></body></html>"
    )
    documents = load_documents(folder).documents
    return chunk_documents(
        documents, AutoTokenizer.from_pretrained(base_model_path(None)), ChunkingSettings(max_tokens=64)
    )


def test_markdown_and_html_headings_reach_the_chunks(chunks):
    assert "Rotating the payment provider keys" in set(chunks["heading"])
    assert "Why was my card charged twice today" in set(chunks["heading"])


def test_each_source_yields_the_right_rows(chunks):
    titles = document_pairs(chunks, ["title"])
    assert set(titles["question"]) == {"Deploying the billing service", "Billing questions from customers"}
    guide = titles[titles["question"] == "Deploying the billing service"].iloc[0]
    assert guide["positive_chunk_ids"] == list(chunks.loc[chunks["doc_id"] == guide["doc_id"], "chunk_id"])

    headings = document_pairs(chunks, ["heading"])
    assert set(headings["question"]) == {"Rotating the payment provider keys", "Why was my card charged twice today"}
    section = headings[headings["question"] == "Rotating the payment provider keys"].iloc[0]
    in_section = chunks[chunks["heading"] == "Rotating the payment provider keys"]["chunk_id"].tolist()
    assert section["positive_chunk_ids"] == in_section

    cloze = document_pairs(chunks, ["cloze"])
    assert not cloze.empty and (cloze["source"] == "cloze").all()
    for row in cloze.itertuples():
        chunk = chunks.set_index("chunk_id").loc[row.positive_chunk_ids[0]]
        assert row.question in chunk["text"]
        positive = positive_without_anchor("cloze", row.question, chunk.to_dict())
        assert row.question not in positive and len(positive) > 20


def test_positives_lose_the_text_their_anchor_came_from():
    chunk = {
        "text": "Keys expire. Make a new one. Restart.",
        "passage": "Guide\n## Rotating keys\nKeys expire. Make a new one.",
    }
    assert positive_without_anchor("title", "Guide", chunk) == chunk["text"]
    assert "Rotating keys" not in positive_without_anchor("heading", "Rotating keys", chunk)
    assert positive_without_anchor("llm", "Why do keys expire?", chunk) == chunk["passage"]


def test_pairs_come_only_from_training_documents_and_fill_the_share(chunks):
    docs = sorted(chunks["doc_id"].unique())
    splits = pd.DataFrame(
        {
            "question_id": ["q1", "q2"],
            "question": ["how do I rotate keys", "why two charges"],
            "positive_chunk_ids": [[chunks["chunk_id"].iloc[0]], [chunks["chunk_id"].iloc[-1]]],
            "doc_id": docs,
            "split": ["train", "test"],
        }
    )
    combined = with_document_pairs(splits, chunks, ["title", "heading", "cloze"], share=0.5)
    added = combined[combined["source"] != "llm"]
    assert len(added) == 1 and set(added["doc_id"]) == {docs[0]}  # one pair per LLM question; test doc unused
    everything = with_document_pairs(splits, chunks, ["title", "heading", "cloze"], share=1.0)
    assert len(everything) > 2 and docs[1] not in set(everything.loc[everything["source"] != "llm", "doc_id"])
    assert len(with_document_pairs(splits, chunks, [], share=0.5)) == 1
    with pytest.raises(ValueError, match="unknown document pair"):
        document_pairs(chunks, ["abstract"])
