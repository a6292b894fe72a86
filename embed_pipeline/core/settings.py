"""Every setting of every stage, with its default and its meaning, written once: frozen (immutable) objects the
core's stage functions take, which the Dagster config classes (`embed_pipeline.config`) mirror for the launchpad
and `embed-pipeline run --config`. A field added here reaches the UI, the CLI's YAML and the README's table."""

from dataclasses import replace
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from embed_pipeline.core.document_pairs import PAIR_SOURCES, PSEUDO_SOURCES
from embed_pipeline.core.documents import MAX_DOCUMENT_CHARS
from embed_pipeline.core.llm import LLMSettings


class StageSettings(BaseModel):
    """Settings of one stage: immutable, unknown fields refused, every field validated."""

    model_config = ConfigDict(frozen=True, extra="forbid")


class DocumentsSettings(StageSettings):
    on_error: Literal["raise", "skip"] = Field(
        default="raise", description="Bad file: stop with an error naming it, or skip it and list the reason."
    )
    max_document_chars: int = Field(
        default=MAX_DOCUMENT_CHARS,
        gt=0,
        description="Longest document text accepted, in characters; a longer one is a bad file (named; on_error "
        "decides) rather than many minutes of chunking.",
    )


class ChunkingSettings(StageSettings):
    max_tokens: int = Field(default=256, gt=0, description="Token budget per chunk (title included), base tokenizer.")
    overlap_sentences: int = Field(default=1, ge=0, description="Sentences shared by consecutive chunks.")
    min_chars: int = Field(default=50, ge=0, description="Drop shorter chunks (unless a document has only one).")


