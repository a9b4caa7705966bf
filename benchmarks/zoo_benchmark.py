"""Zoo benchmark: FP32 vs W8A8 (ONNX Runtime int8 kernels) per calibration source, plus simulated
W4A8 / W8A6, distillation seconds and peak memory. Writes benchmarks/results/zoo.json and, with
--update-readme, the table between the README's zoo-benchmark markers.

    python benchmarks/zoo_benchmark.py --update-readme

Every source is run with several seeds (default 0–4) and the table shows the mean, with the
seed-to-seed spread of W8A8 beside it: at W8A8 the sources differ by a few images out of 10 000,
which is the size of the spread one seed to the next, so a single seed cannot rank them.

Each distillation runs in a fresh process (spawn), so its peak RSS is its own. Timings are
ratios-agnostic wall seconds on this machine; compare methods within one run only.
"""
from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
FMNIST_MODELS = ["fmnist_resnet_bn", "fmnist_resnet_bn_folded", "fmnist_resnet_fixup", "fmnist_vgg_nobn",
                 "fmnist_mobilenet_v2", "fmnist_dncnn"]
METHODS = ["gzsq-moments", "gzsq-paper", "zeroq", "gaussian", "uniform", "real"]


def _distill_child(model_spec: str, config, out: str, queue) -> None:
    from gzsq.distill import _peak_rss_mb, distill
    from gzsq.models import load_model

    model = load_model(model_spec)
    t = time.time()
    cal = distill(model, config, model.domain, progress=False)
    seconds = time.time() - t
    cal.save(out)
    queue.put({"seconds": seconds, "peak_rss_mb": _peak_rss_mb(),
               "loss": cal.history})


def distill_in_child_config(model_spec: str, config, out: str) -> dict:
    """Distil in a fresh process so its time and peak memory are its own."""
    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    proc = ctx.Process(target=_distill_child, args=(model_spec, config, out, queue))
    proc.start()
    proc.join()
    if proc.exitcode != 0 or queue.empty():
        from gzsq.errors import GzsqError

        raise GzsqError(f"distillation of {model_spec} failed in its worker (exit {proc.exitcode})")
    return queue.get()


def distill_in_child(model_name, method, samples, seed, real_path, out) -> dict:
    from gzsq.config import DistillConfig

    base, _, rule = method.partition("-")
    config = DistillConfig(method=base, samples=samples, seed=seed, statistics=rule or "paper", real_data=real_path)
    return distill_in_child_config(f"zoo:{model_name}", config, out)


def real_training_images(model_name: str, count: int, seed: int, path: Path) -> str:
    from gzsq import datasets

    images, _ = datasets.load_fashion_mnist("train")
    idx = np.random.default_rng(seed).permutation(len(images))[:count]
    if model_name == "fmnist_dncnn":
        from gzsq.zoo.train import DENOISE_SIGMA

        x, _ = datasets.denoising_pair(images[idx], DENOISE_SIGMA, seed=seed)
    else:
        x = datasets.normalize_fashion_mnist(images[idx])
    np.savez(path, images=x)
    return str(path)


def evaluate(model, ranges, artifact: Path, data) -> dict:
    import onnx

    from gzsq.evaluate import accuracy, psnr
    from gzsq.exporters.onnx_qdq import quantize_linear_params
    from gzsq.ranges import prepare_for_quantization
    from gzsq.runtimes.onnxruntime_harness import OnnxRuntimeHarness
    from gzsq.simulate import fake_quant_model

    images, targets, metric = data
    score = (lambda out: psnr(out, targets)) if metric == "psnr" else (lambda out: accuracy(out, targets))
    quantized = list(quantize_linear_params(onnx.load(str(artifact))))
    graph = prepare_for_quantization(model)
    row = {"w8a8_runtime": score(OnnxRuntimeHarness(artifact).run(images)),
           "w8a8_simulated": score(OnnxRuntimeHarness(artifact, simulate=True).run(images))}
    for label, wb, ab in (("w4a8_simulated", 4, 8), ("w8a6_simulated", 8, 6)):
        fq = fake_quant_model(graph, ranges, quantized, wb, ab)
        row[label] = score(OnnxRuntimeHarness(fq.SerializeToString()).run(images))
    return row


