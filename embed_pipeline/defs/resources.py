"""Dagster resources: where documents and artifacts live, and the one compute device."""

import os
from pathlib import Path

import dagster as dg

from embed_pipeline.core.device import base_model_path, load_bi_encoder, resolve_device
from embed_pipeline.core.documents import DocumentError
from embed_pipeline.core.versions import KEY_PREFIX, corpus_version_key, snapshot_documents

VERSIONS_DIR = "versions"
SAMPLE_CORPUS = Path(__file__).resolve().parents[1] / "sample_data" / "scifact_sample"
GENERAL_OOD = Path(__file__).resolve().parents[1] / "sample_data" / "general_ood"


class PipelineResource(dg.ConfigurableResource):
    """Inputs and outputs of the pipeline: the documents, optional real queries, artifacts, base model."""

    docs_path: str
    artifacts_dir: str
    eval_beir_dir: str | None = None
    base_model: str | None = None
    query_prompt: str | None = None
    passage_prompt: str | None = None

    def artifacts(self, *parts: str) -> Path:
        """A path under the artifacts folder (its parent created); shared by every corpus version."""
        path = Path(self.artifacts_dir, *parts)
        path.parent.mkdir(parents=True, exist_ok=True)
        return path

    def version_artifacts(self, version: str, *parts: str) -> Path:
        """A path under one corpus version's folder, ``versions/VERSION/``."""
        return self.artifacts(VERSIONS_DIR, version, *parts)

    def version_documents(self, version: str) -> Path:
        """The documents of corpus ``version``: its snapshot, taken from ``docs_path`` on first use. A
        content-hash version (``c-...``) must match the documents it pins, so it never names other text."""
        pinned = self.version_artifacts(version, "documents")
        if not pinned.exists() and version.startswith(KEY_PREFIX):
            live = corpus_version_key(self.docs_path)
            if live != version:
                raise DocumentError(
                    f"corpus version {version} has no pinned documents and those at {self.docs_path} now hash "
                    f"to {live}: materialize version {live} instead (the documents sensor adds it), or restore "
                    "the documents"
                )
        return snapshot_documents(self.docs_path, pinned)

    def base_model_path(self) -> str:
        return base_model_path(self.base_model)

    def base_bi_encoder(self, device: str):
        """The base model with the configured query/passage prompts (see `core.device.load_bi_encoder`)."""
        return load_bi_encoder(self.base_model_path(), device, self.query_prompt, self.passage_prompt)


class TorchDeviceResource(dg.ConfigurableResource):
    """The single accelerator: steps using it run in pool `gpu` (limit 1); CPU when no CUDA is present."""

    device: str = "auto"

    def torch_device(self) -> str:
        return resolve_device(self.device)


def default_pipeline_resource() -> PipelineResource:
    """From environment variables, falling back to the bundled SciFact sample and ./artifacts."""
    docs = os.environ.get("EMBED_PIPELINE_DOCS", str(SAMPLE_CORPUS / "corpus.jsonl"))
    default_eval = str(SAMPLE_CORPUS) if docs == str(SAMPLE_CORPUS / "corpus.jsonl") else None
    return PipelineResource(
        docs_path=docs,
        artifacts_dir=os.environ.get("EMBED_PIPELINE_ARTIFACTS", str(Path.cwd() / "artifacts")),
        eval_beir_dir=os.environ.get("EMBED_PIPELINE_EVAL_BEIR", default_eval) or None,
        base_model=os.environ.get("EMBED_PIPELINE_BASE_MODEL") or None,
        query_prompt=os.environ.get("EMBED_PIPELINE_QUERY_PROMPT") or None,
        passage_prompt=os.environ.get("EMBED_PIPELINE_PASSAGE_PROMPT") or None,
    )
