"""TFLite full-int8 exporter: the ranges.json scales, through torch PT2E and litert-torch.

Path: pre-processed ONNX graph → static batch → onnx2torch → torch.export
(gzsq.torch_graph keeps the ONNX tensor name of every node) → PT2E `prepare_pt2e` with
litert-torch's quantizer, widened so every float op is quantized → each observer replaced by one
that returns the ranges.json parameters of the tensor it observes → `convert_pt2e` →
`litert_torch.convert`.

Activation parameters are those of ranges.json moved from uint8 to int8: the same scale and
zero_point − 128 (the same real grid). Weights are int8 symmetric per output channel with the
ranges.json scales. Where the quantizer forces two tensors to share parameters (pooling,
reshape, concat inputs), the shared parameters are those of the producing tensor, as in TFLite's
own rules.
"""
from __future__ import annotations

import json
import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import onnx

from gzsq.config import check_output_layer
from gzsq.errors import GzsqError
from gzsq.fileio import atomic_path, sha256_bytes
from gzsq.runtime_api import quiet_native as _quiet
from gzsq.tflite_flatbuffer import op_name, pack_model, read_model
from gzsq.tflite_flatbuffer import schema as tflite_schema

# aten ops litert-torch's stock quantizer can leave in float (chained residual adds, a Clip that
# is not fused into its conv, pooling/reshape tails). Each is annotated here so no float island
# survives: inputs and output quantized (the ops below keep the value grid, so TFLite shares it).
_EXTRA_ANNOTATED_OPS = ("add.Tensor", "mul.Tensor", "sub.Tensor", "hardtanh.default", "clamp.default",
                        "relu.default", "relu6.default", "hardswish.default", "hardsigmoid.default",
                        "sigmoid.default", "mean.dim", "avg_pool2d.default", "adaptive_avg_pool2d.default",
                        "max_pool2d.default", "leaky_relu.default", "tanh.default", "silu.default",
                        "gelu.default", "prelu.default", "upsample_nearest2d.vec", "upsample_bilinear2d.vec",
                        "pad.default", "constant_pad_nd.default")


@dataclass(frozen=True)
class TfliteExportResult:
    path: Path
    weight_bits: int
    scheme: str
    quantized_tensors: list[str]
    io_dtype: str
    shared: dict[str, str] = field(default_factory=dict)
    float_ops: list[str] = field(default_factory=list)      # ops computing in float (the output layer with float I/O)
    float_islands: list[str] = field(default_factory=list)  # float ops between int8 ops (none for the zoo models)


def _full_int8_quantizer(has_onnx_name=lambda node: True, float_output: bool = False):
    import torch
    from litert_torch.quantize.pt2e_quantizer import PT2EQuantizer, get_symmetric_quantization_config
    from torchao.quantization.pt2e.quantizer import QuantizationAnnotation

    config = get_symmetric_quantization_config(is_per_channel=True)
    act_spec = config.input_activation
    targets = {f"aten.{op}" for op in _EXTRA_ANNOTATED_OPS}  # by name: graph OpOverloads need not be identical objects

    def float_activation(arg) -> bool:
        val = arg.meta.get("val") if isinstance(arg, torch.fx.Node) else None
        return arg.op != "get_attr" and isinstance(val, torch.Tensor) and val.is_floating_point() if val is not None else False

    class FullInt8Quantizer(PT2EQuantizer):
        def annotate(self, model):
            model = super().annotate(model)
            for node in model.graph.nodes:
                # Only values that are ONNX tensors can be given a ranges.json range; an aten node
                # inside a converted op (e.g. the mul of a decomposed HardSigmoid) is left alone.
                if node.op != "call_function" or str(node.target) not in targets or not has_onnx_name(node):
                    continue
                inputs = {a: act_spec for a in node.args if float_activation(a) and has_onnx_name(a)}
                if DERIVED_RANGE in node.meta:  # a rewritten op's constant operand (PReLU slopes) is int8 too
                    inputs.update({a: act_spec for a in node.args if isinstance(a, torch.fx.Node) and a.op == "get_attr"})
                annotation = node.meta.get("quantization_annotation")
                # The stock annotator marks chained adds "annotated" without quantizing them.
                if (annotation is not None and annotation.output_qspec is not None
                        and set(inputs) <= set(annotation.input_qspec_map)):
                    continue
                node.meta["quantization_annotation"] = QuantizationAnnotation(
                    input_qspec_map=inputs, output_qspec=act_spec, _annotated=True)
            _fuse_activations(model, act_spec)
            if float_output:
                _float_outputs(model)
            return model

    return FullInt8Quantizer().set_global(config)