def run(models: list[str], methods: list[str], samples: int, real_samples: int, seeds: list[int], eval_limit: int | None) -> dict:
    from gzsq.config import CalibrationConfig
    from gzsq.distill import CalibrationSet
    from gzsq.errors import GzsqError
    from gzsq.evaluate import accuracy, eval_dataset, psnr
    from gzsq.exporters.onnx_qdq import export_onnx_qdq
    from gzsq.models import load_model
    from gzsq.ranges import build_ranges, prepare_for_quantization
    from gzsq.runtimes.onnxruntime_harness import OnnxRuntimeHarness

    results = {"config": {"samples": samples, "real_samples": real_samples, "seeds": seeds, "eval_limit": eval_limit,
                          "estimator": "minmax", "target": "auto"}, "models": {}}
    with tempfile.TemporaryDirectory(prefix="gzsq-bench-") as tmp:
        tmp = Path(tmp)
        for name in models:
            model = load_model(f"zoo:{name}")
            data = eval_dataset(model.zoo_entry.dataset, eval_limit)
            fp32_out = OnnxRuntimeHarness(prepare_for_quantization(model).SerializeToString()).run(data[0])
            fp32 = psnr(fp32_out, data[1]) if data[2] == "psnr" else accuracy(fp32_out, data[1])
            entry = {"metric": data[2], "fp32": fp32, "methods": {}}
            print(f"{name}: fp32 {data[2]} {fp32:.2f}", flush=True)
            for method in methods:
                if method == "zeroq" and not model.zoo_entry.has_bn:
                    entry["methods"][method] = {"skipped": "no BatchNorm"}
                    continue
                per_seed = []
                for seed in seeds:
                    real_path = real_training_images(name, real_samples, seed, tmp / f"{name}_real.npz") if method == "real" else None
                    n = real_samples if method == "real" else samples
                    cal_path = tmp / f"{name}_{method}.npz"
                    try:
                        info = distill_in_child(name, method, n, seed, real_path, str(cal_path))
                    except GzsqError as e:
                        per_seed = {"skipped": str(e)}
                        break
                    cal = CalibrationSet.load(cal_path)
                    ranges = build_ranges(model, cal, CalibrationConfig(), progress=False)
                    artifact = tmp / f"{name}_{method}.onnx"
                    export_onnx_qdq(prepare_for_quantization(model), ranges, artifact)
                    row = {"seed": seed, **evaluate(model, ranges, artifact, data), "distill_s": info["seconds"],
                           "peak_rss_mb": info["peak_rss_mb"]}
                    per_seed.append(row)
                    print(f"  {method:<13} seed {seed}  W8A8 {row['w8a8_runtime']:.2f}  W4A8 {row['w4a8_simulated']:.2f}  "
                          f"W8A6 {row['w8a6_simulated']:.2f}  distill {info['seconds']:.1f}s  {info['peak_rss_mb']:.0f} MB", flush=True)
                entry["methods"][method] = per_seed if isinstance(per_seed, dict) else summarise_seeds(per_seed)
            results["models"][name] = entry
    return results


def summarise_seeds(rows: list[dict]) -> dict:
    keys = ("w8a8_runtime", "w8a8_simulated", "w4a8_simulated", "w8a6_simulated", "distill_s", "peak_rss_mb")
    out = {k: float(np.mean([r[k] for r in rows])) for k in keys}
    w8a8 = [r["w8a8_runtime"] for r in rows]
    out.update({"w8a8_runtime_min": float(min(w8a8)), "w8a8_runtime_max": float(max(w8a8)), "per_seed": rows})
    return out


