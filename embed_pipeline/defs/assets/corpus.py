"""Documents in, chunks out."""

import time

import dagster as dg
import pandas as pd

from embed_pipeline.config import ChunkingConfig, DocumentsConfig
from embed_pipeline.core.chunking import chunk_documents
from embed_pipeline.core.data_checks import check_chunks
from embed_pipeline.core.documents import load_documents
from embed_pipeline.core.versions import snapshot_origin, unreadable_files
from embed_pipeline.defs.checks import CHUNKS_CHECK, check_result, data_check
from embed_pipeline.defs.metadata import frame_metadata
from embed_pipeline.defs.partitions import corpus_versions
from embed_pipeline.defs.resources import PipelineResource


@dg.asset(partitions_def=corpus_versions, group_name="corpus", kinds={"pandas"})
def raw_documents(
    context: dg.AssetExecutionContext, config: DocumentsConfig, pipeline: PipelineResource
) -> pd.DataFrame:
    """Documents of this corpus version (txt, md, html, pdf files or a BEIR corpus.jsonl), read from its pinned
    copy of the docs path; a bad file is named by its path in the docs path."""
    started = time.perf_counter()
    pinned = pipeline.version_documents(context.partition_key)
    loaded = load_documents(
        pinned,
        on_error=config.on_error,
        max_chars=config.max_document_chars,
        shown_as=snapshot_origin(pipeline.docs_path),
        unreadable=unreadable_files(pinned),
    )
    for skipped in loaded.skipped:
        context.log.warning(f"Skipped {skipped.path}: {skipped.reason}")
    docs = loaded.documents
    context.add_output_metadata(
        {
            **frame_metadata(docs),
            "documents": len(docs),
            "skipped_files": len(loaded.skipped),
            "skipped": dg.MetadataValue.md("\n".join(f"- `{s.path}`: {s.reason}" for s in loaded.skipped) or "none"),
            "characters": int(docs["text"].str.len().sum()),
            "source": pipeline.docs_path,
            "pinned_copy": dg.MetadataValue.path(pipeline.store().address(pinned)),
            "seconds": round(time.perf_counter() - started, 2),
        }
    )
    return docs


@dg.asset(
    partitions_def=corpus_versions,
    group_name="corpus",
    kinds={"pandas"},
    check_specs=[
        data_check(CHUNKS_CHECK, "chunked_corpus", "No empty chunk, no id twice, no text twice in a document.")
    ],
)
def chunked_corpus(
    context: dg.AssetExecutionContext, config: ChunkingConfig, pipeline: PipelineResource, raw_documents: pd.DataFrame
):
    """Token-aware chunks of whole sentences with stable content-hash ids."""
    from transformers import AutoTokenizer

    started = time.perf_counter()
    tokenizer = AutoTokenizer.from_pretrained(pipeline.base_model_path())
    chunks = chunk_documents(raw_documents, tokenizer, config.settings())
    yield dg.Output(
        chunks,
        metadata={
            **frame_metadata(chunks),
            "chunks": len(chunks),
            "documents": int(chunks["doc_id"].nunique()),
            "tokens_mean": round(float(chunks["n_tokens"].mean()), 1),
            "tokens_max": int(chunks["n_tokens"].max()),
            "seconds": round(time.perf_counter() - started, 2),
            "preview": dg.MetadataValue.md(chunks[["chunk_id", "passage"]].head(5).to_markdown(index=False)),
        },
    )
    yield check_result(CHUNKS_CHECK, check_chunks(chunks))