# TFLite fuses these activations into the op before them (CONV_2D, DEPTHWISE_CONV_2D,
# FULLY_CONNECTED, ADD, MUL) and keeps only the activation's output quantization. The PT2E graph
# must quantize the same way, or its simulation rounds twice where the runtime rounds once.
_FUSED_PRODUCERS = {"aten.conv2d.default", "aten.conv1d.default", "aten.linear.default", "aten.add.Tensor",
                    "aten.mul.Tensor"}
_FUSED_ACTIVATION_BOUNDS = {"aten.relu.default": None, "aten.relu6.default": (0.0, 6.0),
                            "aten.hardtanh.default": "args", "aten.clamp.default": "args"}
_TFLITE_FUSED_RANGES = {(0.0, 6.0), (-1.0, 1.0), (0.0, 1.0)}


def _fusable(node) -> bool:
    kind = _FUSED_ACTIVATION_BOUNDS.get(str(node.target), False)
    if kind is False:
        return False
    if kind != "args":
        return True
    bounds = tuple(float(b) if isinstance(b, (int, float)) else None for b in list(node.args[1:3]) + [None] * (3 - len(node.args)))[:2]
    return bounds in _TFLITE_FUSED_RANGES or (bounds[0] == 0.0 and bounds[1] is None)


def _float_outputs(model) -> None:
    """Leave the values the graph returns unquantized (see exporters/onnx_qdq.dequantized_outputs)."""
    for node in model.graph.nodes:
        if node.op != "output":
            continue
        for value in node.all_input_nodes:
            annotation = value.meta.get("quantization_annotation")
            if annotation is not None:
                annotation.output_qspec = None


def _fuse_activations(model, act_spec) -> None:
    for node in model.graph.nodes:
        if node.op != "call_function" or not node.args or not _fusable(node):
            continue
        source = node.args[0]
        if (getattr(source, "op", None) != "call_function" or str(source.target) not in _FUSED_PRODUCERS
                or len(source.users) != 1):
            continue
        producer = source.meta.get("quantization_annotation")
        consumer = node.meta.get("quantization_annotation")
        if producer is None or consumer is None or consumer.output_qspec is None:
            continue
        producer.output_qspec = None
        consumer.input_qspec_map.pop(source, None)
        if type(consumer.output_qspec).__name__ == "SharedQuantizationSpec":  # it pointed at the producer
            consumer.output_qspec = act_spec


def _fixed_observer(scale, zero_point, per_channel: bool, ch_axis: int = 0):
    """An observer that reports given parameters instead of measuring (convert_pt2e reads it)."""
    import torch
    from torchao.quantization.pt2e import ObserverBase

    class FixedObserver(ObserverBase):
        def __init__(self):
            super().__init__(dtype=torch.int8, is_dynamic=False)
            self.qscheme = torch.per_channel_symmetric if per_channel else torch.per_tensor_affine
            self.quant_min, self.quant_max = (-127, 127) if per_channel else (-128, 127)
            self.ch_axis = ch_axis
            self.register_buffer("scale", torch.tensor(np.atleast_1d(scale), dtype=torch.float32))
            self.register_buffer("zero_point", torch.tensor(np.atleast_1d(zero_point), dtype=torch.int32))

        def forward(self, x):
            return x

        def calculate_qparams(self):
            if per_channel:
                return self.scale, self.zero_point
            return self.scale[0], self.zero_point[0]

    return FixedObserver()


def _constant_observer(values: np.ndarray, old):
    import torch

    if getattr(old, "qscheme", None) in (torch.per_channel_symmetric, torch.per_channel_affine):
        axis = int(old.ch_axis)
        absmax = np.abs(np.moveaxis(values, axis, 0).reshape(values.shape[axis], -1)).max(1)
        return _fixed_observer(np.maximum(absmax, 1e-12) / 127.0, np.zeros(len(absmax), np.int32), True, axis)
    scale, zero_point = affine_int8_params(float(values.min()), float(values.max()))
    return _fixed_observer(scale, zero_point, False)


def affine_int8_params(low: float, high: float) -> tuple[float, int]:
    """Per-tensor asymmetric int8 (scale, zero_point) covering [low, high] and 0: ranges.json's
    uint8 grid of that range, zero point − 128 (as int8_params)."""
    from gzsq.ranges import quant_params_u8

    scale, zero_point, _, _ = quant_params_u8(low, high)
    return scale, zero_point - 128


def int8_params(entry: dict) -> tuple[float, int]:
    """ranges.json's uint8 (scale, zero_point) as int8: same scale, zero_point − 128."""
    return float(np.float32(entry["scale"])), int(entry["zero_point"]) - 128


