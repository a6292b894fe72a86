"""fastembed, in-process, on a `peer_models.py` folder: the serving benchmark's in-process peer. Runs in the peers'
venv (bench/peers/requirements.txt); reads a job as JSON on stdin, prints the measurements as JSON.

    job: {"folder", "model_file", "dim", "requests": [[text, ...], ...], "concurrency": [1, 8, 32], "repeats",
          "short": [[query], ...], "check": [text, ...]}
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from fastembed import TextEmbedding
from fastembed.common.model_description import ModelSource, PoolingType

sys.path.insert(0, str(Path(__file__).resolve().parent))
from timing import measure  # noqa: E402


def main() -> None:
    job = json.load(sys.stdin)
    name = f"local/{Path(job['folder']).name}"  # never fetched: specific_model_path wins
    TextEmbedding.add_custom_model(
        model=name,
        pooling=PoolingType.MEAN,
        normalization=True,
        sources=ModelSource(hf=name),
        dim=job["dim"],
        model_file=job["model_file"],
    )
    model = TextEmbedding(model_name=name, specific_model_path=job["folder"], threads=None)

    def call(texts: list[str]) -> None:
        list(model.embed(texts, batch_size=32))

    out = {
        "rows": {c: measure(call, job["requests"], c, job["repeats"]) for c in job["concurrency"]},
        "short": measure(call, job["short"], 1, 1),
        "vectors": [v.tolist() for v in model.embed(job["check"], batch_size=32)],
    }
    json.dump(out, sys.stdout)


if __name__ == "__main__":
    main()