def markdown(results: dict, command: str) -> str:
    methods = [m for m in METHODS if any(m in e["methods"] for e in results["models"].values())]
    seeds = results["config"]["seeds"]
    seed_text = f"seeds {seeds[0]}–{seeds[-1]}" if seeds == list(range(seeds[0], seeds[-1] + 1)) and len(seeds) > 1 else \
        "seed " + ", ".join(map(str, seeds))
    lines = [f"Command: `{command}`", "",
             "W8A8 = int8 ONNX Runtime kernels on this CPU; W4A8 / W8A6 = fake-quant simulation of the same ranges. "
             "Top-1 % on the 10k Fashion-MNIST test set (PSNR dB for fmnist_dncnn). "
             f"Cells: mean over {len(seeds)} calibration sets ({seed_text}) of W8A8 / W4A8 / W8A6; "
             "below, the lowest–highest W8A8 over the same seeds.", "",
             "| model | FP32 | " + " | ".join(methods) + " |", "|---|---|" + "---|" * len(methods)]

    def cells(e, fmt):
        out = []
        for m in methods:
            row = e["methods"].get(m, {"skipped": "-"})
            out.append(("n/a (no BN)" if m == "zeroq" else "n/a") if "skipped" in row else fmt(row))
        return out

    for name, e in results["models"].items():
        lines.append(f"| {name} | {e['fp32']:.2f} | " + " | ".join(cells(
            e, lambda r: f"{r['w8a8_runtime']:.2f} / {r['w4a8_simulated']:.2f} / {r['w8a6_simulated']:.2f}")) + " |")
    lines += ["", "W8A8, lowest–highest over the seeds:", "",
              "| model | " + " | ".join(methods) + " |", "|---|" + "---|" * len(methods)]
    for name, e in results["models"].items():
        lines.append(f"| {name} | " + " | ".join(cells(
            e, lambda r: f"{r['w8a8_runtime_min']:.2f}–{r['w8a8_runtime_max']:.2f}")) + " |")
    lines += ["", "Distillation seconds / peak RSS (MB) of the distilling process (2 cores), mean over the seeds:", "",
              "| model | " + " | ".join(methods) + " |", "|---|" + "---|" * len(methods)]
    for name, e in results["models"].items():
        lines.append(f"| {name} | " + " | ".join(cells(e, lambda r: f"{r['distill_s']:.1f} s / {r['peak_rss_mb']:.0f}")) + " |")
    return "\n".join(lines)


def update_readme(section: str, text: str) -> None:
    readme = ROOT / "README.md"
    content = readme.read_text()
    start, end = f"<!-- {section}:start -->", f"<!-- {section}:end -->"
    if start not in content:
        raise SystemExit(f"README.md lacks the {start} marker")
    head, rest = content.split(start, 1)
    _, tail = rest.split(end, 1)
    readme.write_text(f"{head}{start}\n{text}\n{end}{tail}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", nargs="*", default=FMNIST_MODELS)
    parser.add_argument("--methods", nargs="*", default=METHODS, choices=METHODS)
    parser.add_argument("--samples", type=int, default=32)
    parser.add_argument("--real-samples", type=int, default=128)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4])
    parser.add_argument("--eval-limit", type=int)
    parser.add_argument("--update-readme", action="store_true")
    args = parser.parse_args()
    results = run(args.models, args.methods, args.samples, args.real_samples, args.seeds, args.eval_limit)
    out = ROOT / "benchmarks" / "results" / "zoo.json"
    out.write_text(json.dumps(results, indent=2) + "\n")
    command = "python benchmarks/zoo_benchmark.py " + " ".join(sys.argv[1:])
    table = markdown(results, command.strip())
    print(table)
    if args.update_readme:
        update_readme("zoo-benchmark", table)


if __name__ == "__main__":
    main()