class GenerationSettings(StageSettings):
    model: str = Field(default=LLMSettings.model, description="litellm model string, e.g. openai/gpt-4o-mini.")
    api_base: str | None = Field(default=None, description="Base URL of an OpenAI-compatible server.")
    api_key_env: str | None = Field(default=None, description="Environment variable holding the API key.")
    questions_per_chunk: int = Field(
        default=1,
        ge=1,
        description="Queries asked per chunk; the samples of one chunk and form are one request (a local model "
        "evaluates the prompt once for all of them).",
    )
    query_forms: dict[str, float] | None = Field(
        default=None,
        description="Mix of query forms, weights by form (question, keywords, claim, problem), e.g. "
        "{keywords: 2, question: 1}. Empty: the seed queries' mix when query examples are given, else all four "
        "equally.",
    )
    max_questions: int | None = Field(
        default=None, ge=1, description="Budget: at most this many queries (chunks asked = this / questions_per_chunk)."
    )
    time_budget_s: float | None = Field(
        default=None,
        gt=0,
        description="Budget: start no LLM call after this many seconds (the rest is asked by a later run).",
    )
    multihop_per_document: int = Field(
        default=0,
        description="Also ask this many 2-3-hop questions per document, over neighbouring chunks "
        "(worth it with a capable hosted LLM; a 135M model rarely combines facts).",
    )
    max_chunks: int | None = Field(default=None, description="Budget: ask about at most this many chunks.")
    prompt_style: Literal["auto", "fewshot", "json"] = Field(
        default="auto",
        description="fewshot: completion text for tiny local models; json: JSON-schema answers with reasoning "
        "type and complexity (hosted/served models); auto: fewshot for local/ models, else json.",
    )
    local_runtime: Literal["auto", "transformers", "llama_cpp", "xllamacpp"] = Field(
        default=LLMSettings.local_runtime,
        description="Runtime of local/ models: xllamacpp (llama.cpp's server in process, a prebuilt wheel; parallel "
        "slots decode a batch together), llama_cpp (needs the llamacpp extra, compiles ~20 min) or transformers; "
        "auto takes llama_cpp when installed, else transformers (xllamacpp measured slower here and its questions "
        "pass the round trip less often: bench/results/local_generator_speed.md).",
    )
    # How the LLM is reached: the defaults are `LLMSettings`' (the one place they are written).
    temperature: float = Field(
        default=LLMSettings.temperature, description="Sampling temperature of the first question."
    )
    max_tokens: int = Field(default=LLMSettings.max_tokens, description="Longest answer the LLM may write.")
    concurrency: int = Field(
        default=LLMSettings.concurrency, description="Parallel LLM calls (batched together for the local model)."
    )
    num_retries: int = Field(
        default=LLMSettings.num_retries,
        description="Retries with backoff on rate limits, 5xx, timeouts and malformed responses.",
    )
    timeout_s: float = Field(default=LLMSettings.timeout_s, description="Timeout of one LLM call.")
    backoff_s: float = Field(
        default=LLMSettings.backoff_s, description="First retry delay; doubles each retry (with jitter)."
    )
    seed: int = Field(default=42, description="Seed of the chunk subset when max_chunks is set.")
    roundtrip: Literal["bm25", "base", "either", "none"] = Field(
        default="bm25",
        description="Keep a question only if its source chunk ranks in the top k under this (either: BM25 or the "
        "base model, so validation favours neither).",
    )
    roundtrip_top_k: int = Field(default=10, description="k of the round-trip filter.")
    min_complexity: int = Field(
        default=1,
        ge=1,
        le=5,
        description="Drop questions below this complexity (1-5; stated by json-style models, estimated for "
        "fewshot). The recipe uses 2 with capable models.",
    )
    max_overlap: float | None = Field(
        default=None,
        ge=0,
        le=1,
        description="Drop queries sharing more than this share of their content words with their passage (the "
        "most copy-like); empty: off.",
    )
    dedup_threshold: float | None = Field(
        default=0.9, description="Drop a question this cosine-similar to an earlier one (base model); empty: off."
    )

    judge_model: str | None = Field(
        default=None, description="litellm model string of an LLM judge; empty: no judge filter."
    )
    judge_api_base: str | None = Field(default=None, description="Base URL of the judge's server.")
    judge_api_key_env: str | None = Field(default=None, description="Environment variable of the judge's key.")
    judge_min_score: float = Field(default=7.0, description="Keep questions the judge scores overall >= this.")
    min_questions: int = Field(
        default=10, ge=1, description="Fewest questions kept for training to go on (blocking data check)."
    )
    min_parse_rate: float = Field(
        default=0.25,
        ge=0.0,
        le=1.0,
        description="Lowest share of the LLM's answers that parse into a query of the asked form (blocking check).",
    )
    max_llm_failure_rate: float = Field(
        default=0.1, ge=0.0, le=1.0, description="Highest share of LLM calls that may fail (blocking data check)."
    )

    @field_validator("query_forms")
    @classmethod
    def _known_forms(cls, mix: dict[str, float] | None) -> dict[str, float] | None:
        from embed_pipeline.core.sdg import normalise_form_mix  # sdg takes its defaults from here

        return None if mix is None else normalise_form_mix(mix)

    def llm_settings(self) -> LLMSettings:
        fields = LLMSettings.__dataclass_fields__
        return LLMSettings(**{k: v for k, v in self.model_dump().items() if k in fields})

    def judge_settings(self) -> LLMSettings | None:
        if not self.judge_model:
            return None
        return replace(
            self.llm_settings(),
            model=self.judge_model,
            api_base=self.judge_api_base,
            api_key_env=self.judge_api_key_env,
            temperature=0.0,
            max_tokens=200,
        )


class SplitSettings(StageSettings):
    test_fraction: float = Field(
        default=0.2, gt=0, lt=1, description="Share of documents whose questions are held out."
    )
    validation_fraction: float = Field(
        default=0.1, ge=0, lt=1, description="Share of the other documents whose questions pick the best checkpoint."
    )
    seed: int = Field(default=42, description="Seed of the document split.")


class MiningSettings(StageSettings):
    num_mined: int = Field(default=5, description="Hard negatives mined per question.")
    relative_margin: float | None = Field(
        default=0.05, description="Drop candidates scoring above (1 - margin) x the weakest positive."
    )
    absolute_margin: float | None = Field(default=None, description="Or drop those within this absolute margin.")
    batch_size: int = Field(default=64, description="Encoding batch size.")
    exclude_same_document: bool = Field(
        default=True,
        description="Never take another chunk of a positive's document as a negative (it often answers too).",
    )
    document_pairs: list[str] = Field(
        default=[],
        description="Also train on pairs the documents give without an LLM: title → body, heading → section, "
        "cloze (a sentence → the rest of its chunk); from training documents only, mined like questions.",
    )
    document_pair_share: float = Field(
        default=0.5,
        ge=0,
        le=1,
        description="Share of the training queries that are document pairs (0.5: as many as LLM questions; "
        "1: every pair the documents give).",
    )

    @field_validator("document_pairs")
    @classmethod
    def _known_sources(cls, sources: list[str]) -> list[str]:
        unknown = sorted(set(sources) - set(PAIR_SOURCES))
        if unknown:
            raise ValueError(f"unknown document pair source(s) {unknown}: use {list(PAIR_SOURCES)}")
        return sources