def _install_ranges(prepared, graph, ranges: dict) -> tuple[list[str], dict[str, str]]:
    """Replace every PT2E observer with one holding ranges.json's parameters of its tensor."""
    tensors, weights = ranges["tensors"], ranges.get("weights", {})
    quantized, shared = [], {}
    seen: dict[str, str] = {}
    for node in prepared.graph.nodes:
        if node.op != "call_module" or "activation_post_process" not in str(node.target):
            continue
        observed = node.args[0]
        old = getattr(prepared, node.target)
        if observed.op == "get_attr":  # a weight: owner submodule's ONNX node, input 1
            name = _weight_name(graph, observed)
            weight = prepared
            for part in str(observed.target).split("."):
                weight = getattr(weight, part)
            if name is None or name not in weights:
                # A constant operand (e.g. a Fixup scale or bias added to activations): its values
                # are its range, so it is quantized from them, not from calibration.
                setattr(prepared, node.target, _constant_observer(weight.detach().numpy(), old))
                continue
            entry = weights[name]
            axis = int(getattr(old, "ch_axis", 0))
            scale = np.asarray(entry["scale"], np.float32)
            if weight.shape[axis] != scale.size:
                raise GzsqError(f"weight {name!r}: ranges.json has {scale.size} channels, the graph {weight.shape[axis]}; "
                                "recreate ranges.json with `gzsq calibrate` on this model")
            setattr(prepared, node.target, _fixed_observer(scale, np.zeros(scale.size, np.int32), True, axis))
            continue
        if node.target in seen:  # shared observer module: already set from its first tensor
            continue
        name = graph.tensor_name(observed)
        if name is None and DERIVED_RANGE in observed.meta:
            derived = observed.meta[DERIVED_RANGE]
            try:
                scale, zp = derived.params(tensors)
            except KeyError as e:
                raise GzsqError(f"the TFLite quantizer needs a range for tensor {e.args[0]!r}, which ranges.json lacks; "
                                "recreate it with `gzsq calibrate` on this model") from None
            setattr(prepared, node.target, _fixed_observer(scale, zp, False))
            seen[node.target] = derived.describe
            continue
        if name is None or name not in tensors:
            raise GzsqError(f"the TFLite quantizer needs a range for tensor {name or observed.name!r}, "
                            "which ranges.json lacks; recreate it with `gzsq calibrate` on this model")
        scale, zp = int8_params(tensors[name])
        setattr(prepared, node.target, _fixed_observer(scale, zp, False))
        seen[node.target] = name
        quantized.append(name)
    # Observers shared by several tensors (PT2E's SharedQuantizationSpec) are called from several
    # nodes with the same target; record which tensors inherit which range.
    for node in prepared.graph.nodes:
        if node.op == "call_module" and node.target in seen:
            name = graph.tensor_name(node.args[0])
            if name and name != seen[node.target]:
                shared[name] = seen[node.target]
    return quantized, shared


def _weight_name(graph, get_attr_node) -> str | None:
    owner = str(get_attr_node.target).split(".")[0]
    index = owner[len("gzsq_n"):] if owner.startswith("gzsq_n") else None
    if index is None or not index.isdigit():
        return None
    node = graph.graph_model.graph.node[int(index)]
    return node.input[1] if len(node.input) > 1 else None


def float_op_count(tflite_bytes: bytes) -> tuple[int, list[str]]:
    """Operators computing in float (any float32 input or output), not counting the QUANTIZE /
    DEQUANTIZE at the model's float I/O boundary."""
    model = read_model(tflite_bytes)
    float32 = tflite_schema().TensorType.FLOAT32
    graph = model.subgraphs[0]
    float_ops = []
    for op in graph.operators:
        opname = op_name(model, op)
        if opname in ("QUANTIZE", "DEQUANTIZE") and (set(op.inputs) & set(graph.inputs) or set(op.outputs) & set(graph.outputs)):
            continue
        if any(graph.tensors[i].type == float32 for i in list(op.inputs) + list(op.outputs) if i >= 0):
            float_ops.append(opname)
    return len(float_ops), float_ops


def float_islands(tflite_bytes: bytes) -> list[str]:
    """Float ops whose results flow back into int8 computation (DEQUANTIZE → op → QUANTIZE
    islands). Float ops that only lead to the model's outputs — the output layer that float-I/O
    artifacts keep unrequantized — are not islands."""
    schema = tflite_schema()
    model = read_model(tflite_bytes)
    graph = model.subgraphs[0]
    ops = list(graph.operators)
    consumers: dict[int, list[int]] = {}
    for k, op in enumerate(ops):
        for i in op.inputs:
            consumers.setdefault(int(i), []).append(k)
    is_float = [any(graph.tensors[i].type == schema.TensorType.FLOAT32 for i in list(op.inputs) + list(op.outputs) if i >= 0)
                for op in ops]
    integer_out = [any(graph.tensors[i].type in (schema.TensorType.INT8, schema.TensorType.UINT8) for i in op.outputs)
                   for op in ops]
    memo: dict[int, bool] = {}

    def reaches_integer(k: int) -> bool:
        if k not in memo:
            memo[k] = False
            memo[k] = any(integer_out[c] or reaches_integer(c) for o in ops[k].outputs for c in consumers.get(int(o), []))
        return memo[k]

    boundary = set(graph.inputs)
    islands = []
    for k, op in enumerate(ops):
        if not is_float[k] or set(op.inputs) & boundary:  # the float-input QUANTIZE is I/O, not an island
            continue
        if reaches_integer(k):
            islands.append(op_name(model, op))
    return islands


