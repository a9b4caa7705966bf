"""ONNX Runtime harness: run a batch, measure latency; `simulate=True` runs the same QDQ file with
graph optimisations off, so every QuantizeLinear/DequantizeLinear pair executes in float — the
fake-quant simulation of exactly those scales, with no int8 kernel involved."""
from __future__ import annotations

import time
from pathlib import Path

import numpy as np

from gzsq.errors import GzsqError


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
        source = model if isinstance(model, bytes) else str(model)
        try:
            self.session = ort.InferenceSession(source, opts, providers=["CPUExecutionProvider"])
        except Exception as e:
            raise GzsqError(f"onnxruntime cannot load the model ({str(e).splitlines()[0][:160]}); check the file") from None
        inp = self.session.get_inputs()[0]
        self.input_name = inp.name
        self.fixed_batch = inp.shape[0] if isinstance(inp.shape[0], int) and inp.shape[0] > 0 else None

    def run(self, images: np.ndarray, batch_size: int = 64) -> np.ndarray:
        step = self.fixed_batch or batch_size
        outs = []
        for i in range(0, len(images), step):
            chunk = images[i:i + step].astype(np.float32)
            if self.fixed_batch and len(chunk) < step:  # pad a fixed-batch graph's last chunk
                pad = np.repeat(chunk[-1:], step - len(chunk), axis=0)
                outs.append(self.session.run(None, {self.input_name: np.concatenate([chunk, pad])})[0][: len(chunk)])
            else:
                outs.append(self.session.run(None, {self.input_name: chunk})[0])
        return np.concatenate(outs)

    def latency(self, sample: np.ndarray, warmup: int = 5, repeats: int = 30) -> dict:
        feed = {self.input_name: sample.astype(np.float32)}
        for _ in range(warmup):
            self.session.run(None, feed)
        times = []
        for _ in range(repeats):
            t = time.perf_counter()
            self.session.run(None, feed)
            times.append(time.perf_counter() - t)
        times_ms = np.array(times) * 1000
        return {"p50_ms": float(np.percentile(times_ms, 50)), "p90_ms": float(np.percentile(times_ms, 90)), "repeats": repeats}