DEFAULT_TEACHER = "embeddinggemma-300m"
"""The offline teacher setup fetches (`core.offline_models`); a candidate by default when it is installed."""


class TeacherSettings(StageSettings):
    teacher: str = Field(
        default="auto",
        description="Who teaches the student: auto (the candidate with the best validation nDCG@10, if it beats "
        "the base model; BM25 and the base's own fusions are scored for reference, never chosen by themselves; "
        "else none), none (train on the questions alone, contrastively), or a teacher name: bm25, "
        "an offline model (embeddinggemma-300m, nomic-embed-text-v1.5), any sentence-transformers id or folder, "
        "api:PROVIDER/MODEL, cross-encoder:ID, llm:PROVIDER/MODEL, trained-cross-encoder, or a fusion "
        "A@w+B@w (without weights a two-teacher fusion's BM25 weight is chosen on validation).",
    )
    candidates: list[str] = Field(
        default=["bm25", DEFAULT_TEACHER],
        description="Teachers scored zero-shot on the validation questions (the base model always is); one not "
        "available here (not fetched, no key) is listed with the reason and left out. No fusion by default: the "
        "generated questions are lexical, so a BM25 weight chosen on them leans to BM25 (0.8 on SciFact-1k).",
    )
    api_base: str | None = Field(default=None, description="Base URL of an api: or llm: teacher's server.")
    api_key_env: str | None = Field(
        default=None, description="Environment variable holding the api: or llm: teacher's key (never stored)."
    )
    api_batch_size: int = Field(default=64, ge=1, description="Texts per embedding request of an api: teacher.")
    api_query_input_type: str | None = Field(
        default=None, description="input_type of an api: teacher's queries (Cohere: search_query; Voyage, NIM: query)."
    )
    api_document_input_type: str | None = Field(
        default=None,
        description="input_type of an api: teacher's passages (Cohere: search_document; Voyage: document; NIM: "
        "passage).",
    )
    cross_encoder_epochs: int = Field(default=1, ge=1, description="Training epochs of trained-cross-encoder.")
    cross_encoder_learning_rate: float = Field(default=2e-5, gt=0, description="Its peak learning rate.")

    @field_validator("teacher")
    @classmethod
    def _known_teacher(cls, name: str) -> str:
        from embed_pipeline.core.teachers.specs import parse_teacher

        if name not in ("auto", "none"):
            parse_teacher(name)
        return name

    @field_validator("candidates")
    @classmethod
    def _known_candidates(cls, names: list[str]) -> list[str]:
        from embed_pipeline.core.teachers.specs import parse_teacher

        for name in names:
            parse_teacher(name)
        return names

    def llm_settings(self) -> LLMSettings:
        """How an api: or llm: teacher is reached (its model comes from the teacher's name)."""
        return LLMSettings(api_base=self.api_base, api_key_env=self.api_key_env)


