"""Activation ranges: observe every float tensor of the graph the exporter quantizes, in ONNX
Runtime, from streamed histograms (two passes: min/max, then a fixed-bin histogram), and write
the versioned, tensor-name-keyed `ranges.json`.

The graph observed is `prepare_for_quantization(model)`: ONNX Runtime's own pre-processing
(shape inference, BN folding, constant folding). The exporter quantizes exactly that graph, so
the names in ranges.json are the names in the int8 model.
"""
from __future__ import annotations

import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
from onnx import numpy_helper

from gzsq.config import CalibrationConfig, InputDomain
from gzsq.errors import GzsqError
from gzsq.fileio import sha256_bytes, write_json_atomic
from gzsq.models import LoadedModel

RANGES_VERSION = 1
WEIGHT_OPS = {"Conv": 0, "Gemm": None, "MatMul": 1, "ConvTranspose": 1}
QUANT_LEVELS_U8 = 255


def prepare_for_quantization(model: LoadedModel) -> onnx.ModelProto:
    """ORT's quant_pre_process on the float model (cached on the LoadedModel)."""
    cached = getattr(model, "_prepared", None)
    if cached is not None:
        return cached
    from onnxruntime.quantization.shape_inference import quant_pre_process

    with tempfile.TemporaryDirectory(prefix="gzsq-prep-") as tmp:
        src, dst = Path(tmp) / "in.onnx", Path(tmp) / "out.onnx"
        onnx.save(model.onnx_model, str(src))
        try:
            quant_pre_process(str(src), str(dst), skip_symbolic_shape=False)
        except Exception:
            quant_pre_process(str(src), str(dst), skip_symbolic_shape=True)
        prepared = onnx.load(str(dst))
    prepared = fold_constant_affine_into_conv(prepared)
    model._prepared = prepared
    return prepared


def fold_constant_affine_into_conv(graph_model: onnx.ModelProto) -> onnx.ModelProto:
    """Fold a constant Mul/Add that follows a Conv (per output channel or scalar) into the Conv's
    weights and bias. Exact in float; int8 then rounds once where it would round twice (Fixup
    nets put scalar scales and biases after their convolutions, which ORT's fusions skip)."""
    model = onnx.ModelProto()
    model.CopyFrom(graph_model)
    graph = model.graph
    inits = {i.name: i for i in graph.initializer}
    consumers: dict[str, list] = {}
    for node in graph.node:
        for name in node.input:
            consumers.setdefault(name, []).append(node)
    outputs = {o.name for o in graph.output}
    removed = set()
    for conv in list(graph.node):
        if conv.op_type != "Conv" or len(conv.input) < 2 or conv.input[1] not in inits:
            continue
        while True:
            out = conv.output[0]
            users = consumers.get(out, [])
            if out in outputs or len(users) != 1 or users[0].op_type not in ("Add", "Mul"):
                break
            op = users[0]
            other = op.input[1] if op.input[0] == out else op.input[0]
            if other not in inits or id(op) in removed:
                break
            weight = numpy_helper.to_array(inits[conv.input[1]]).astype(np.float32)
            channels = weight.shape[0]
            const = numpy_helper.to_array(inits[other]).astype(np.float32)
            if const.size == 1:
                per_channel = np.full(channels, float(const.reshape(-1)[0]), np.float32)
            elif const.size == channels and const.shape[-2:] in ((1, 1),) and (const.ndim == 3 or
                                                                              (const.ndim == 4 and const.shape[0] == 1)):
                per_channel = const.reshape(channels)
            else:
                break
            bias = (numpy_helper.to_array(inits[conv.input[2]]).astype(np.float32) if len(conv.input) > 2 and conv.input[2]
                    else np.zeros(channels, np.float32))
            if op.op_type == "Mul":
                weight = weight * per_channel.reshape((-1,) + (1,) * (weight.ndim - 1))
                bias = bias * per_channel
            else:
                bias = bias + per_channel
            w_name, b_name = f"{conv.output[0]}__folded_w", f"{conv.output[0]}__folded_b"
            graph.initializer.extend([numpy_helper.from_array(weight, w_name), numpy_helper.from_array(bias, b_name)])
            inits[w_name], inits[b_name] = graph.initializer[-2], graph.initializer[-1]
            conv.input[1] = w_name
            if len(conv.input) > 2:
                conv.input[2] = b_name
            else:
                conv.input.append(b_name)
            conv.output[0] = op.output[0]  # the conv now computes the consumer's tensor (its name kept)
            removed.add(id(op))
            consumers[conv.output[0]] = consumers.get(op.output[0], [])
    if not removed:
        return graph_model
    kept = [n for n in graph.node if id(n) not in removed]
    del graph.node[:]
    graph.node.extend(kept)
    used = {name for n in graph.node for name in n.input}
    unused = [i for i in graph.initializer if i.name not in used]
    for init in unused:
        graph.initializer.remove(init)
    del graph.value_info[:]
    return onnx.shape_inference.infer_shapes(model)


