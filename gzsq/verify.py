"""Verification of exported artifacts, the same for every format (one backend-neutral routine;
each exporter supplies its runtime name, an FP32 artifact for that runtime, and the fake-quant
simulation of its own artifact):

- accuracy: int8 (runtime kernels) against FP32 — top-1 vs labels, top-1 agreement, output SNR
  and cosine; PSNR for the dense task;
- parity: int8 runtime against the simulation of the same ranges — top-1 agreement and the
  output error counted in output quantization steps;
- latency (batch 1, warm-up then repeated runs, p50/p90) of FP32 and int8 in the same runtime,
  and file sizes.
"""
from __future__ import annotations

import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from gzsq.errors import GateFailure, GzsqError
from gzsq.evaluate import accuracy, agreement, cosine, psnr, snr_db
from gzsq.plugins import get_exporter, get_runtime
from gzsq.runtime_api import file_size_bytes


@dataclass(frozen=True)
class EvalSet:
    images: np.ndarray
    labels: np.ndarray | None  # class ids, clean targets (psnr), or None (agreement only)
    metric: str                # "top1" | "agreement" | "psnr"
    source: str


def output_step(ranges: dict, graph_model) -> float | None:
    """The quantization step of the model's output tensor (parity is counted in these steps)."""
    name = graph_model.graph.output[0].name
    entry = ranges["tensors"].get(name)
    return float(entry["scale"]) if entry else None


def _quality(reference: np.ndarray | None, test: np.ndarray, eval_set: EvalSet, prefix: str) -> dict:
    """PSNR, or top-1 vs labels plus top-1 agreement with `reference` (None: the FP32 model itself)."""
    out = {}
    if eval_set.metric == "psnr":
        out[f"{prefix}_psnr_db"] = psnr(test, eval_set.labels)
    else:
        if reference is not None:
            out[f"{prefix}_top1_agreement_pct"] = agreement(reference, test)
        if eval_set.labels is not None:
            out[f"{prefix}_top1_pct"] = accuracy(test, eval_set.labels)
    return out


def parity(runtime_out: np.ndarray, simulated_out: np.ndarray, step: float | None) -> dict:
    """Runtime vs simulation: top-1 agreement and the error in output quantization steps."""
    result = {"runtime_vs_simulation_agreement_pct": agreement(simulated_out, runtime_out),
              "runtime_vs_simulation_snr_db": snr_db(simulated_out, runtime_out)}
    if step:
        err = np.abs(runtime_out.astype(np.float64) - simulated_out) / step
        result.update(output_error_steps_max=float(err.max()), output_error_steps_mean=float(err.mean()),
                      output_error_steps_p99=float(np.percentile(err, 99)),
                      within_one_step_pct=float((err <= 1.0 + 1e-6).mean() * 100))
    return result


def verify_artifact(fmt: str, artifact: str | Path, graph_model, ranges: dict, eval_sets: list[EvalSet],
                    threads: int | None = 1, work_dir: str | Path | None = None, latency_sample: np.ndarray | None = None,
                    latency_repeats: int = 30, layer_images: np.ndarray | None = None) -> dict:
    """Every check of one artifact, as a report entry."""
    exporter = get_exporter(fmt)
    harness = get_runtime(exporter.runtime)
    reference = get_runtime("onnxruntime")(graph_model.SerializeToString(), threads=threads)  # the FP32 model
    int8_rt = harness(artifact, threads=threads)
    simulate = exporter.simulator(graph_model, ranges, artifact)
    step = output_step(ranges, graph_model)
    with tempfile.TemporaryDirectory(prefix="gzsq-verify-", dir=work_dir) as tmp:
        fp32_path = exporter.export_float(graph_model, Path(tmp) / f"fp32{exporter.suffix}")
        fp32_rt = harness(fp32_path, threads=threads)
        entry: dict = {"format": fmt, "path": Path(artifact).name, "runtime": exporter.runtime,
                       "size_bytes": file_size_bytes(artifact), "fp32_size_bytes": file_size_bytes(fp32_path),
                       "evaluations": []}
        for eval_set in eval_sets:
            ref = reference.run(eval_set.images)
            q = int8_rt.run(eval_set.images)
            sim = simulate(eval_set.images)
            row = {"source": eval_set.source, "images": int(len(eval_set.images)), "metric": eval_set.metric,
                   "output_snr_db": snr_db(ref, q), "output_cosine": cosine(ref, q),
                   **_quality(None, ref, eval_set, "fp32"), **_quality(ref, q, eval_set, "int8"),
                   **_quality(ref, sim, eval_set, "simulated"), **parity(q, sim, step)}
            entry["evaluations"].append(row)
        if layer_images is not None and hasattr(exporter, "layer_parity"):
            entry["per_layer"] = exporter.layer_parity(graph_model, ranges, artifact, layer_images)
        if latency_sample is not None:
            lat_f = fp32_rt.latency(latency_sample, repeats=latency_repeats)
            lat_q = int8_rt.latency(latency_sample, repeats=latency_repeats)
            entry["latency_batch1"] = {"threads": threads, "runtime": lat_q.get("runtime", exporter.runtime),
                                       "fp32_p50_ms": lat_f["p50_ms"], "fp32_p90_ms": lat_f["p90_ms"],
                                       "int8_p50_ms": lat_q["p50_ms"], "int8_p90_ms": lat_q["p90_ms"],
                                       "int8_over_fp32": lat_q["p50_ms"] / max(lat_f["p50_ms"], 1e-9)}
    return entry