class TeacherScoresSettings(StageSettings):
    mined_negatives: int = Field(
        default=3,
        ge=1,
        description="Mined hard negatives in a generated question's candidate list (its contrastive term's too).",
    )
    teacher_top: int = Field(
        default=1, ge=0, description="The teacher's top passages added to a candidate list (those not in it yet)."
    )
    student_top: int = Field(
        default=1,
        ge=0,
        description="The student's top passages added after them (a list of 6 in all: the time "
        "a query costs grows with its list, so the budget goes to more queries rather than longer lists).",
    )
    pseudo_queries: list[str] = Field(
        default=list(PSEUDO_SOURCES),
        description="LLM-free queries from the training documents, labelled by the teacher: title, heading, "
        "sentence, span (a random 6-16 words of a chunk). Empty: generated questions only.",
    )
    pseudo_queries_per_chunk: int = Field(
        default=2,
        ge=0,
        description="Sentence and span queries per chunk (sentences first), besides titles and headings.",
    )
    max_train_queries: int | None = Field(
        default=2000,
        ge=1,
        description="Budget: at most this many training queries in all (every generated question, then "
        "pseudo-queries spread evenly over their sources). Empty: every pseudo-query.",
    )

    @field_validator("pseudo_queries")
    @classmethod
    def _known_sources(cls, sources: list[str]) -> list[str]:
        unknown = sorted(set(sources) - set(PSEUDO_SOURCES))
        if unknown:
            raise ValueError(f"unknown pseudo-query source(s) {unknown}: use {list(PSEUDO_SOURCES)}")
        return sources


class TrainingSettings(StageSettings):
    num_negatives: int = Field(default=4, description="Hard negatives used per training row.")
    epochs: int | None = Field(
        default=None,
        ge=1,
        description="Training epochs; empty: 3 on the questions alone, 1 with a teacher (it labels every query, so "
        "the budget buys more queries, not more passes over them).",
    )
    learning_rate: float = Field(default=1e-5, description="Peak learning rate.")
    temperature: float = Field(
        default=0.02, gt=0, description="Student temperature: InfoNCE's (loss scale = 1 / temperature) and KL's."
    )
    loss: Literal["auto", "mnrl", "kl", "kl+mnrl", "margin_mse", "mnrl+margin_mse"] = Field(
        default="auto",
        description="mnrl: contrastive over trusted positives, in-batch and hard negatives; kl: match the softmax "
        "of the teacher's scores over each candidate list; margin_mse: match the teacher's margins (GPL); "
        "kl+mnrl, mnrl+margin_mse: both. auto: kl+mnrl when a teacher scored the rows, else mnrl.",
    )
    distill_temperature: float | None = Field(
        default=None, gt=0, description="Teacher temperature of the KL term; empty: the student's temperature."
    )
    margin_weight: float = Field(default=1.0, gt=0, description="Weight of the margin-MSE term.")
    mixing_weights: list[float] = Field(
        default=[0.0, 0.25, 0.5, 0.75, 1.0],
        description="WiSE-FT: the trained weights are mixed with the base's, (1 - w) x base + w x trained, for each "
        "w tried; the w with the best validation nDCG@10 is kept (ties: the smaller). [1.0]: no mixing.",
    )
    time_budget_s: float | None = Field(
        default=None, gt=0, description="Budget: stop training after this many seconds (the steps taken are kept)."
    )
    warmup_steps: int = Field(default=5, description="Linear warm-up steps.")
    batch_size: int | None = Field(
        default=None, description="Empty: the recipe's rule, 128 from 2,000 rows, else max(16, min(64, n // 8))."
    )
    seed: int = Field(default=42, description="Training seed.")
    precision: Literal["auto", "fp32", "bf16"] = Field(
        default="auto",
        description="auto: bf16 mixed precision where the GPU or CPU has native bf16 (AVX512-BF16, AMX), else fp32.",
    )
    attention_dropout: float | None = Field(
        default=0.0,
        description="Attention dropout while training; 0 allows the fused attention kernel (about 2x faster on "
        "CPU). Empty: the model's own value (0.1 for MiniLM).",
    )
    matryoshka_dims: list[int] | None = Field(
        default=None,
        description="Also train truncated embeddings of these sizes (MatryoshkaLoss), e.g. [384, 256, 128, 64].",
    )
    grid: list[dict[str, float]] = Field(
        default=[],
        description="Schedules to try, e.g. [{learning_rate: 1e-5}, {learning_rate: 5e-5, temperature: 0.05}] "
        "(keys: learning_rate, temperature, epochs, margin_weight, distill_temperature); the one with the best "
        "validation nDCG@10 is "
        "kept. Empty: train once with the settings above.",
    )
    validation_corpus_size: int = Field(
        default=5000, description="Passages the validation questions are ranked among (their positives included)."
    )
    checkpoint_steps: int | None = Field(
        default=None, description="Checkpoint (and validate) every this many steps; empty: every epoch."
    )

    @field_validator("mixing_weights")
    @classmethod
    def _unit_weights(cls, weights: list[float]) -> list[float]:
        bad = [w for w in weights if not 0 <= w <= 1]
        if bad or not weights:
            raise ValueError(f"mixing weights must be within [0, 1] and at least one, got {weights}")
        return weights

    def passes(self, taught: bool) -> int:
        """The epochs to train: `epochs`, where empty is 1 for rows a teacher scored, else 3."""
        return self.epochs or (1 if taught else 3)

    def objective(self, taught: bool) -> str:
        """The loss to train with: `loss`, where auto is kl+mnrl for rows a teacher scored, else mnrl."""
        if self.loss == "auto":
            return "kl+mnrl" if taught else "mnrl"
        return self.loss


