"""LiteRT (TFLite) harness: `ai-edge-litert`'s Interpreter with XNNPACK (its default delegate),
thread count settable; `tflite_runtime` and `tf.lite` only as fallbacks."""
from __future__ import annotations

from pathlib import Path

import numpy as np

from gzsq.errors import GzsqError
from gzsq.runtime_api import dequantize, measure_latency, quantize, quiet_native, run_in_batches, to_layout


def _interpreter_class():
    try:
        with quiet_native():
            from ai_edge_litert.interpreter import Interpreter
        return Interpreter, "ai-edge-litert"
    except ImportError:
        pass
    try:
        from tflite_runtime.interpreter import Interpreter  # NumPy-1 builds only
        return Interpreter, "tflite-runtime"
    except ImportError:
        pass
    try:
        import tensorflow as tf
        return tf.lite.Interpreter, "tensorflow"
    except ImportError:
        raise GzsqError("no TFLite runtime is installed; pip install ai-edge-litert==2.3.0") from None


class LiteRtHarness:
    name = "litert"

    def __init__(self, model: str | Path, threads: int | None = None, xnnpack: bool = True) -> None:
        interpreter_class, self.package = _interpreter_class()
        kwargs = {"num_threads": threads or 1}
        if not xnnpack and self.package == "ai-edge-litert":
            from ai_edge_litert.interpreter import OpResolverType
            kwargs["experimental_op_resolver_type"] = OpResolverType.BUILTIN_WITHOUT_DEFAULT_DELEGATES
        try:
            with quiet_native():  # "INFO: Created TensorFlow Lite XNNPACK delegate" from C++
                self.interpreter = interpreter_class(model_path=str(model), **kwargs)
                self.interpreter.allocate_tensors()
        except (ValueError, RuntimeError) as e:
            raise GzsqError(f"LiteRT cannot load {model} ({str(e).splitlines()[0][:160]}); is it a .tflite file?") from None
        self.threads = threads
        self.input = self.interpreter.get_input_details()[0]
        self.output = self.interpreter.get_output_details()[0]
        self.fixed_batch = int(self.input["shape"][0])

    def _invoke(self, batch: np.ndarray) -> np.ndarray:
        x = to_layout(batch.astype(np.float32), tuple(self.input["shape"]))
        if self.input["dtype"] != np.float32:
            scale, zero_point = self.input["quantization"]
            x = quantize(x, scale, zero_point, self.input["dtype"])
        self.interpreter.set_tensor(self.input["index"], x)
        self.interpreter.invoke()
        y = self.interpreter.get_tensor(self.output["index"])
        if self.output["dtype"] != np.float32:
            scale, zero_point = self.output["quantization"]
            y = dequantize(y, scale, zero_point)
        return np.array(y, dtype=np.float32)

    def run(self, images: np.ndarray, batch_size: int = 64) -> np.ndarray:
        return run_in_batches(self._invoke, images, batch_size, self.fixed_batch)

    def latency(self, sample: np.ndarray, warmup: int = 5, repeats: int = 30) -> dict:
        x = sample[: self.fixed_batch]
        return {**measure_latency(lambda: self._invoke(x), warmup, repeats), "threads": self.threads or 1,
                "runtime": f"{self.package} (XNNPACK)"}