def _add_float_io(tflite_bytes: bytes) -> bytes:
    """Give an int8-I/O model float I/O: QUANTIZE after each input, DEQUANTIZE before each output."""
    schema = tflite_schema()
    model = read_model(tflite_bytes)
    graph = model.subgraphs[0]

    def opcode(builtin):
        for i, code in enumerate(model.operatorCodes):
            if max(code.builtinCode, code.deprecatedBuiltinCode) == builtin:
                return i
        code = schema.OperatorCodeT()
        code.builtinCode = builtin
        code.deprecatedBuiltinCode = min(builtin, 127)
        code.version = 1
        model.operatorCodes.append(code)
        return len(model.operatorCodes) - 1

    def float_twin(index: int) -> int:
        src = graph.tensors[index]
        twin = schema.TensorT()
        twin.shape = list(src.shape)
        twin.shapeSignature = list(src.shapeSignature) if src.shapeSignature is not None else None
        twin.type = schema.TensorType.FLOAT32
        twin.name = (src.name.decode() if isinstance(src.name, bytes) else src.name) + "_float"
        model.buffers.append(schema.BufferT())
        twin.buffer = len(model.buffers) - 1
        graph.tensors.append(twin)
        return len(graph.tensors) - 1

    def float_boundary(indices: list[int], builtin: int, is_input: bool) -> list:
        """Swap each int8 boundary tensor for a float twin, joined to it by one QUANTIZE/DEQUANTIZE."""
        ops = []
        for pos, index in enumerate(indices):
            if graph.tensors[index].type != schema.TensorType.INT8:
                continue
            twin = float_twin(index)
            op = schema.OperatorT()
            op.opcodeIndex = opcode(builtin)
            op.inputs, op.outputs = ([twin], [index]) if is_input else ([index], [twin])
            ops.append(op)
            indices[pos] = twin
        return ops

    graph.inputs, graph.outputs = [int(i) for i in graph.inputs], [int(i) for i in graph.outputs]
    head = float_boundary(graph.inputs, schema.BuiltinOperator.QUANTIZE, is_input=True)
    tail = float_boundary(graph.outputs, schema.BuiltinOperator.DEQUANTIZE, is_input=False)
    graph.operators = head + list(graph.operators) + tail
    for signature in model.signatureDefs or []:
        _remap_signature(signature, graph)
    return pack_model(model, len(tflite_bytes))


def _remap_signature(signature, graph) -> None:
    """Point a signature's I/O entries at the (new) float boundary tensors, by position."""
    for entries, indices in ((signature.inputs, graph.inputs), (signature.outputs, graph.outputs)):
        for entry, index in zip(entries or [], indices):
            entry.tensorIndex = index


def _litert():
    try:
        with _quiet():  # importing prints C++ and absl notices
            import litert_torch
        from litert_torch.quantize.quant_config import QuantConfig
        from torchao.quantization.pt2e.quantize_pt2e import convert_pt2e, prepare_pt2e
    except ImportError as e:
        raise GzsqError(f"the TFLite exporter needs litert-torch and torchao ({e.name} is missing); "
                        "pip install litert-torch==0.10.0 torchao==0.18.0") from None
    return litert_torch, QuantConfig, prepare_pt2e, convert_pt2e


@dataclass
class QuantizedTorchGraph:
    """The PT2E graph the .tflite is converted from: running it in torch is the fake-quant
    simulation of exactly the artifact's quantization (same placement, same parameters)."""

    graph: object
    quantizer: object
    converted: object
    quantized: list[str]
    shared: dict[str, str]

    def simulate(self, images: np.ndarray) -> np.ndarray:
        import torch

        from gzsq.runtime_api import run_in_batches

        fixed = int(self.graph.example_input.shape[0])
        with torch.no_grad():
            return run_in_batches(lambda x: self.converted(torch.from_numpy(np.ascontiguousarray(x, np.float32))).numpy(),
                                  images, fixed, fixed)