class EvaluationSettings(StageSettings):
    top_k: int = Field(default=100, description="Passages retrieved per query.")
    batch_size: int = Field(default=64, description="Encoding batch size.")
    gate_metric: str = Field(
        default="nDCG@10", description="Metric of the blocking gate (any report column, e.g. Recall@10, MRR@10)."
    )
    gate_tolerance: float = Field(
        default=0.01,
        ge=0,
        description="The gate passes when fine-tuned >= base - tolerance (absolute); else the export is not built.",
    )
    gate_query_set: Literal["auto", "real_queries", "synthetic_test"] = Field(
        default="auto", description="Queries the gate judges on; auto: the real ones when given, else synthetic."
    )
    regression_beir: str | None = Field(
        default="bundled",
        description="Out-of-domain BEIR folder the fine-tuned model must not get worse on (second blocking gate): "
        "bundled (120 general-knowledge passages, 60 queries, shipped with the package), a folder, or empty: off.",
    )
    ignore_identical_ids: bool | None = Field(
        default=None,
        description="Ignore a retrieved document whose id is the query's id (BEIR's rule); empty: on when some "
        "real query ids are also document ids (ArguAna).",
    )
    regression_tolerance: float = Field(
        default=0.02, ge=0, description="The regression gate passes when fine-tuned >= base - this on gate_metric."
    )


class ExportSettings(StageSettings):
    opset: int = Field(default=17, description="ONNX opset.")
    fuse: bool = Field(
        default=True, description="Rewrite the graph with onnxruntime's fused transformer kernels (faster on CPU)."
    )
    min_cosine: float = Field(
        default=0.9999, description="Lowest cosine to PyTorch allowed on sample texts (asset check)."
    )


class Int8ExportSettings(StageSettings):
    min_cosine: float = Field(
        default=0.99, description="Lowest cosine to PyTorch allowed on sample texts (asset check)."
    )
    max_ndcg_drop: float = Field(
        default=0.005,
        description="Largest nDCG@10 loss against the fp32 export, on the real queries when given, else on every "
        "held-out synthetic question (asset check; failed: the export is marked not recommended).",
    )
    quantize_attention: bool = Field(
        default=True,
        description="Quantize the attention layers' projections too, each one only where the synthetic training and "
        "validation questions' lowest cosine to the fp32 export stays within attention_max_cosine_loss (measured "
        "per layer).",
    )
    attention_max_cosine_loss: float = Field(
        default=0.002,
        ge=0,
        le=1,
        description="How much lower the short texts' lowest cosine to the fp32 export may fall with quantized "
        "attention than with attention in fp32 (which already loses about 0.015 on one-word texts).",
    )


class TensorRTSettings(StageSettings):
    fp16: bool = Field(default=True, description="Build the TensorRT engine in fp16 (fp32 when false).")
    max_batch: int = Field(default=64, description="Largest batch the engine's shape profile covers.")
    min_cosine: float = Field(
        default=0.999, description="Lowest cosine to PyTorch allowed on sample texts (asset check)."
    )


# Every default, as objects: the keyword defaults of the functions below the stage entry points are read from
# these, so they cannot disagree with the settings.
GENERATION = GenerationSettings()
TEACHER = TeacherSettings()
TEACHER_SCORES = TeacherScoresSettings()
TRAINING = TrainingSettings()
EVALUATION = EvaluationSettings()
INT8_EXPORT = Int8ExportSettings()
