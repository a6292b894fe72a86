"""Dagster resources: where documents and artifacts live, and the one compute device."""

import hashlib
import json
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import dagster as dg

from embed_pipeline.core.device import base_model_path, load_bi_encoder, resolve_device
from embed_pipeline.core.documents import DocumentError
from embed_pipeline.core.encoders import CachedDocuments
from embed_pipeline.core.query_examples import SeedQuery, load_query_examples, seed_form_mix
from embed_pipeline.core.settings import TeacherSettings
from embed_pipeline.core.storage import ArtifactStore, shared_append_log
from embed_pipeline.core.versions import KEY_PREFIX, corpus_version_key, snapshot_documents

VERSIONS_DIR = "versions"
SAMPLE_CORPUS = Path(__file__).resolve().parents[1] / "sample_data" / "scifact_sample"


class PipelineResource(dg.ConfigurableResource):
    """Inputs and outputs of the pipeline: the documents, optional real queries, artifacts, base model."""

    docs_path: str
    artifacts_dir: str  # a folder, or an object-store URL such as s3://bucket/prefix
    workdir: str | None = None  # local working copy of an object store's artifacts (default: a temp folder)
    cache_sync_s: float = 10.0  # object store: how often a run uploads the LLM responses it paid for
    eval_beir_dir: str | None = None
    query_examples: str | None = (
        None  # a few real user queries (text, one a line, or queries.jsonl): the prompt's seeds
    )
    base_model: str | None = None
    query_prompt: str | None = None
    passage_prompt: str | None = None

    def store(self) -> ArtifactStore:
        return ArtifactStore(self.artifacts_dir, self.workdir)

    def artifacts(self, *parts: str) -> Path:
        """Where a step writes an artifact (its parent created): under the artifacts folder, or the local
        working copy of an object store (then `publish` uploads it)."""
        return self.store().local(*parts)

    def version_artifacts(self, version: str, *parts: str) -> Path:
        """A path under one corpus version's folder, ``versions/VERSION/``."""
        return self.artifacts(VERSIONS_DIR, version, *parts)

    def publish(self, local: str | Path) -> str:
        """Upload a finished artifact to an object store (nothing to do on disk); its address, which
        downstream steps give to `local_copy`."""
        return self.store().push(local)

    def local_copy(self, address: str) -> Path:
        """A local copy of a published artifact (the path itself on disk)."""
        return self.store().pull(address)

    def version_documents(self, version: str) -> Path:
        """The documents of corpus ``version``: its snapshot, taken from ``docs_path`` on first use (and
        published, so every machine reads the same copy). A content-hash version (``c-...``) must match the
        documents it pins, so it never names other text."""
        store = self.store()
        pinned = self.version_artifacts(version, "documents")
        if store.remote and store.exists(pinned):
            return store.pull(store.address(pinned))
        if not pinned.exists() and version.startswith(KEY_PREFIX):
            live = corpus_version_key(self.docs_path)
            if live != version:
                raise DocumentError(
                    f"corpus version {version} has no pinned documents and those at {self.docs_path} now hash "
                    f"to {live}: materialize version {live} instead (the documents sensor adds it), or restore "
                    "the documents"
                )
        snapshot_documents(self.docs_path, pinned)
        if store.remote:
            store.push(pinned)
        return pinned

    @contextmanager
    def llm_cache(self, run_id: str) -> Iterator[Path]:
        """The LLM response cache shared by every version and run (see `core.storage.shared_append_log`)."""
        with shared_append_log(self.store(), "cache/llm_responses", run_id, self.cache_sync_s) as path:
            yield path

    @contextmanager
    def embedding_cache(self, run_id: str) -> Iterator[Path]:
        """The embedding API's response cache (an api: teacher's vectors), shared like the LLM's."""
        with shared_append_log(self.store(), "cache/embedding_responses", run_id, self.cache_sync_s) as path:
            yield path

    @contextmanager
    def teacher_context(self, version: str, run_id: str, device: str, settings: TeacherSettings) -> Iterator:
        """What building teachers needs (`core.teachers.TeacherContext`) for one corpus version: passage vectors
        kept per model under the version's embeddings folder, the API and LLM caches open for the run."""
        from embed_pipeline.core.teachers import TeacherContext

        store, used = self.store(), []

        def passage_cache(identity: str) -> Path:
            """A teacher's vectors folder, fetched from an object store first (a teacher's corpus costs minutes)."""
            folder = self.version_artifacts(version, "embeddings", hashlib.sha256(identity.encode()).hexdigest()[:12])
            for name in (CachedDocuments.VECTORS, CachedDocuments.KEYS):
                if store.remote and store.exists(folder / name):
                    store.pull(store.address(folder / name), refresh=True)
            used.append(folder)
            return folder

        with self.embedding_cache(run_id) as api_cache, self.llm_cache(run_id) as llm_cache:
            yield TeacherContext(
                base_model=self.base_model_path(),
                device=device,
                query_prompt=self.query_prompt,
                passage_prompt=self.passage_prompt,
                base_cache=self.embeddings_cache(version, self.base_model_path()),
                passage_cache=passage_cache,
                api=settings.llm_settings(),
                api_cache=api_cache,
                api_batch_size=settings.api_batch_size,
                api_input_types=(settings.api_query_input_type, settings.api_document_input_type),
                llm_cache=llm_cache,
            )
        for folder in used if store.remote else []:  # so the next step (on any machine) encodes nothing again
            for name in (CachedDocuments.VECTORS, CachedDocuments.KEYS):
                if (folder / name).is_file():
                    store.push(folder / name)

    def seed_queries(self) -> list[SeedQuery]:
        """The users' example queries (`query_examples`), or none."""
        return load_query_examples(self.query_examples) if self.query_examples else []

    def embeddings_cache(self, version: str, model_path: str) -> Path:
        """Where one model's passage embeddings for this corpus version are kept (`CachedDocuments`), keyed by
        the model's path and the prompts: every stage then encodes a passage once per model."""
        identity = json.dumps([str(model_path), self.query_prompt, self.passage_prompt])
        return self.version_artifacts(version, "embeddings", hashlib.sha256(identity.encode()).hexdigest()[:12])

    def seed_forms(self) -> set[str] | None:
        """The query forms of the seed queries (validation questions of these forms choose the settings)."""
        return set(seed_form_mix(self.seed_queries())) or None

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