def headline(entry: dict) -> dict | None:
    """The evaluation a gate and a summary look at: the labelled/dataset one if any, else the first."""
    rows = entry.get("evaluations", [])
    for row in rows:
        if not row["source"].startswith("held-back"):
            return row
    return rows[0] if rows else None


def accuracy_drop(row: dict) -> tuple[float, str]:
    """What `--max-drop` compares: top-1 points lost vs FP32 when labels exist, else points of
    top-1 disagreement with FP32; dB of PSNR lost for the dense task."""
    if row["metric"] == "psnr":
        return row["fp32_psnr_db"] - row["int8_psnr_db"], "dB PSNR"
    if "int8_top1_pct" in row:
        return row["fp32_top1_pct"] - row["int8_top1_pct"], "pt top-1"
    return 100.0 - row["int8_top1_agreement_pct"], "pt top-1 disagreement"


# A requantized model output that costs more than this (top-1 points) gets a hint in the log and
# in a failed gate: on many-class classifiers the calibrated logit range clips the top logits.
OUTPUT_LAYER_HINT_PTS = 1.0


def output_layer_note(entry: dict) -> str | None:
    row = headline(entry)
    if entry.get("output_layer") != "int8" or row is None or row["metric"] == "psnr":
        return None
    drop, unit = accuracy_drop(row)
    if drop <= OUTPUT_LAYER_HINT_PTS:
        return None
    return (f"requantizes the model output (int8 output layer) and loses {drop:.1f} {unit}; "
            "--output-layer float leaves the last layer's result unrequantized")


def apply_gate(report: dict, max_drop: float | None) -> None:
    """Record the gate's verdict in the report; the caller raises after writing it."""
    if max_drop is None:
        return
    failures = []
    for fmt, entry in report["artifacts"].items():
        row = headline(entry)
        if row is None:
            continue
        drop, unit = accuracy_drop(row)
        entry["gate"] = {"max_drop": max_drop, "drop": drop, "unit": unit, "passed": bool(drop <= max_drop)}
        if drop > max_drop:
            hint = " (int8 output layer: try --output-layer float)" if output_layer_note(entry) else ""
            failures.append(f"{fmt} loses {drop:.2f} {unit} on {row['source']}{hint}")
    report["gate"] = {"max_drop": max_drop, "passed": not failures, "failures": failures}


def raise_if_gate_failed(report: dict) -> None:
    gate = report.get("gate")
    if gate and not gate["passed"]:
        raise GateFailure(f"release gate --max-drop {gate['max_drop']} failed: {'; '.join(gate['failures'])} "
                          "(report written; try --estimator mse/percentile or more --samples)")


def check_eval_shape(images: np.ndarray, input_shape: tuple[int, ...], source: str) -> None:
    if images.ndim != len(input_shape) + 1 or tuple(images.shape[1:]) != tuple(input_shape):
        raise GzsqError(f"{source}: images of shape {tuple(images.shape[1:])}, the model takes {tuple(input_shape)} "
                        "(NCHW); resize them or pass the matching --input-shape")


def device_check(spec: str, artifact: str | Path, fmt: str, eval_set: EvalSet, host_outputs: np.ndarray,
                 threads: int = 1, step: float | None = None, **device_options) -> dict:
    """The same artifact on a device: accuracy there, top-1 agreement with this host's run, and the
    largest output difference. Latency under emulation is labelled as such (never a device figure)."""
    from gzsq.device import run_on_target

    result = run_on_target(spec, artifact, eval_set.images, threads, **device_options)
    out = result["outputs"]
    row = {"target": spec, "machine": result["machine"], "images": int(len(out)), "source": eval_set.source,
           "top1_agreement_with_host_pct": agreement(host_outputs, out),
           "max_abs_output_difference": float(np.abs(out.astype(np.float64) - host_outputs).max()),
           "latency_p50_ms": float(np.percentile(result["latency_ms"], 50)),
           "max_output_difference_steps": (float(np.abs(out.astype(np.float64) - host_outputs).max() / step)
                                           if step else None),
           "latency_kind": "emulated (qemu-user; not a device figure)" if result["emulated"] else "device"}
    if eval_set.metric == "psnr":
        row["psnr_db"] = psnr(out, eval_set.labels)
    elif eval_set.labels is not None:
        row["top1_pct"] = accuracy(out, eval_set.labels)
    return row
