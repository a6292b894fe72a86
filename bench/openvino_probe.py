"""Probe: texts/s of ONNX exports on OpenVINO's execution provider against onnxruntime's CPU provider (plain sessions,
8-text calls padded to their longest text, 12 calls, 2 runs). Runs in its own venv, never a project dependency:

    python3 -m venv bench/.cache/openvino-venv
    bench/.cache/openvino-venv/bin/pip install onnxruntime-openvino tokenizers numpy
    bench/.cache/openvino-venv/bin/python bench/openvino_probe.py EXPORT_DIR [EXPORT_DIR ...]
"""

import json
import sys
import time
from pathlib import Path

import numpy as np
import onnxruntime as ort
from tokenizers import Tokenizer

SAMPLE = Path(__file__).resolve().parents[1] / "embed_pipeline" / "sample_data" / "scifact_sample" / "corpus.jsonl"


def main() -> None:
    print(ort.__version__, ort.get_available_providers())
    passages = [json.loads(line)["text"] for line in SAMPLE.open()]
    for folder in sys.argv[1:]:
        for provider in ("OpenVINOExecutionProvider", "CPUExecutionProvider"):
            try:
                session = ort.InferenceSession(f"{folder}/model.onnx", providers=[provider])
            except Exception as exc:  # a provider that cannot load the graph is a result too
                print(folder, provider, "failed:", str(exc)[:300])
                continue
            tokenizer = Tokenizer.from_file(f"{folder}/tokenizer.json")
            tokenizer.enable_truncation(256)
            tokenizer.enable_padding()
            names = [i.name for i in session.get_inputs()]

            def run(texts: list[str], tokenizer=tokenizer, session=session, names=names) -> None:
                encoded = tokenizer.encode_batch(texts)
                feed = {
                    "input_ids": np.array([e.ids for e in encoded]),
                    "attention_mask": np.array([e.attention_mask for e in encoded]),
                    "token_type_ids": np.array([e.type_ids for e in encoded]),
                    "dimensions": np.array(384),
                }
                session.run(None, {k: v for k, v in feed.items() if k in names})

            run(passages[:8])
            rates = []
            for _ in range(2):
                began = time.perf_counter()
                for i in range(12):
                    run(passages[i * 8 : (i + 1) * 8])
                rates.append(96 / (time.perf_counter() - began))
            print(folder, provider, session.get_providers(), [round(r, 1) for r in rates], flush=True)


if __name__ == "__main__":
    main()
