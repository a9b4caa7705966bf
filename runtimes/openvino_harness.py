"""OpenVINO harness: compile an IR (or ONNX) file for CPU or any device `available_devices` lists."""
from __future__ import annotations

from pathlib import Path

import numpy as np

from gzsq.errors import GzsqError
from gzsq.runtime_api import measure_latency, run_in_batches, to_layout


def available_devices() -> list[str]:
    try:
        import openvino as ov
    except ImportError:
        return []
    return list(ov.Core().available_devices)


class OpenVinoHarness:
    name = "openvino"

    def __init__(self, model: str | Path | bytes, threads: int | None = None, device: str = "CPU",
                 precision: str = "f32") -> None:
        try:
            import openvino as ov
        except ImportError:
            raise GzsqError("OpenVINO is not installed; pip install openvino==2026.4.1") from None
        core = ov.Core()
        if device not in core.available_devices:
            raise GzsqError(f"OpenVINO device {device!r} is not available here (available: {', '.join(core.available_devices)})")
        try:
            ir = core.read_model(model, b"") if isinstance(model, bytes) else core.read_model(str(model))
        except Exception as e:
            raise GzsqError(f"OpenVINO cannot read {model if not isinstance(model, bytes) else 'the model'} "
                            f"({str(e).splitlines()[0][:160]})") from None
        config = {"PERFORMANCE_HINT": "LATENCY"}
        if device == "CPU":
            # OpenVINO runs the non-quantized parts in bf16 by default on CPUs with AVX512-BF16;
            # f32 keeps them what the FP32 model and the simulation compute.
            config["INFERENCE_PRECISION_HINT"] = precision
            if threads:
                config["INFERENCE_NUM_THREADS"] = int(threads)
        self.compiled = core.compile_model(ir, device, config)
        self.request = self.compiled.create_infer_request()
        self.threads, self.device, self.precision = threads, device, precision
        shape = self.compiled.input(0).get_partial_shape()
        self.input_shape = tuple(d.get_length() if d.is_static else -1 for d in shape)
        self.fixed_batch = self.input_shape[0] if self.input_shape[0] > 0 else None

    def _invoke(self, batch: np.ndarray) -> np.ndarray:
        wanted = tuple(len(batch) if d < 0 else d for d in self.input_shape)
        x = to_layout(batch.astype(np.float32), wanted)
        result = self.request.infer({0: x})
        return np.array(result[self.compiled.output(0)], dtype=np.float32)

    def run(self, images: np.ndarray, batch_size: int = 64) -> np.ndarray:
        return run_in_batches(self._invoke, images, batch_size, self.fixed_batch)

    def latency(self, sample: np.ndarray, warmup: int = 5, repeats: int = 30) -> dict:
        x = sample[:1] if self.fixed_batch in (None, 1) else sample[: self.fixed_batch]
        return {**measure_latency(lambda: self._invoke(x), warmup, repeats), "threads": self.threads,
                "runtime": f"openvino {self.device} ({self.precision})"}
