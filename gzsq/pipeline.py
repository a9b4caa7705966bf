"""`gzsq run`: distil → calibrate → export → check, writing OUT/{calibration.npz, ranges.json,
model_int8.onnx, report.json}. Every file is written atomically."""
from __future__ import annotations

import platform
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from gzsq import __version__
from gzsq.config import CalibrationConfig, DistillConfig, InputDomain
from gzsq.distill import CalibrationSet, distill, load_real_images
from gzsq.errors import GzsqError
from gzsq.evaluate import accuracy, agreement, eval_dataset, psnr, snr_db
from gzsq.fileio import ensure_writable_dir, write_json_atomic
from gzsq.models import LoadedModel
from gzsq.plugins import get_exporter, get_runtime
from gzsq.ranges import build_ranges, prepare_for_quantization, save_ranges


@dataclass(frozen=True)
class RunConfig:
    distill: DistillConfig = field(default_factory=DistillConfig)
    calibration: CalibrationConfig = field(default_factory=CalibrationConfig)
    formats: tuple[str, ...] = ("onnx",)
    target: str = "auto"
    eval_data: str | None = None
    eval_limit: int | None = None
    threads: int | None = None


def load_eval_data(path: str, model: LoadedModel, domain: InputDomain) -> tuple[np.ndarray, np.ndarray | None]:
    images = load_real_images(path, model, domain)
    labels = None
    if path.endswith(".npz"):
        with np.load(path, allow_pickle=False) as data:
            if "labels" in data:
                labels = data["labels"].astype(np.int64)
                if len(labels) != len(images):
                    raise GzsqError(f"{path}: {len(labels)} labels for {len(images)} images; save one label per image")
    return images, labels


def check_artifact(model: LoadedModel, artifact: Path, calibration: CalibrationSet, config: RunConfig,
                   domain: InputDomain) -> dict:
    """FP32 vs int8 (runtime kernels) vs int8 simulation on held-back distilled images, and on
    eval data when given (or the zoo model's own dataset)."""
    harness = get_runtime("onnxruntime")
    float_rt = harness(prepare_for_quantization(model).SerializeToString(), threads=config.threads)
    int8_rt = harness(artifact, threads=config.threads)
    sim_rt = harness(artifact, threads=config.threads, simulate=True)
    result: dict = {}
    holdout = calibration.holdout_images
    if len(holdout):
        ref, q, sim = float_rt.run(holdout), int8_rt.run(holdout), sim_rt.run(holdout)
        result["holdout_distilled"] = {"images": int(len(holdout)), "top1_agreement_pct": agreement(ref, q),
                                       "output_snr_db": snr_db(ref, q), "runtime_vs_simulation_agreement_pct": agreement(sim, q)}
    data = None
    if config.eval_data:
        images, labels = load_eval_data(config.eval_data, model, domain)
        data = (images, labels, "top1" if labels is not None else "agreement", config.eval_data)
    elif model.zoo_entry is not None:
        images, labels, metric = eval_dataset(model.zoo_entry.dataset, config.eval_limit)
        data = (images, labels, metric, f"zoo:{model.zoo_entry.dataset}")
    if data is not None:
        images, labels, metric, source = data
        ref, q, sim = float_rt.run(images), int8_rt.run(images), sim_rt.run(images)
        entry = {"source": source, "images": int(len(images)), "output_snr_db": snr_db(ref, q)}
        if metric == "psnr":
            entry.update(fp32_psnr_db=psnr(ref, labels), int8_psnr_db=psnr(q, labels), simulated_psnr_db=psnr(sim, labels))
        else:
            entry.update(top1_agreement_pct=agreement(ref, q), runtime_vs_simulation_agreement_pct=agreement(sim, q))
            if labels is not None and (labels >= 0).all():
                entry.update(fp32_top1_pct=accuracy(ref, labels), int8_top1_pct=accuracy(q, labels),
                             simulated_int8_top1_pct=accuracy(sim, labels))
        result["eval"] = entry
    sample = (holdout if len(holdout) else calibration.images)[:1]
    lat_f, lat_q = float_rt.latency(sample), int8_rt.latency(sample)
    result["latency_batch1"] = {"fp32_p50_ms": lat_f["p50_ms"], "int8_p50_ms": lat_q["p50_ms"],
                                "int8_over_fp32": lat_q["p50_ms"] / max(lat_f["p50_ms"], 1e-9)}
    return result


