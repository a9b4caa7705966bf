"""ImageNet MobileNetV2 (as is and BN-folded), data-free, against ONNX Runtime's own
quantize_static calibrated on 64 real natural-image crops. Scores on the other crops (foolbox's
ImageNet images and skimage photos, several crops each): top-1 agreement with FP32 and output
SQNR, in the runtime (int8 kernels of this CPU). Also distillation time and peak memory against
accuracy for a few step budgets, so the default's trade-off is visible.

    python benchmarks/imagenet_benchmark.py --update-readme
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

import numpy as np
import onnx

sys.path.insert(0, str(Path(__file__).resolve().parent))
from zoo_benchmark import ROOT, distill_in_child_config, update_readme  # noqa: E402

REAL_CALIBRATION = 64


def ort_native(float_path: Path, images: np.ndarray, input_name: str, out: Path, reduce_range: bool = False) -> Path:
    """ONNX Runtime's own recipe: quantize_static (QDQ, U8S8, per-channel, MinMax) calibrated on
    `images` (also used by runtime_benchmark.py)."""
    from onnxruntime.quantization import CalibrationDataReader, CalibrationMethod, QuantFormat, QuantType, quantize_static

    class Reader(CalibrationDataReader):
        def __init__(self):
            self.items = iter([{input_name: images[i:i + 8]} for i in range(0, len(images), 8)])

        def get_next(self):
            return next(self.items, None)

    quantize_static(str(float_path), str(out), Reader(), quant_format=QuantFormat.QDQ, per_channel=True,
                    reduce_range=reduce_range, activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
                    calibrate_method=CalibrationMethod.MinMax)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", nargs="*", default=["mobilenet_v2", "mobilenet_v2_folded"])
    parser.add_argument("--steps", nargs="*", type=int, default=[0, 60])
    parser.add_argument("--samples", type=int, default=32)
    parser.add_argument("--update-readme", action="store_true")
    args = parser.parse_args()

    from gzsq.config import CalibrationConfig, DistillConfig
    from gzsq.datasets import natural_image_crops
    from gzsq.distill import CalibrationSet
    from gzsq.evaluate import agreement, snr_db
    from gzsq.exporters.onnx_qdq import export_onnx_qdq
    from gzsq.models import load_model
    from gzsq.ranges import build_ranges, prepare_for_quantization
    from gzsq.runtimes.onnxruntime_harness import OnnxRuntimeHarness
    from gzsq.targets import detect_target

    crops, _ = natural_image_crops()
    order = np.random.default_rng(0).permutation(len(crops))
    calib, evaluation = crops[order[:REAL_CALIBRATION]], crops[order[REAL_CALIBRATION:]]
    target = detect_target()
    results = {"eval_crops": int(len(evaluation)), "real_calibration_crops": REAL_CALIBRATION, "target": target.name, "models": {}}
    with tempfile.TemporaryDirectory(prefix="gzsq-imagenet-") as tmp:
        tmp = Path(tmp)
        for name in args.models:
            model = load_model(f"zoo:{name}")
            ref = OnnxRuntimeHarness(prepare_for_quantization(model).SerializeToString()).run(evaluation, 16)
            rows = {}

            def score(artifact: Path) -> dict:
                out = OnnxRuntimeHarness(artifact).run(evaluation, 16)
                sim = OnnxRuntimeHarness(artifact, simulate=True).run(evaluation, 16)
                return {"agreement_pct": agreement(ref, out), "sqnr_db": snr_db(ref, out),
                        "simulated_agreement_pct": agreement(ref, sim)}

            float_path = tmp / f"{name}.float.onnx"
            onnx.save(prepare_for_quantization(model), str(float_path))
            rows["ort quantize_static, 64 real crops"] = score(ort_native(float_path, calib, model.input_name,
                                                                          tmp / f"{name}_ort.onnx", target.weight_bits == 7))
            # The same 64 real crops through gzsq's ranges and exporter: the real-data reference with
            # gzsq's quantizer placement (model output not requantized).
            real = CalibrationSet(images=calib, method="real", seed=0, model_sha256=model.sha256,
                                  input_shape=tuple(model.input_shape), domain=model.domain, holdout=0)
            artifact = tmp / f"{name}_real.onnx"
            export_onnx_qdq(prepare_for_quantization(model), build_ranges(model, real, CalibrationConfig(), progress=False),
                            artifact, target)
            rows["real, 64 crops, gzsq ranges and export"] = score(artifact)
            print(name, rows, flush=True)
            configs = [("gaussian", DistillConfig(method="gaussian", samples=args.samples))]
            configs += [(f"gzsq moments (default), ≤{s} steps @112",
                         DistillConfig(method="gzsq", statistics="moments", samples=args.samples, max_steps=s)) for s in args.steps]
            configs += [(f"gzsq paper, ≤{args.steps[-1]} steps @112",
                         DistillConfig(method="gzsq", statistics="paper", samples=args.samples, max_steps=args.steps[-1]))]
            if model.zoo_entry.has_bn:
                configs += [(f"zeroq, ≤{args.steps[-1]} steps @112", DistillConfig(method="zeroq", samples=args.samples, max_steps=args.steps[-1]))]
            for label, config in configs:
                cal_path = tmp / f"{name}_{label.replace(' ', '_').replace(',', '')}.npz"
                info = distill_in_child_config(f"zoo:{name}", config, str(cal_path))
                cal = CalibrationSet.load(cal_path)
                ranges = build_ranges(model, cal, CalibrationConfig(), progress=False)
                artifact = tmp / f"{name}_{len(rows)}.onnx"
                export_onnx_qdq(prepare_for_quantization(model), ranges, artifact, target)
                rows[label] = {**score(artifact), "distill_s": info["seconds"], "peak_rss_mb": info["peak_rss_mb"]}
                print(name, label, rows[label], flush=True)
            results["models"][name] = rows
    (ROOT / "benchmarks" / "results" / "imagenet.json").write_text(json.dumps(results, indent=2) + "\n")
    lines = [f"Command: `python benchmarks/imagenet_benchmark.py {' '.join(sys.argv[1:])}`".strip(), "",
             f"{results['eval_crops']} natural-image crops (disjoint from the 64 real crops given to quantize_static); "
             f"ONNX Runtime int8 kernels, target {target.name}; simulated = same QDQ file computed in float.", "",
             "| model | calibration | top-1 agreement % | SQNR dB | simulated agreement % | distill s | peak MB |",
             "|---|---|---|---|---|---|---|"]
    for name, rows in results["models"].items():
        for label, r in rows.items():
            lines.append(f"| {name} | {label} | {r['agreement_pct']:.1f} | {r['sqnr_db']:.1f} | {r['simulated_agreement_pct']:.1f} | "
                         + (f"{r['distill_s']:.0f} | {r['peak_rss_mb']:.0f} |" if "distill_s" in r else "– | – |"))
    table = "\n".join(lines)
    print(table)
    if args.update_readme:
        update_readme("imagenet-benchmark", table)


if __name__ == "__main__":
    main()
