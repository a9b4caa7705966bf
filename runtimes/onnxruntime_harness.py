"""ONNX Runtime harness: run a batch, measure latency; `simulate=True` runs the same QDQ file with
graph optimisations off, so every QuantizeLinear/DequantizeLinear pair executes in float — the
fake-quant simulation of exactly those scales, with no int8 kernel involved."""
from __future__ import annotations

from pathlib import Path

import numpy as np

from gzsq.errors import GzsqError
from gzsq.runtime_api import measure_latency, run_in_batches


class OnnxRuntimeHarness:
    name = "onnxruntime"

    def __init__(self, model: str | Path | bytes, threads: int | None = None, simulate: bool = False) -> None:
        try:
            import onnxruntime as ort
        except ImportError:
            raise GzsqError("onnxruntime is not installed; pip install onnxruntime==1.32.0") from None
        opts = ort.SessionOptions()
        opts.log_severity_level = 3
        if threads:
            opts.intra_op_num_threads = threads
            opts.inter_op_num_threads = 1
        if simulate:
            opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
        self.threads = threads
        source = model if isinstance(model, bytes) else str(model)
        try:
            self.session = ort.InferenceSession(source, opts, providers=["CPUExecutionProvider"])
        except Exception as e:
            raise GzsqError(f"onnxruntime cannot load the model ({str(e).splitlines()[0][:160]}); check the file") from None
        inp = self.session.get_inputs()[0]
        self.input_name = inp.name
        self.fixed_batch = inp.shape[0] if isinstance(inp.shape[0], int) and inp.shape[0] > 0 else None

    def run(self, images: np.ndarray, batch_size: int = 64) -> np.ndarray:
        return run_in_batches(lambda x: self.session.run(None, {self.input_name: x.astype(np.float32)})[0],
                              images, batch_size, self.fixed_batch)

    def latency(self, sample: np.ndarray, warmup: int = 5, repeats: int = 30) -> dict:
        feed = {self.input_name: sample.astype(np.float32)}
        return {**measure_latency(lambda: self.session.run(None, feed), warmup, repeats), "threads": self.threads,
                "runtime": "onnxruntime CPU"}