def run_pipeline(model: LoadedModel, domain: InputDomain, config: RunConfig, out_dir: str | Path,
                 progress: bool = True, log=print) -> dict:
    out = ensure_writable_dir(out_dir)
    exporters = {fmt: get_exporter(fmt) for fmt in config.formats}  # fail before any work
    timings = {}
    t = time.time()
    log(f"[1/4] distilling {config.distill.samples} images with --method {config.distill.method} (seed {config.distill.seed})")
    calibration = distill(model, config.distill, domain, progress)
    calibration.save(out / "calibration.npz")
    timings["distill_s"] = time.time() - t
    t = time.time()
    log(f"[2/4] calibrating ranges ({config.calibration.estimator}) on {len(calibration.calibration_images)} images")
    ranges = build_ranges(model, calibration, config.calibration, progress)
    save_ranges(ranges, out / "ranges.json")
    timings["calibrate_s"] = time.time() - t
    artifacts = {}
    for fmt, exporter in exporters.items():
        t = time.time()
        log(f"[3/4] exporting {fmt}")
        result = exporter.export(prepare_for_quantization(model), ranges, out / f"model_int8{exporter.suffix}", config.target)
        timings[f"export_{fmt}_s"] = time.time() - t
        t = time.time()
        log(f"[4/4] checking {result.path.name} in the runtime")
        checks = check_artifact(model, result.path, calibration, config, domain)
        timings[f"check_{fmt}_s"] = time.time() - t
        artifacts[fmt] = {"path": result.path.name, "scheme": result.scheme, "weight_bits": result.weight_bits,
                          "quantized_tensors": len(result.quantized_tensors), **checks}
    report = {
        "gzsq_version": __version__, "model": model.name, "model_sha256": model.sha256,
        "input_shape": list(model.input_shape), "domain": domain.to_dict(),
        "method": config.distill.method, "seed": config.distill.seed,
        "distill": config.distill.to_dict(), "calibration": config.calibration.to_dict(),
        "distill_loss_per_batch": calibration.history, "distill_peak_rss_mb": calibration.peak_rss_mb,
        "timings_s": {k: round(v, 2) for k, v in timings.items()},
        "machine": {"platform": platform.platform(), "processor": platform.machine()},
        "artifacts": artifacts,
    }
    write_json_atomic(out / "report.json", report)
    return report


def summarise(report: dict) -> str:
    lines = [f"gzsq {report['model']}  method={report['method']} seed={report['seed']}  "
             f"distill {report['timings_s']['distill_s']:.1f}s, peak {report['distill_peak_rss_mb']:.0f} MB"]
    for fmt, a in report["artifacts"].items():
        lines.append(f"  {fmt}: {a['path']}  ({a['scheme']})")
        h = a.get("holdout_distilled")
        if h:
            lines.append(f"    held-back distilled images: top-1 agreement {h['top1_agreement_pct']:.1f}%, "
                         f"output SNR {h['output_snr_db']:.1f} dB")
        e = a.get("eval")
        if e:
            if "fp32_psnr_db" in e:
                lines.append(f"    {e['source']} ({e['images']}): PSNR fp32 {e['fp32_psnr_db']:.2f} dB, int8 {e['int8_psnr_db']:.2f} dB")
            elif "fp32_top1_pct" in e:
                lines.append(f"    {e['source']} ({e['images']}): top-1 fp32 {e['fp32_top1_pct']:.2f}%, int8 {e['int8_top1_pct']:.2f}% "
                             f"(simulated {e['simulated_int8_top1_pct']:.2f}%), agreement {e['top1_agreement_pct']:.2f}%")
            else:
                lines.append(f"    {e['source']} ({e['images']}): top-1 agreement with fp32 {e['top1_agreement_pct']:.2f}%, "
                             f"SNR {e['output_snr_db']:.1f} dB")
        lat = a["latency_batch1"]
        lines.append(f"    latency batch 1: fp32 {lat['fp32_p50_ms']:.2f} ms, int8 {lat['int8_p50_ms']:.2f} ms "
                     f"(×{lat['int8_over_fp32']:.2f})")
    return "\n".join(lines)