def activation_tensors(graph_model: onnx.ModelProto) -> list[str]:
    """Names of the float activation tensors (graph input and node outputs), in graph order."""
    inferred = onnx.shape_inference.infer_shapes(graph_model)
    types = {vi.name: vi.type.tensor_type.elem_type for vi in
             list(inferred.graph.value_info) + list(inferred.graph.input) + list(inferred.graph.output)}
    initializers = {i.name for i in graph_model.graph.initializer}
    names = [i.name for i in graph_model.graph.input if i.name not in initializers]
    for node in graph_model.graph.node:
        if node.op_type in ("Shape", "Constant", "ConstantOfShape", "Size"):
            continue
        for out in node.output:
            if out and types.get(out) == onnx.TensorProto.FLOAT and out not in names:
                names.append(out)
    return names


def quant_params_u8(rmin: float, rmax: float) -> tuple[float, int, float, float]:
    """uint8 asymmetric scale/zero-point of [rmin, rmax] (widened to contain 0, as ONNX requires)."""
    rmin, rmax = min(float(rmin), 0.0), max(float(rmax), 0.0)
    if rmax - rmin < 1e-8:
        rmax = rmin + 1e-8
    scale = np.float32((rmax - rmin) / QUANT_LEVELS_U8)
    zero_point = int(np.clip(np.round(-rmin / scale), 0, QUANT_LEVELS_U8))
    return float(scale), zero_point, rmin, rmax


# --- range estimators on a histogram ---------------------------------------------------------------
def _centres(edges: np.ndarray) -> np.ndarray:
    return (edges[:-1] + edges[1:]) / 2


def estimate_percentile(counts, edges, lo, hi, pct: float) -> tuple[float, float]:
    cdf = np.cumsum(counts) / max(counts.sum(), 1)
    upper = float(edges[1:][np.searchsorted(cdf, pct / 100.0)]) if counts.sum() else hi
    lower = float(edges[:-1][np.searchsorted(cdf, 1 - pct / 100.0)]) if lo < 0 else lo
    return min(lower, 0.0) if lo < 0 else lo, max(upper, 0.0)


def estimate_mse(counts, edges, lo, hi) -> tuple[float, float]:
    centres = _centres(edges)
    best, best_err = (lo, hi), np.inf
    for f in np.linspace(0.05, 1.0, 96):
        a, b = min(lo * f, 0.0), max(hi * f, 0.0)
        scale = max(b - a, 1e-12) / QUANT_LEVELS_U8
        clipped = np.clip(centres, a, b)
        err = np.where((centres >= a) & (centres <= b), scale ** 2 / 12, (centres - clipped) ** 2)
        total = float((counts * err).sum())
        if total < best_err:
            best, best_err = (a, b), total
    return best