def quantized_torch_graph(graph_model: onnx.ModelProto, ranges: dict, batch: int = 1,
                          float_output: bool = False) -> QuantizedTorchGraph:
    """The PT2E graph with ranges.json's parameters. The exporter converts the batch-1 graph; the
    simulation uses a larger fixed batch (same parameters, same placement), which is much faster."""
    from gzsq.torch_graph import export_torch_graph

    _, _, prepare_pt2e, convert_pt2e = _litert()
    from torchao.quantization.pt2e import move_exported_model_to_eval

    with _quiet():
        graph = export_torch_graph(graph_model, batch=batch)
        _tflite_activation_forms(graph)
        _break_splat_biases(graph.module)
        quantizer = _full_int8_quantizer(lambda node: graph.tensor_name(node) is not None or DERIVED_RANGE in node.meta,
                                         float_output)
        prepared = prepare_pt2e(graph.module, quantizer)
        quantized, shared = _install_ranges(prepared, graph, ranges)
        converted = convert_pt2e(prepared, fold_quantize=False)
        move_exported_model_to_eval(converted)
    return QuantizedTorchGraph(graph, quantizer, converted, quantized, shared)


# Meta key of a node that a rewrite created: it has no ONNX tensor of its own, but its range
# follows from one (a DerivedRange).
DERIVED_RANGE = "gzsq_derived_range"


@dataclass(frozen=True)
class DerivedRange:
    """An intermediate's int8 grid from an ONNX tensor's ranges.json entry: that tensor's grid
    scaled by `factor` (relu6(x + 3) is 6 × hardsigmoid(x)), or, with `clip`, the [low, high]
    of the tensor's range clipped to `clip` (min(x, 0)), or times `multipliers` (w · min(x, 0))."""

    tensor: str
    factor: float = 1.0
    clip: tuple[float, float] | None = None
    multipliers: tuple[float, float] | None = None

    @property
    def describe(self) -> str:
        return f"{self.tensor} (derived)"

    def params(self, tensors: dict) -> tuple[float, int]:
        entry = tensors[self.tensor]
        if self.clip is None and self.multipliers is None:
            scale, zp = int8_params(entry)
            return float(np.float32(scale * self.factor)), zp
        low, high = float(entry["min"]), float(entry["max"])
        if self.clip is not None:
            low, high = max(low, self.clip[0]), min(high, self.clip[1])
        if self.multipliers is not None:
            ends = [low * m for m in self.multipliers] + [high * m for m in self.multipliers]
            low, high = min(ends), max(ends)
        return affine_int8_params(low, high)


def _placement_meta(node) -> dict:
    """The meta a replacement node inherits: its value and ONNX owner, not the source-function
    record the stock annotator matches op patterns by (a hardswish must not look like a mul)."""
    return {k: v for k, v in node.meta.items() if k in ("val", "tensor_meta", "nn_module_stack", "stack_trace")}


def _tflite_activation_forms(graph) -> None:
    """Rewrite activations TFLite has no int8 kernel for into forms it has, before quantization.

    - HardSwish, which ONNX exporters often inline as HardSigmoid → Mul(x, ·): one
      aten.hardswish (TFLite HARD_SWISH, int8). The HardSigmoid's own tensor disappears.
    - A lone HardSigmoid (squeeze-excite gates): relu6(x + 3) · 1/6 (ADD with fused RELU6, then
      MUL). The intermediate relu6(x + 3) is 6 × the output, so its grid is the ONNX tensor's
      grid scaled by 6 and the MUL requantizes exactly: one rounding, as in the QDQ model.
    - PReLU (litert-torch lowers it to float RELU/MUL/SUB, with no int8 PRELU): relu(x) +
      w · min(x, 0) (RELU, MINIMUM, MUL, ADD, all int8). relu(x) and min(x, 0) stay on x's own
      grid (exact); w · min(x, 0) gets the range x's range and the slopes imply, so the only
      added rounding is that product's.
    Left alone, each becomes a float island (DEQUANTIZE → ADD/MUL/… → QUANTIZE)."""
    import torch

    aten = torch.ops.aten
    fx_graph = graph.module.graph
    changed = False
    for node in list(fx_graph.nodes):
        if node.op != "call_function":
            continue
        if node.target == aten.hardsigmoid.default:
            changed |= _rewrite_hardsigmoid(graph, node)
        elif node.target == aten.prelu.default:
            changed |= _rewrite_prelu(graph, node)
    if changed:
        fx_graph.lint()
        graph.module.recompile()


