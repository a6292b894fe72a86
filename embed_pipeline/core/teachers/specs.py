"""Naming teachers: one string per teacher, as `--teacher` and `teacher.teacher` take it, and building the
teacher it names.

    bm25                               BM25
    base                               the student's base model (zero-shot reference)
    embeddinggemma-300m                an offline model (`embed-pipeline fetch-model NAME`; also offline:NAME)
    BAAI/bge-base-en-v1.5, ./folder    any sentence-transformers model (Hugging Face id or folder)
    api:openai/text-embedding-3-small  an embedding API through litellm (teacher.api_base, api_key_env)
    cross-encoder:PATH_OR_ID           a cross-encoder (reranks)
    llm:openai/gpt-4o-mini             an LLM grading relevance 0-3 (reranks; cached)
    trained-cross-encoder              a cross-encoder trained here from the base model on the mined pairs
    bm25@0.3+embeddinggemma-300m@0.7   a weighted fusion; without weights a two-teacher fusion gets its BM25
                                       weight chosen on validation, more members weigh equally
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from embed_pipeline.core.llm import LLMSettings
from embed_pipeline.core.offline_models import OFFLINE_MODELS, offline_model_path
from embed_pipeline.core.teachers.models import (
    BiEncoderTeacher,
    BM25Teacher,
    CallableTeacher,
    CrossEncoderTeacher,
    FusionTeacher,
    Teacher,
)

RERANK_ONLY = ("cross-encoder", "llm", "trained-cross-encoder")


class TeacherUnavailable(RuntimeError):
    """The teacher cannot be built here (an offline model not fetched, no API key variable, ...)."""


@dataclass(frozen=True)
class TeacherSpec:
    """A parsed teacher name: its kind, the model it names, or a fusion's (member, weight or None) list."""

    kind: str
    model: str | None = None
    members: tuple[tuple[TeacherSpec, float | None], ...] = ()

    @property
    def text(self) -> str:
        if self.kind == "fusion":
            return "+".join(m.text + ("" if w is None else f"@{w:g}") for m, w in self.members)
        prefix = {"api": "api:", "cross-encoder": "cross-encoder:", "llm": "llm:"}.get(self.kind, "")
        return f"{prefix}{self.model}" if self.model else self.kind


def parse_teacher(text: str) -> TeacherSpec:
    """The spec `text` names (module docstring); ValueError saying what is wrong with it."""
    text = text.strip()
    if not text:
        raise ValueError("a teacher name is empty")
    if "+" in text:
        members = []
        for part in text.split("+"):
            name, _, weight = part.strip().rpartition("@") if "@" in part else (part.strip(), "", "")
            member = parse_teacher(name)
            if member.kind == "fusion":
                raise ValueError(f"{text!r}: a fusion cannot contain a fusion")
            try:
                value = float(weight) if weight else None
            except ValueError:
                raise ValueError(f"{text!r}: weight {weight!r} of {name!r} is not a number") from None
            if value is not None and value < 0:
                raise ValueError(f"{text!r}: weight {value} of {name!r} is negative")
            members.append((member, value))
        if len({w is None for _, w in members}) > 1:
            raise ValueError(f"{text!r}: give every member a weight (@w) or none")
        return TeacherSpec("fusion", members=tuple(members))
    if text in ("bm25", "base", "trained-cross-encoder"):
        return TeacherSpec(text)
    for prefix, kind in (("api:", "api"), ("cross-encoder:", "cross-encoder"), ("llm:", "llm")):
        if text.startswith(prefix):
            if not text.removeprefix(prefix):
                raise ValueError(f"{text!r}: name the model after {prefix!r}")
            return TeacherSpec(kind, text.removeprefix(prefix))
    name = text.removeprefix("offline:")
    if text.startswith("offline:") and name not in OFFLINE_MODELS:
        raise ValueError(f"{text!r}: no offline model {name!r} (offline models: {sorted(OFFLINE_MODELS)})")
    return TeacherSpec("offline" if name in OFFLINE_MODELS else "bi-encoder", name)


@dataclass
class TeacherContext:
    """What building a teacher needs: the student's base model and prompts, the device, where passage vectors
    of a model are kept (`passage_cache(identity)`, per corpus version), how an embedding API or LLM is reached
    and cached, and how the trained cross-encoder is made."""

    base_model: str
    device: str = "cpu"
    query_prompt: str | None = None
    passage_prompt: str | None = None
    base_cache: Path | None = None  # the base model's passage vectors (the miner's)
    passage_cache: Callable[[str], Path] | None = None
    api: LLMSettings | None = None
    api_cache: Path | None = None
    api_batch_size: int = 64
    api_input_types: tuple[str | None, str | None] = (None, None)
    llm_cache: Path | None = None
    trained_cross_encoder: Callable[[], str] | None = None
    built: dict[str, Teacher] = field(default_factory=dict)