def estimate_entropy(counts, edges, lo, hi, levels: int = 128) -> tuple[float, float]:
    """KL-divergence threshold (TensorRT's method) on |x|, applied symmetrically to signed tensors."""
    centres = np.abs(_centres(edges))
    magnitude = max(abs(lo), abs(hi))
    nbins = len(counts)
    hist, _ = np.histogram(centres, bins=nbins, range=(0, magnitude), weights=counts)
    hist = hist.astype(np.float64)
    best_i, best_kl = nbins, np.inf
    for i in range(levels, nbins + 1, max(1, nbins // 256)):
        p = hist[:i].copy()
        p[-1] += hist[i:].sum()
        if p.sum() == 0:
            continue
        chunks = np.array_split(np.arange(i), levels)
        q = np.zeros(i)
        for idx in chunks:
            nonzero = hist[idx] > 0
            if nonzero.any():
                q[idx[nonzero]] = hist[idx].sum() / nonzero.sum()
        pn, qn = p / p.sum(), q / max(q.sum(), 1e-12)
        mask = pn > 0
        kl = float(np.sum(pn[mask] * np.log(pn[mask] / np.maximum(qn[mask], 1e-12))))
        if kl < best_kl:
            best_kl, best_i = kl, i
    threshold = magnitude * best_i / nbins
    return (max(lo, -threshold) if lo < 0 else lo), min(hi, threshold)


@dataclass
class _TensorObservation:
    lo: float = np.inf
    hi: float = -np.inf
    counts: np.ndarray | None = None
    edges: np.ndarray | None = None


def _session(graph_model: onnx.ModelProto, outputs: list[str]):
    import onnxruntime as ort

    augmented = onnx.ModelProto()
    augmented.CopyFrom(graph_model)
    existing = {o.name for o in augmented.graph.output}
    for name in outputs:
        if name not in existing:
            augmented.graph.output.append(onnx.helper.make_empty_tensor_value_info(name))
    opts = ort.SessionOptions()
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    opts.log_severity_level = 3
    return ort.InferenceSession(augmented.SerializeToString(), opts, providers=["CPUExecutionProvider"])


def _batches(images: np.ndarray, batch: int, fixed: int | None):
    step = fixed or batch
    for i in range(0, len(images) - (len(images) % step if fixed else 0), step):
        yield images[i:i + step]


def observe_ranges(model: LoadedModel, images: np.ndarray, config: CalibrationConfig,
                   domain: InputDomain | None = None, progress: bool = True) -> dict[str, dict]:
    """Per-tensor {min, max, observed_min, observed_max} for every activation tensor."""
    from tqdm import tqdm

    graph_model = prepare_for_quantization(model)
    names = activation_tensors(graph_model)
    sess = _session(graph_model, names)
    input_name = sess.get_inputs()[0].name
    obs = {n: _TensorObservation() for n in names}
    passes = 1 if config.estimator == "minmax" else 2
    for pass_index in range(passes):
        for batch in tqdm(list(_batches(images, config.batch_size, model.batch_dim_fixed)), leave=False,
                          desc=f"calibrate pass {pass_index + 1}/{passes}", disable=not progress or None):
            results = sess.run(names, {input_name: batch.astype(np.float32)})
            for name, value in zip(names, results):
                o = obs[name]
                if pass_index == 0:
                    o.lo, o.hi = min(o.lo, float(value.min())), max(o.hi, float(value.max()))
                else:
                    if o.counts is None:
                        o.edges = np.linspace(o.lo, o.hi if o.hi > o.lo else o.lo + 1e-6, config.histogram_bins + 1)
                        o.counts = np.zeros(config.histogram_bins, np.int64)
                    o.counts += np.histogram(value, bins=o.edges)[0]
    out = {}
    for name in names:
        o = obs[name]
        if not np.isfinite(o.lo):
            continue
        if config.estimator == "minmax":
            lo, hi = o.lo, o.hi
        elif config.estimator == "percentile":
            lo, hi = estimate_percentile(o.counts, o.edges, o.lo, o.hi, config.percentile)
        elif config.estimator == "mse":
            lo, hi = estimate_mse(o.counts, o.edges, o.lo, o.hi)
        else:
            lo, hi = estimate_entropy(o.counts, o.edges, o.lo, o.hi)
        source = config.estimator
        if name == input_name and domain is not None and domain.is_bounded:
            channels = model.input_shape[0]
            b_lo, b_hi = domain.bounds(channels)
            lo, hi, source = float(b_lo.min()), float(b_hi.max()), "input domain"
        out[name] = {"lo": lo, "hi": hi, "observed_min": o.lo, "observed_max": o.hi, "source": source}
    return out


def weight_axis(node: onnx.NodeProto) -> int:
    """Output-channel axis of a Conv/Gemm/MatMul weight (the per-channel quantization axis)."""
    if node.op_type == "Gemm":
        return 0 if next((a.i for a in node.attribute if a.name == "transB"), 0) else 1
    return WEIGHT_OPS[node.op_type]


def weight_entries(graph_model: onnx.ModelProto) -> dict[str, dict]:
    """int8 symmetric per-output-channel parameters of every Conv/Gemm/MatMul weight."""
    inits = {i.name: i for i in graph_model.graph.initializer}
    out = {}
    for node in graph_model.graph.node:
        if node.op_type not in WEIGHT_OPS or len(node.input) < 2 or node.input[1] not in inits:
            continue
        w = numpy_helper.to_array(inits[node.input[1]]).astype(np.float32)
        axis = weight_axis(node)
        if w.ndim < 2:
            continue
        absmax = np.abs(np.moveaxis(w, axis, 0).reshape(w.shape[axis], -1)).max(1)
        out[node.input[1]] = {"min": (-absmax).tolist(), "max": absmax.tolist(),
                              "scale": (np.maximum(absmax, 1e-12) / 127.0).astype(np.float32).tolist(),
                              "zero_point": [0] * len(absmax), "dtype": "int8", "axis": axis,
                              "granularity": "per_channel", "symmetric": True}
    return out


def build_ranges(model: LoadedModel, calibration, config: CalibrationConfig, progress: bool = True) -> dict:
    """The `ranges.json` payload for a model and a CalibrationSet."""
    calibration.check_model(model)
    images = calibration.calibration_images
    if images.shape[1:] != tuple(model.input_shape):
        raise GzsqError(f"calibration images have shape {images.shape[1:]}, the model takes {model.input_shape}")
    observed = observe_ranges(model, images, config, calibration.domain, progress)
    tensors = {}
    for name, o in observed.items():
        scale, zp, rmin, rmax = quant_params_u8(o["lo"], o["hi"])
        tensors[name] = {"min": rmin, "max": rmax, "scale": scale, "zero_point": zp, "dtype": "uint8",
                         "observed_min": o["observed_min"], "observed_max": o["observed_max"], "source": o["source"]}
    graph_model = prepare_for_quantization(model)
    return {
        "version": RANGES_VERSION,
        "model_sha256": model.sha256,
        "graph_sha256": sha256_bytes(graph_model.SerializeToString()),
        "calibration": {"method": calibration.method, "seed": calibration.seed, "samples": int(len(images)),
                        "estimator": config.estimator, "estimator_config": config.to_dict(),
                        "domain": calibration.domain.to_dict(),
                        "calibration_sha256": sha256_bytes(np.ascontiguousarray(calibration.images).tobytes())},
        "activation_scheme": "uint8 asymmetric per-tensor",
        "weight_scheme": "int8 symmetric per-output-channel",
        "tensors": tensors,
        "weights": weight_entries(graph_model),
    }


def save_ranges(payload: dict, path: str | Path) -> Path:
    return write_json_atomic(path, payload)


def load_ranges(path: str | Path, model: LoadedModel | None = None) -> dict:
    import json

    try:
        payload = json.loads(Path(path).read_text())
    except FileNotFoundError:
        raise GzsqError(f"ranges file {path} does not exist; create it with `gzsq calibrate`") from None
    except (json.JSONDecodeError, UnicodeDecodeError):
        raise GzsqError(f"{path} is not valid JSON; recreate it with `gzsq calibrate`") from None
    if not isinstance(payload, dict) or payload.get("version") != RANGES_VERSION or "tensors" not in payload:
        raise GzsqError(f"{path} is not a gzsq ranges file (version {RANGES_VERSION}); recreate it with `gzsq calibrate`")
    if model is not None and payload.get("model_sha256") != model.sha256:
        raise GzsqError(f"ranges file {path} was made for another model ({str(payload.get('model_sha256'))[:12]}…, "
                        f"not {model.sha256[:12]}…); run `gzsq calibrate` on this model")
    return payload