def env_seconds(variable: str, default: float) -> float:
    """A positive number of seconds from the environment, or ValueError naming the variable."""
    value = os.environ.get(variable) or str(default)
    try:
        seconds = float(value)
    except ValueError:
        seconds = -1.0
    if seconds <= 0:
        raise ValueError(f"{variable}={value!r} is not a positive number of seconds")
    return seconds


def default_pipeline_resource() -> PipelineResource:
    """From environment variables, falling back to the bundled SciFact sample and ./artifacts."""
    docs = os.environ.get("EMBED_PIPELINE_DOCS", str(SAMPLE_CORPUS / "corpus.jsonl"))
    default_eval = str(SAMPLE_CORPUS) if docs == str(SAMPLE_CORPUS / "corpus.jsonl") else None
    return PipelineResource(
        docs_path=docs,
        artifacts_dir=os.environ.get("EMBED_PIPELINE_ARTIFACTS", str(Path.cwd() / "artifacts")),
        workdir=os.environ.get("EMBED_PIPELINE_WORKDIR") or None,
        cache_sync_s=env_seconds("EMBED_PIPELINE_CACHE_SYNC_S", 10.0),
        eval_beir_dir=os.environ.get("EMBED_PIPELINE_EVAL_BEIR", default_eval) or None,
        query_examples=os.environ.get("EMBED_PIPELINE_QUERY_EXAMPLES") or None,
        base_model=os.environ.get("EMBED_PIPELINE_BASE_MODEL") or None,
        query_prompt=os.environ.get("EMBED_PIPELINE_QUERY_PROMPT") or None,
        passage_prompt=os.environ.get("EMBED_PIPELINE_PASSAGE_PROMPT") or None,
    )
