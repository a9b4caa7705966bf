"""Runs one artifact on one batch where gzsq itself is not installed (an emulated ARM64 rootfs, a
remote board): `python3 runner.py ARTIFACT INPUTS.npz OUTPUTS.npz [THREADS]`. Needs NumPy and the
artifact's runtime (ai-edge-litert or tflite-runtime for .tflite, onnxruntime for .onnx). Inputs
are float NCHW; outputs are float. Exit code 3 with one line on stderr when a runtime is missing."""
import platform
import sys
import time

try:
    import numpy as np
except ImportError:
    sys.stderr.write("runtime missing: pip install numpy on the device\n")
    sys.exit(3)


def _litert(path, threads):
    try:
        from ai_edge_litert.interpreter import Interpreter
    except ImportError:
        try:
            from tflite_runtime.interpreter import Interpreter
        except ImportError:
            sys.stderr.write("runtime missing: pip install ai-edge-litert (or tflite-runtime) on the device\n")
            sys.exit(3)
    interpreter = Interpreter(model_path=path, num_threads=threads)
    interpreter.allocate_tensors()
    inp, out = interpreter.get_input_details()[0], interpreter.get_output_details()[0]

    def run(x):
        want = tuple(inp["shape"][1:])
        if x.shape[1:] != want and x.ndim == 4:
            x = np.ascontiguousarray(x.transpose(0, 2, 3, 1))
        if inp["dtype"] != np.float32:
            scale, zero = inp["quantization"]
            info = np.iinfo(inp["dtype"])
            x = np.clip(np.round(x / scale) + zero, info.min, info.max).astype(inp["dtype"])
        interpreter.set_tensor(inp["index"], x)
        interpreter.invoke()
        y = interpreter.get_tensor(out["index"])
        if out["dtype"] != np.float32:
            scale, zero = out["quantization"]
            y = (y.astype(np.float32) - zero) * scale
        return np.array(y, np.float32)

    return run, int(inp["shape"][0])


def _onnxruntime(path, threads):
    try:
        import onnxruntime as ort
    except ImportError:
        sys.stderr.write("runtime missing: pip install onnxruntime on the device\n")
        sys.exit(3)
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    opts.log_severity_level = 3
    session = ort.InferenceSession(path, opts, providers=["CPUExecutionProvider"])
    name = session.get_inputs()[0].name
    batch = session.get_inputs()[0].shape[0]
    return (lambda x: session.run(None, {name: x.astype(np.float32)})[0]), (batch if isinstance(batch, int) else 1)


def main(argv):
    artifact, inputs, outputs = argv[1], argv[2], argv[3]
    threads = int(argv[4]) if len(argv) > 4 else 1
    run, batch = (_litert if artifact.endswith(".tflite") else _onnxruntime)(artifact, threads)
    images = np.load(inputs)["images"].astype(np.float32)
    results = []
    for i in range(0, len(images), batch):
        chunk = images[i:i + batch]
        n = len(chunk)
        if n < batch:
            chunk = np.concatenate([chunk, np.repeat(chunk[-1:], batch - n, axis=0)])
        results.append(run(chunk)[:n])
    sample = images[:batch]
    for _ in range(3):
        run(sample)
    times = []
    for _ in range(10):
        t = time.perf_counter()
        run(sample)
        times.append((time.perf_counter() - t) * 1000)
    np.savez(outputs, outputs=np.concatenate(results), latency_ms=np.array(times),
             machine=np.array(platform.machine()))


if __name__ == "__main__":
    main(sys.argv)
