"""`gzsq run`: distil → calibrate → export (each --formats) → verify, writing OUT/{calibration.npz,
ranges.json, model_int8.<format>, report.json, report.md, report.html}. Every file is written
atomically; the report is written even when the --max-drop gate fails (the CLI exits 3 after)."""
from __future__ import annotations

import platform
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from gzsq import __version__
from gzsq.config import CalibrationConfig, DistillConfig, InputDomain, OutputLayer, check_output_layer
from gzsq.distill import CalibrationSet, distill, load_real_images
from gzsq.errors import GzsqError
from gzsq.evaluate import eval_dataset
from gzsq.fileio import ensure_writable_dir
from gzsq.models import LoadedModel
from gzsq.plugins import get_exporter, get_runtime
from gzsq.ranges import build_ranges, prepare_for_quantization, save_ranges
from gzsq.report import summarise, write_reports  # noqa: F401  (summarise is re-exported for the CLI)
from gzsq.verify import EvalSet, apply_gate, check_eval_shape, device_check, output_layer_note, output_step, verify_artifact


LAYER_IMAGES = 4  # images for the per-layer runtime-vs-simulation scan (it runs each cut model)


@dataclass(frozen=True)
class RunConfig:
    distill: DistillConfig = field(default_factory=DistillConfig)
    calibration: CalibrationConfig = field(default_factory=CalibrationConfig)
    formats: tuple[str, ...] = ("onnx",)
    target: str = "auto"
    output_layer: OutputLayer | None = None  # None: each format's default (exporter.default_output_layer)
    eval_data: str | None = None
    eval_limit: int | None = None
    threads: int | None = 1
    max_drop: float | None = None


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


def eval_sets(model: LoadedModel, calibration: CalibrationSet | None, config: RunConfig, domain: InputDomain) -> list[EvalSet]:
    """Held-back distilled images (always), plus --eval-data or the zoo model's own dataset."""
    sets = []
    if calibration is not None and len(calibration.holdout_images):
        sets.append(EvalSet(calibration.holdout_images, None, "agreement", "held-back distilled images"))
    if config.eval_data:
        images, labels = load_eval_data(config.eval_data, model, domain)
        check_eval_shape(images, model.input_shape, config.eval_data)
        sets.append(EvalSet(images, labels if labels is not None and (labels >= 0).all() else None,
                            "top1" if labels is not None else "agreement", config.eval_data))
    elif model.zoo_entry is not None:
        images, labels, metric = eval_dataset(model.zoo_entry.dataset, config.eval_limit)
        if metric == "agreement":
            labels = None
        sets.append(EvalSet(images, labels, metric, f"zoo:{model.zoo_entry.dataset}"))
    return sets


def run_pipeline(model: LoadedModel, domain: InputDomain, config: RunConfig, out_dir: str | Path,
                 progress: bool = True, log=print) -> dict:
    check_output_layer(config.output_layer)
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
    graph_model = prepare_for_quantization(model)
    sets = eval_sets(model, calibration, config, domain)
    sample = (calibration.holdout_images if len(calibration.holdout_images) else calibration.images)[:1]
    artifacts = {}
    for fmt, exporter in exporters.items():
        t = time.time()
        log(f"[3/4] exporting {fmt}")
        result = exporter.export(graph_model, ranges, out / f"model_int8{exporter.suffix}", config.target,
                                 output_layer=config.output_layer)
        timings[f"export_{fmt}_s"] = time.time() - t
        t = time.time()
        log(f"[4/4] checking {result.path.name} in {exporter.runtime}")
        entry = verify_artifact(fmt, result.path, graph_model, ranges, sets, config.threads, work_dir=out,
                                latency_sample=sample, layer_images=sets[-1].images[:LAYER_IMAGES])
        timings[f"check_{fmt}_s"] = time.time() - t
        artifacts[fmt] = {**entry, "scheme": result.scheme, "weight_bits": result.weight_bits,
                          "quantized_tensors": len(result.quantized_tensors),
                          "output_layer": getattr(exporter, "output_layer_of", lambda p: None)(result.path)}
        note = output_layer_note(artifacts[fmt])
        if note:
            log(f"      note: {result.path.name} {note}")
        if hasattr(result, "float_ops"):
            artifacts[fmt]["float_ops"] = list(result.float_ops)
            artifacts[fmt]["float_islands"] = list(result.float_islands)
            if result.float_islands:
                log(f"      note: {len(result.float_islands)} op(s) compute in float between int8 ops in "
                    f"{result.path.name}: {', '.join(sorted(set(result.float_islands)))}")
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
    apply_gate(report, config.max_drop)
    write_reports(report, out, calibration=calibration, ranges=ranges)
    return report