def _rewrite_hardsigmoid(graph, node) -> bool:
    import torch

    aten, fx_graph = torch.ops.aten, graph.module.graph
    x = node.args[0]
    users = list(node.users)
    if (len(users) == 1 and users[0].op == "call_function" and users[0].target == aten.mul.Tensor
            and len(users[0].args) == 2 and set(users[0].args) == {node, x}):
        mul = users[0]
        with fx_graph.inserting_before(mul):
            fused = fx_graph.call_function(aten.hardswish.default, (x,))
        fused.meta = _placement_meta(mul)
        mul.replace_all_uses_with(fused)
        fx_graph.erase_node(mul)
        fx_graph.erase_node(node)
        return True
    name = graph.tensor_name(node)
    if name is None:
        return False
    with fx_graph.inserting_before(node):
        shifted = fx_graph.call_function(aten.add.Tensor, (x, 3.0))
        clipped = fx_graph.call_function(aten.hardtanh.default, (shifted, 0.0, 6.0))
        scaled = fx_graph.call_function(aten.mul.Tensor, (clipped, 1.0 / 6.0))
    for new in (shifted, clipped, scaled):
        new.meta = _placement_meta(node)
    for new in (shifted, clipped):
        new.meta[DERIVED_RANGE] = DerivedRange(name, factor=6.0)
    node.replace_all_uses_with(scaled)
    fx_graph.erase_node(node)
    return True


def _rewrite_prelu(graph, node) -> bool:
    import torch

    aten, fx_graph, module = torch.ops.aten, graph.module.graph, graph.module
    x, slope = node.args[0], node.args[1]
    x_name, val = graph.tensor_name(x), x.meta.get("val")
    weight = _constant_value(module, slope)
    if x_name is None or graph.tensor_name(node) is None or weight is None or val is None or val.dim() < 2:
        return False
    channels = weight.numel()
    shape = [1, channels] + [1] * (val.dim() - 2)  # rank of x: the NHWC layout pass keeps it in place
    attr = f"gzsq_slope_{node.name}"
    module.register_buffer(attr, weight.detach().reshape(shape).clone())
    w = [float(weight.min()), float(weight.max())]
    with fx_graph.inserting_before(node):
        slope_node = fx_graph.get_attr(attr)
        positive = fx_graph.call_function(aten.relu.default, (x,))
        negative = fx_graph.call_function(aten.clamp.default, (x, None, 0.0))
        scaled = fx_graph.call_function(aten.mul.Tensor, (negative, slope_node))
        out = fx_graph.call_function(aten.add.Tensor, (positive, scaled))
    slope_node.meta = {"val": getattr(module, attr)}
    for new in (positive, negative, scaled, out):
        new.meta = _placement_meta(node)
    # relu(x) and min(x, 0) keep x's own grid: exact, and TFLite's MINIMUM needs no requantize.
    positive.meta[DERIVED_RANGE] = DerivedRange(x_name)
    negative.meta[DERIVED_RANGE] = DerivedRange(x_name)
    scaled.meta[DERIVED_RANGE] = DerivedRange(x_name, clip=(float("-inf"), 0.0), multipliers=(w[0], w[1]))
    node.replace_all_uses_with(out)
    fx_graph.erase_node(node)
    return True


def _constant_value(module, node):
    """The tensor a get_attr node (possibly behind view/reshape) holds, or None."""
    import torch

    while (isinstance(node, torch.fx.Node) and node.op == "call_function"
           and any(op in str(node.target) for op in ("view", "reshape"))):
        node = node.args[0]
    if not isinstance(node, torch.fx.Node) or node.op != "get_attr":
        return None
    value = module
    for part in str(node.target).split("."):
        value = getattr(value, part)
    return value.detach() if isinstance(value, torch.Tensor) else None


def _break_splat_biases(module) -> None:
    """The TFLite converter stores a bias whose channels are all equal as a splat constant and
    then quantizes it with one scale instead of input_scale × weight_scale[c] per channel (seen
    with Fixup scalar biases folded into a conv). Moving one channel by one float ulp keeps the
    constant dense; the change is 1e-7 relative, and the simulation uses the same value."""
    import torch

    with torch.no_grad():
        for name, param in module.named_parameters():
            if name.endswith("bias") and param.numel() > 1 and bool((param == param.reshape(-1)[0]).all()) \
                    and float(param.reshape(-1)[0]) != 0.0:
                flat = param.view(-1)
                flat[-1] = torch.nextafter(flat[-1], torch.tensor(float("inf")))


def _convert(module, example, quantizer=None) -> bytes:
    litert_torch, QuantConfig, _, _ = _litert()
    with _quiet(), tempfile.TemporaryDirectory(prefix="gzsq-tflite-") as tmp:
        try:
            kwargs = {"quant_config": QuantConfig(pt2e_quantizer=quantizer)} if quantizer is not None else {}
            litert_torch.convert(module, (example,), **kwargs).export(os.path.join(tmp, "m.tflite"))
        except GzsqError:
            raise
        except Exception as e:
            raise GzsqError(f"litert-torch could not convert the graph ({type(e).__name__}: "
                            f"{str(e).strip().splitlines()[0][:200]})") from None
        return Path(tmp, "m.tflite").read_bytes()


