"""Per runtime: FP32 vs int8 latency (batch 1, p50, 1 and 2 threads), file size and accuracy of
gzsq's artifacts, side by side with each runtime's own quantizer fed the same calibration
images (the gzsq-distilled set): ONNX Runtime `quantize_static` (QDQ, U8S8, per-channel, MinMax),
NNCF for OpenVINO, and litert-torch's stock PT2E quantizer with its default observers for LiteRT.
Everything is measured in one run, and latency is reported as int8/FP32 ratios.

    python benchmarks/runtime_benchmark.py --update-readme
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from imagenet_benchmark import ort_native  # noqa: E402
from zoo_benchmark import ROOT, update_readme  # noqa: E402

FORMATS = {"onnx": "onnxruntime", "tflite": "litert", "openvino": "openvino"}


def native_openvino(float_path: Path, images: np.ndarray, out: Path) -> Path:
    import nncf
    import openvino as ov

    from gzsq.runtime_api import quiet_native

    with quiet_native():
        quantized = nncf.quantize(ov.convert_model(str(float_path)), nncf.Dataset([images[i:i + 1] for i in range(len(images))]),
                                  subset_size=len(images))
        ov.save_model(quantized, str(out), compress_to_fp16=False)
    return out


def native_tflite(graph_model, images: np.ndarray, out: Path) -> Path:
    """litert-torch's own recipe: stock PT2EQuantizer, default (histogram) observers calibrated on
    the images, convert_pt2e, litert_torch.convert."""
    import torch

    from gzsq.exporters.tflite import _convert, _litert
    from gzsq.runtime_api import quiet_native
    from gzsq.torch_graph import export_torch_graph

    _, _, prepare_pt2e, convert_pt2e = _litert()
    from litert_torch.quantize.pt2e_quantizer import PT2EQuantizer, get_symmetric_quantization_config

    with quiet_native():
        graph = export_torch_graph(graph_model, batch=1)
        quantizer = PT2EQuantizer().set_global(get_symmetric_quantization_config(is_per_channel=True))
        prepared = prepare_pt2e(graph.module, quantizer)
        with torch.no_grad():
            for i in range(len(images)):
                prepared(torch.from_numpy(images[i:i + 1]))
        converted = convert_pt2e(prepared, fold_quantize=False)
    out.write_bytes(_convert(converted, graph.example_input, quantizer))
    return out


def score(outputs: np.ndarray, reference: np.ndarray, labels: np.ndarray | None) -> float:
    from gzsq.evaluate import accuracy, agreement

    return accuracy(outputs, labels) if labels is not None else agreement(reference, outputs)


@dataclass(frozen=True)
class Evaluation:
    data: np.ndarray
    reference: np.ndarray          # FP32 outputs on data
    labels: np.ndarray | None
    repeats: int


def measure(row: dict, harness, artifacts, fmt: str, ev: Evaluation) -> None:
    """Score, SNR, size and p50 latency (1 and 2 threads) of each (label, artifact) into row."""
    from gzsq.evaluate import snr_db
    from gzsq.exporters.tflite import float_op_count
    from gzsq.runtime_api import file_size_bytes

    for label, path in artifacts:
        rt1 = harness(path, threads=1)
        out = rt1.run(ev.data)
        row[f"{label}_score"] = score(out, ev.reference, ev.labels)
        row[f"{label}_snr_db"] = snr_db(ev.reference, out) if label != "fp32" else None
        row[f"{label}_size_mb"] = file_size_bytes(path) / 1e6
        for threads in (1, 2):
            rt = rt1 if threads == 1 else harness(path, threads=2)
            row[f"{label}_p50_ms_{threads}t"] = rt.latency(ev.data[:1], repeats=ev.repeats)["p50_ms"]
        if fmt == "tflite" and label != "fp32":
            row[f"{label}_float_ops"] = float_op_count(Path(path).read_bytes())[0]


def report(name: str, fmt: str, row: dict) -> None:
    print(f"  {name} {fmt}: " + ", ".join(f"{k}={v:.3g}" if isinstance(v, float) else f"{k}={v}"
                                         for k, v in row.items()), flush=True)


def bench_model(name: str, eval_limit: int, repeats: int) -> dict:
    from gzsq.config import CalibrationConfig, DistillConfig
    from gzsq.distill import distill
    from gzsq.evaluate import eval_dataset
    from gzsq.models import load_model
    from gzsq.plugins import get_exporter, get_runtime
    from gzsq.ranges import build_ranges, prepare_for_quantization

    model = load_model(f"zoo:{name}")
    calibration = distill(model, DistillConfig(), model.domain, progress=False)
    images = calibration.calibration_images
    ranges = build_ranges(model, calibration, CalibrationConfig(), progress=False)
    graph = prepare_for_quantization(model)
    data, labels, metric = eval_dataset(model.zoo_entry.dataset, eval_limit)
    if metric != "top1":
        labels = None
    reference = get_runtime("onnxruntime")(graph.SerializeToString()).run(data)
    ev = Evaluation(data, reference, labels, repeats)
    rows = {}
    with tempfile.TemporaryDirectory(prefix="gzsq-bench-") as tmp:
        tmp = Path(tmp)
        float_onnx = tmp / "float.onnx"
        get_exporter("onnx").export_float(graph, float_onnx)
        for fmt, runtime in FORMATS.items():
            exporter = get_exporter(fmt)
            harness = get_runtime(runtime)
            fp32 = exporter.export_float(graph, tmp / f"fp32_{fmt}{exporter.suffix}")
            gzsq_path = exporter.export(graph, ranges, tmp / f"gzsq_{fmt}{exporter.suffix}").path
            if fmt == "onnx":
                native = ort_native(float_onnx, images, graph.graph.input[0].name, tmp / "native.onnx")
            elif fmt == "openvino":
                native = native_openvino(float_onnx, images, tmp / "native.xml")
            else:
                native = native_tflite(graph, images, tmp / "native.tflite")
            row = {"runtime": runtime, "metric": "top-1 %" if labels is not None else "top-1 agreement with FP32 %"}
            measure(row, harness, (("fp32", fp32), ("gzsq", gzsq_path), ("native", native)), fmt, ev)
            rows[fmt] = row
            report(name, fmt, row)
            if fmt == "tflite":
                # The same ranges with the last layer's result left in float (--output-layer float).
                variant = exporter.export(graph, ranges, tmp / "gzsq_float_output.tflite", output_layer="float").path
                alt = {**row, "runtime": "litert, --output-layer float"}
                measure(alt, harness, (("gzsq", variant),), fmt, ev)
                rows["tflite_float_output"] = alt
                report(name, "tflite_float_output", alt)
    return {"eval_images": int(len(data)), "calibration_images": int(len(images)), "formats": rows}


def markdown(results: dict, command: str) -> str:
    lines = [f"Measured with `{command}` ({results['date']}, {results['machine']}). Calibration: the same "
             "gzsq-distilled images for gzsq and for each native quantizer. Latency: batch 1, p50; "
             "ratios are int8 p50 / FP32 p50 in the same runtime, same run (lower is faster).", "",
             "| model | runtime | metric | FP32 | gzsq int8 | native int8 | gzsq/FP32 1t | native/FP32 1t | gzsq/FP32 2t | native/FP32 2t | FP32 1t ms | size FP32 → gzsq / native MB |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for name, res in results["models"].items():
        for fmt, r in res["formats"].items():
            extra = ""
            if "native_float_ops" in r:
                extra = f" (float ops: gzsq {r['gzsq_float_ops']}, native {r['native_float_ops']})"
            lines.append(
                f"| {name} | {r['runtime']}{extra} | {r['metric']} | {r['fp32_score']:.2f} | {r['gzsq_score']:.2f} | "
                f"{r['native_score']:.2f} | {r['gzsq_p50_ms_1t'] / r['fp32_p50_ms_1t']:.2f} | "
                f"{r['native_p50_ms_1t'] / r['fp32_p50_ms_1t']:.2f} | {r['gzsq_p50_ms_2t'] / r['fp32_p50_ms_2t']:.2f} | "
                f"{r['native_p50_ms_2t'] / r['fp32_p50_ms_2t']:.2f} | {r['fp32_p50_ms_1t']:.2f} | "
                f"{r['fp32_size_mb']:.2f} → {r['gzsq_size_mb']:.2f} / {r['native_size_mb']:.2f} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", nargs="*", default=["mobilenet_v2", "fmnist_resnet_bn", "fmnist_vgg_nobn",
                                                         "fmnist_mobilenet_v2"])
    parser.add_argument("--eval-limit", type=int, default=2000, help="evaluation images per model (ImageNet crops: all 312)")
    parser.add_argument("--repeats", type=int, default=50)
    parser.add_argument("--update-readme", action="store_true")
    args = parser.parse_args()
    import platform

    import torch

    torch.manual_seed(0)
    results = {"date": time.strftime("%Y-%m-%d"), "machine": f"{platform.machine()}, {torch.get_num_threads()} cores",
               "models": {}}
    for name in args.models:
        print(f"benchmarking {name}", flush=True)
        results["models"][name] = bench_model(name, args.eval_limit, args.repeats)
    out = ROOT / "benchmarks" / "results" / "runtime_benchmark.json"
    out.parent.mkdir(exist_ok=True)
    out.write_text(json.dumps(results, indent=2) + "\n")
    command = "python benchmarks/runtime_benchmark.py --update-readme"
    table = markdown(results, command)
    print(table)
    if args.update_readme:
        update_readme("runtime-benchmark", table)


if __name__ == "__main__":
    main()