def vectors_identity(name: str, path: str, document_prompt: str | None, dtype: str) -> str:
    """What a bi-encoder teacher's passage vectors are keyed by: the model (an offline model by its name and
    hash, so the key is the same on every machine; any other by its path or id), its document prompt and dtype."""
    model = f"offline:{name}:{OFFLINE_MODELS[name].sha256[:16]}" if name in OFFLINE_MODELS else path
    return f"{model}|{document_prompt}|{dtype}"


def _bi_encoder(name: str, path: str, context: TeacherContext, prompts: tuple[str | None, str | None]) -> Teacher:
    """A sentence-transformers teacher, its passage vectors cached per corpus version. Teachers only encode, so
    they run in bf16 where the device computes it natively (half the time on such CPUs); the base model runs as
    the student does, sharing the miner's passage vectors."""
    import torch

    from embed_pipeline.core.device import load_bi_encoder
    from embed_pipeline.core.encoders import CachedDocuments
    from embed_pipeline.core.training import use_bf16

    is_base = name == "base"
    dtype = {"dtype": torch.bfloat16} if use_bf16(context.device) and not is_base else {}
    model = load_bi_encoder(path, context.device, *prompts, model_kwargs=dtype)
    size = round(sum(p.numel() * p.element_size() for p in model.parameters()) / 2**20, 1)
    identity = vectors_identity(name, path, model.prompts.get("document"), str(dtype.get("dtype")))
    cache = context.base_cache if is_base else context.passage_cache(identity) if context.passage_cache else None
    return BiEncoderTeacher(name, CachedDocuments(model, cache) if cache else model, size_mb=size)


def build_teacher(spec: TeacherSpec, context: TeacherContext, weights: tuple[float, ...] | None = None) -> Teacher:
    """The teacher `spec` names (a fusion with `weights` when its own are not given; equal otherwise); built
    once per context. TeacherUnavailable when it cannot be built here."""
    key = spec.text if weights is None else f"{spec.text}|{weights}"
    if key in context.built:
        return context.built[key]
    if spec.kind == "bm25":
        teacher: Teacher = BM25Teacher()
    elif spec.kind == "base":
        teacher = _bi_encoder("base", context.base_model, context, (context.query_prompt, context.passage_prompt))
    elif spec.kind == "offline":
        path = offline_model_path(spec.model)
        if path is None:
            raise TeacherUnavailable(
                f"the offline teacher {spec.model} is not installed: run `embed-pipeline fetch-model {spec.model}` "
                "(scripts/setup.sh does)"
            )
        teacher = _bi_encoder(spec.model, str(path), context, OFFLINE_MODELS[spec.model].prompts or (None, None))
    elif spec.kind == "bi-encoder":
        teacher = _bi_encoder(spec.model, spec.model, context, (None, None))
    elif spec.kind == "api":
        teacher = _api_teacher(spec, context)
    elif spec.kind == "cross-encoder":
        teacher = CrossEncoderTeacher(spec.text, spec.model, context.device)
    elif spec.kind == "trained-cross-encoder":
        if context.trained_cross_encoder is None:
            raise TeacherUnavailable("trained-cross-encoder needs mined training pairs to train on")
        teacher = CrossEncoderTeacher(spec.text, context.trained_cross_encoder(), context.device)
    elif spec.kind == "llm":
        teacher = _llm_teacher(spec, context)
    else:
        given = [w for _, w in spec.members]
        chosen = given if None not in given else (weights or [1.0] * len(spec.members))
        if len(chosen) != len(spec.members):
            raise ValueError(f"{spec.text}: {len(chosen)} weights for {len(spec.members)} members")
        teacher = FusionTeacher(
            [(build_teacher(m, context), w) for (m, _), w in zip(spec.members, chosen, strict=True)]
        )
    context.built[key] = teacher
    return teacher


def _api_teacher(spec: TeacherSpec, context: TeacherContext) -> Teacher:
    from dataclasses import replace

    from embed_pipeline.core.teachers.api import ApiEncoder

    if context.api_cache is None:
        raise TeacherUnavailable(f"{spec.text}: no cache file for the embedding API's responses")
    settings = replace(context.api or LLMSettings(), model=spec.model)
    try:
        settings.api_key()
    except ValueError as exc:
        raise TeacherUnavailable(f"{spec.text}: {exc}") from exc
    query_type, document_type = context.api_input_types
    encoder = ApiEncoder(
        settings,
        context.api_cache,
        context.api_batch_size,
        query_input_type=query_type,
        document_input_type=document_type,
    )
    return BiEncoderTeacher(spec.text, encoder)


def _llm_teacher(spec: TeacherSpec, context: TeacherContext) -> Teacher:
    from dataclasses import replace

    from embed_pipeline.core.teachers.graders import llm_grader

    if context.llm_cache is None:
        raise TeacherUnavailable(f"{spec.text}: no cache file for the LLM's grades")
    settings = replace(context.api or LLMSettings(), model=spec.model, max_tokens=20, temperature=0.0)
    return CallableTeacher(spec.text, llm_grader(settings, context.llm_cache))