def _check_options(io_dtype: str, output_layer: str) -> None:
    if io_dtype not in ("float", "int8"):
        raise GzsqError(f"unknown TFLite I/O type {io_dtype!r}; use float or int8")
    check_output_layer(output_layer)
    if io_dtype == "int8" and output_layer == "float":
        raise GzsqError("int8 I/O needs an int8 output layer; drop --output-layer float or use --io float")


def export_tflite(graph_model: onnx.ModelProto, ranges: dict, out_path: str | Path, io_dtype: str = "float",
                  quantized: QuantizedTorchGraph | None = None, output_layer: str = "int8") -> TfliteExportResult:
    """Full-int8 TFLite (every operator int8, as TFLite's own full-integer quantization). With float
    I/O the model adds one QUANTIZE at the input and one DEQUANTIZE at the output; with
    output_layer="float" the last layer's result is not requantized (that layer then runs in float
    on dequantized inputs; float I/O only)."""
    _check_options(io_dtype, output_layer)
    float_output = output_layer == "float"
    quantized = quantized or quantized_torch_graph(graph_model, ranges, float_output=float_output)
    data = _convert(quantized.converted, quantized.graph.example_input, quantized.quantizer)
    if io_dtype == "float":
        data = _add_float_io(data)
    scheme = ("int8 asymmetric per-tensor activations (ranges.json grid), int8 symmetric per-channel weights, "
              f"{io_dtype} I/O; XNNPACK int8 kernels accumulate in int32"
              + ("; output layer in float (its result is not requantized)" if float_output else "; fully int8"))
    data = _with_metadata(data, {"gzsq.ranges_sha256": sha256_bytes(json.dumps(ranges, sort_keys=True).encode()),
                                 "gzsq.model_sha256": ranges.get("model_sha256", ""), "gzsq.scheme": scheme,
                                 "gzsq.io_dtype": io_dtype, "gzsq.output_layer": output_layer})
    with atomic_path(out_path) as tmp_path:
        tmp_path.write_bytes(data)
    _, float_ops = float_op_count(data)
    return TfliteExportResult(Path(out_path), 8, scheme, sorted(set(quantized.quantized)), io_dtype, quantized.shared,
                              float_ops, float_islands(data))


def export_tflite_float(graph_model: onnx.ModelProto, out_path: str | Path) -> Path:
    """The FP32 .tflite of the same graph (the runtime's own float reference)."""
    from gzsq.torch_graph import export_torch_graph

    with _quiet():
        graph = export_torch_graph(graph_model, batch=1)
    data = _convert(graph.module, graph.example_input)
    with atomic_path(out_path) as tmp_path:
        tmp_path.write_bytes(data)
    return Path(out_path)


def _with_metadata(tflite_bytes: bytes, entries: dict[str, str]) -> bytes:
    schema = tflite_schema()
    model = read_model(tflite_bytes)
    model.metadata = list(model.metadata or [])
    for key, value in entries.items():
        buffer = schema.BufferT()
        buffer.data = list(value.encode())
        model.buffers.append(buffer)
        meta = schema.MetadataT()
        meta.name = key
        meta.buffer = len(model.buffers) - 1
        model.metadata.append(meta)
    return pack_model(model, len(tflite_bytes))


def read_metadata(tflite_bytes: bytes) -> dict[str, str]:
    model = read_model(tflite_bytes)
    out = {}
    for meta in model.metadata or []:
        name = meta.name.decode() if isinstance(meta.name, bytes) else meta.name
        if name.startswith("gzsq."):
            out[name] = bytes(model.buffers[meta.buffer].data).decode()
    return out


