"""Probe: where an export's time goes, by operator (onnxruntime's profiler, one single-threaded session, the
bundled sample's first 64 abstracts in the shipped length-sorted calls).

    python bench/onnx_profile.py EXPORT_DIR
"""

import collections
import json
import sys
import tempfile
from pathlib import Path

import onnxruntime as ort

from embed_pipeline.core.onnx_runtime import ONNX_FILE, OnnxEncoder
from embed_pipeline.defs.resources import SAMPLE_CORPUS


def main() -> None:
    folder = Path(sys.argv[1])
    passages = [json.loads(line)["text"] for line in (SAMPLE_CORPUS / "corpus.jsonl").open()]
    model = OnnxEncoder(folder, workers=1)
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED
    options.intra_op_num_threads = 1
    options.enable_profiling = True
    options.profile_file_prefix = str(Path(tempfile.mkdtemp(prefix="onnx_profile.")) / "profile")
    model.session = ort.InferenceSession(
        str(folder / ONNX_FILE),
        options,
        providers=["CPUExecutionProvider"],
        disabled_optimizers=["SkipLayerNormFusion"],
    )
    model.encode(passages[:64])
    events = json.loads(Path(model.session.end_profiling()).read_text())
    by_operator: collections.Counter = collections.Counter()
    for event in events:
        if event.get("cat") == "Node" and event["name"].endswith("_kernel_time"):
            by_operator[event["args"]["op_name"]] += event["dur"]
    total = sum(by_operator.values())
    for operator, microseconds in by_operator.most_common(15):
        print(f"{operator:30s} {microseconds / 1000:8.1f} ms {100 * microseconds / total:5.1f}%")


if __name__ == "__main__":
    main()