ARTIFACT_SUFFIXES = {".onnx": "onnx", ".tflite": "tflite", ".xml": "openvino"}


def artifact_format(path: str | Path) -> str:
    path = Path(path)
    if not path.is_file():
        raise GzsqError(f"artifact {path} does not exist; export it with `gzsq export` or `gzsq run`")
    fmt = ARTIFACT_SUFFIXES.get(path.suffix.lower())
    if fmt is None:
        raise GzsqError(f"unknown artifact format {path.suffix or path.name!r}; gzsq verifies "
                        f"{', '.join(ARTIFACT_SUFFIXES)} files")
    if fmt == "openvino" and not path.with_suffix(".bin").is_file():
        raise GzsqError(f"{path} has no weights file {path.with_suffix('.bin').name} beside it; copy both files")
    return fmt


def verify_artifacts(model: LoadedModel, domain: InputDomain, artifacts: list[str], ranges_path: str | None,
                     out_dir: str | Path, eval_data: str | None = None, eval_limit: int | None = None,
                     threads: int | None = 1, max_drop: float | None = None, calibration_path: str | None = None,
                     device: str | None = None, device_limit: int = 256, device_options: dict | None = None) -> dict:
    """`gzsq verify`: the checks of `gzsq run` on artifacts exported before."""
    from gzsq.ranges import load_ranges

    formats = [artifact_format(a) for a in artifacts]
    first_dir = Path(artifacts[0]).parent
    ranges_path = ranges_path or str(first_dir / "ranges.json")
    ranges = load_ranges(ranges_path, model)
    calibration = None
    calibration_path = calibration_path or (str(first_dir / "calibration.npz") if (first_dir / "calibration.npz").is_file() else None)
    if calibration_path:
        calibration = CalibrationSet.load(calibration_path)
        calibration.check_model(model)
    out = ensure_writable_dir(out_dir)
    config = RunConfig(eval_data=eval_data, eval_limit=eval_limit, threads=threads, max_drop=max_drop)
    sets = eval_sets(model, calibration, config, domain)
    if not sets:
        raise GzsqError("nothing to evaluate on: pass --eval-data (or --data with a calibration.npz)")
    graph_model = prepare_for_quantization(model)
    sample = sets[0].images[:1]
    report = {"gzsq_version": __version__, "model": model.name, "model_sha256": model.sha256,
              "input_shape": list(model.input_shape), "domain": domain.to_dict(),
              "method": ranges["calibration"].get("method"), "seed": ranges["calibration"].get("seed"),
              "calibration": ranges["calibration"], "timings_s": {},
              "machine": {"platform": platform.platform(), "processor": platform.machine()}, "artifacts": {}}
    for fmt, artifact in zip(formats, artifacts):
        t = time.time()
        key = fmt if fmt not in report["artifacts"] else f"{fmt}:{Path(artifact).name}"
        entry = verify_artifact(fmt, artifact, graph_model, ranges, sets, threads, work_dir=out, latency_sample=sample,
                                layer_images=sets[-1].images[:LAYER_IMAGES])
        exporter = get_exporter(fmt)
        entry["scheme"] = getattr(exporter, "describe", lambda p: "as exported")(artifact)
        entry["output_layer"] = getattr(exporter, "output_layer_of", lambda p: None)(artifact)
        if device:
            headline_set = sets[-1]
            subset = EvalSet(headline_set.images[:device_limit],
                             None if headline_set.labels is None else headline_set.labels[:device_limit],
                             headline_set.metric, headline_set.source)
            host = get_runtime(exporter.runtime)(artifact, threads=threads).run(subset.images)
            entry["device"] = device_check(device, artifact, fmt, subset, host, threads or 1,
                                           step=output_step(ranges, graph_model), **(device_options or {}))
        report["artifacts"][key] = entry
        report["timings_s"][f"verify_{key}_s"] = round(time.time() - t, 2)
    apply_gate(report, max_drop)
    write_reports(report, out, calibration=calibration, ranges=ranges)
    return report