def tflite_layer_parity(quantized: QuantizedTorchGraph, artifact: str | Path, images: np.ndarray, ranges: dict) -> dict:
    """Every int8 tensor of the .tflite (LiteRT's built-in kernels, which keep intermediates; the
    XNNPACK delegate does not) against the same tensor of the PT2E simulation. TFLite tensor
    names carry the torch submodule path, hence `gzsq_n<index>`: the ONNX node they come from."""
    import re

    import torch
    from ai_edge_litert.interpreter import Interpreter, OpResolverType

    from gzsq.layer_parity import listed_layer_parity

    graph = quantized.graph
    simulated: dict[str, list] = {}

    class Recorder(torch.fx.Interpreter):
        def run_node(self, node):
            out = super().run_node(node)
            if node.op == "call_function" and str(node.target).endswith("quantize_per_tensor.default") \
                    and "dequantize" not in str(node.target):
                name = graph.tensor_name(node.args[0])
                if name is not None:
                    simulated.setdefault(name, []).append(out.detach().numpy().astype(np.int32))
            return out

    with _quiet():
        interpreter = Interpreter(model_path=str(artifact), experimental_preserve_all_tensors=True,
                                  experimental_op_resolver_type=OpResolverType.BUILTIN_WITHOUT_DEFAULT_DELEGATES)
        interpreter.allocate_tensors()
    details = {d["index"]: d for d in interpreter.get_tensor_details()}
    input_detail = interpreter.get_input_details()[0]
    order = [int(i) for op in interpreter._get_ops_details() for i in op["outputs"]]
    pairs: dict[int, list] = {}
    for image in images:
        x = image[None].astype(np.float32)
        simulated.clear()
        with torch.no_grad():
            Recorder(quantized.converted).run(torch.from_numpy(x))
        feed = x
        if input_detail["dtype"] != np.float32:
            from gzsq.runtime_api import quantize
            feed = quantize(x, *input_detail["quantization"], input_detail["dtype"])
        interpreter.set_tensor(input_detail["index"], feed)
        interpreter.invoke()
        for index in order:
            d = details[index]
            if d["dtype"] != np.int8 or not d["quantization"][0]:
                continue
            nodes = [int(k) for k in re.findall(r"gzsq_n(\d+)", d["name"])]
            if not nodes:
                continue
            # A fused TFLite op names all the nodes it absorbed: take the one whose range it carries.
            scale, zero_point = float(np.float32(d["quantization"][0])), int(d["quantization"][1])
            candidates = [graph.graph_model.graph.node[k].output[0] for k in sorted(set(nodes), reverse=True)]
            named = [n for n in candidates if n in ranges["tensors"] and int8_params(ranges["tensors"][n]) == (scale, zero_point)]
            if not named:
                continue
            outputs = named
            values = simulated.get(outputs[0])
            runtime = interpreter.get_tensor(index).astype(np.int32)
            if not values or values[-1].size != runtime.size:
                continue
            sim = values[-1]
            if sim.ndim == 4 and runtime.ndim == 4 and sim.shape != runtime.shape:
                sim = sim.transpose(0, 2, 3, 1)
            entry = pairs.setdefault(index, [outputs[0], [], [], float(d["quantization"][0])])
            entry[1].append(runtime.reshape(-1))
            entry[2].append(sim.reshape(-1))
    ordered = [pairs[i] for i in order if i in pairs]
    return listed_layer_parity((name, np.concatenate(r) * step, np.concatenate(s) * step, step)
                               for name, r, s, step in ordered)


SIMULATION_BATCH = 32


def _float_output(artifact: str | Path) -> bool:
    """Whether the artifact leaves its output layer in float (recorded at export)."""
    return read_metadata(Path(artifact).read_bytes()).get("gzsq.output_layer", "int8") == "float"


class TfliteExporter:
    """Entry point `tflite` of the gzsq.exporters group."""

    format = "tflite"
    suffix = ".tflite"
    runtime = "litert"

    def __init__(self) -> None:
        self._quantized: dict[tuple[str, int, bool], QuantizedTorchGraph] = {}

    default_output_layer = "int8"

    def export(self, graph_model: onnx.ModelProto, ranges: dict, out_path: str | Path, target: str = "auto",
               io_dtype: str = "float", output_layer: str | None = None) -> TfliteExportResult:
        output_layer = output_layer or self.default_output_layer
        _check_options(io_dtype, output_layer)
        return export_tflite(graph_model, ranges, out_path, io_dtype,
                             self._quantized_graph(graph_model, ranges, float_output=output_layer == "float"), output_layer)

    def describe(self, artifact: str | Path) -> str:
        return read_metadata(Path(artifact).read_bytes()).get("gzsq.scheme", "not exported by gzsq (no gzsq.scheme metadata)")

    def output_layer_of(self, artifact: str | Path) -> str | None:
        return read_metadata(Path(artifact).read_bytes()).get("gzsq.output_layer")

    def export_float(self, graph_model: onnx.ModelProto, out_path: str | Path) -> Path:
        return export_tflite_float(graph_model, out_path)

    def simulator(self, graph_model: onnx.ModelProto, ranges: dict, artifact: str | Path):
        """Fake-quant simulation of the artifact: its PT2E graph run in torch (batch 32)."""
        return self._quantized_graph(graph_model, ranges, SIMULATION_BATCH, _float_output(artifact)).simulate

    def layer_parity(self, graph_model: onnx.ModelProto, ranges: dict, artifact: str | Path, images: np.ndarray) -> dict:
        return tflite_layer_parity(self._quantized_graph(graph_model, ranges, 1, _float_output(artifact)), artifact, images,
                                   ranges)

    def _quantized_graph(self, graph_model: onnx.ModelProto, ranges: dict, batch: int = 1,
                         float_output: bool = False) -> QuantizedTorchGraph:
        key = (sha256_bytes(json.dumps(ranges, sort_keys=True).encode()), batch, float_output)
        if key not in self._quantized:
            self._quantized[key] = quantized_torch_graph(graph_model, ranges, batch, float_output)
        return self._quantized[key]
