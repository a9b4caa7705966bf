"""ONNX → torch (for gradients during distillation) through onnx2torch, extended where it lacks an op.

onnx2torch imports torchvision at import time for two detection ops (NMS, RoiAlign) that CNN
classifiers never use, and torchvision does not import beside the pinned torch build. When
torchvision is absent, a placeholder is visible only while onnx2torch imports, so nothing leaks
into the user's environment; converting a graph with those ops then fails with a clear message.
"""
from __future__ import annotations

import contextlib
import importlib.util
import sys
import types
from typing import Iterator

import onnx
import torch
from torch import nn

from gzsq.errors import GzsqError

_ONNX2TORCH = None


@contextlib.contextmanager
def _torchvision_placeholder() -> Iterator[None]:
    if importlib.util.find_spec("torchvision") is not None:
        yield
        return

    def missing(*_args, **_kwargs):
        raise GzsqError("this model uses a detection op (NonMaxSuppression/RoiAlign) that needs torchvision; "
                        "gzsq supports CNN classifiers and dense image models")

    tv, ops = types.ModuleType("torchvision"), types.ModuleType("torchvision.ops")
    ops.nms = ops.roi_align = ops.box_convert = missing
    tv.ops = ops
    sys.modules["torchvision"], sys.modules["torchvision.ops"] = tv, ops
    try:
        yield
    finally:
        sys.modules.pop("torchvision", None)
        sys.modules.pop("torchvision.ops", None)


def _onnx2torch():
    global _ONNX2TORCH
    if _ONNX2TORCH is None:
        with _torchvision_placeholder():
            import onnx2torch
        _register_extensions()
        _ONNX2TORCH = onnx2torch
    return _ONNX2TORCH


class _StaticReduce(nn.Module):
    def __init__(self, op: str, axes: list[int] | None, keepdims: bool, noop_with_empty_axes: bool) -> None:
        super().__init__()
        self.op, self.axes, self.keepdims, self.noop = op, axes, keepdims, noop_with_empty_axes

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.axes:
            if self.noop:
                return x
            axes = list(range(x.dim()))
        else:
            axes = [a % x.dim() for a in self.axes]
        if self.op == "ReduceMean":
            return x.mean(dim=axes, keepdim=self.keepdims)
        if self.op == "ReduceSum":
            return x.sum(dim=axes, keepdim=self.keepdims)
        out = x
        for axis in sorted(axes, reverse=True):
            out = out.amax(dim=axis, keepdim=self.keepdims) if self.op == "ReduceMax" else out.amin(dim=axis, keepdim=self.keepdims)
        return out


class _Gelu(nn.Module):
    def __init__(self, approximate: str) -> None:
        super().__init__()
        self.approximate = approximate

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return nn.functional.gelu(x, approximate=self.approximate)


class _Reshape(nn.Module):
    """ONNX Reshape with both allowzero modes (torch.onnx's dynamo exporter writes allowzero=1)."""

    def __init__(self, allowzero: bool, static_shape: list[int] | None = None) -> None:
        super().__init__()
        self.allowzero = allowzero
        # A constant shape is kept as Python ints so torch.export sees no data-dependent size.
        self.static_shape = static_shape

    def forward(self, x: torch.Tensor, shape: torch.Tensor | None = None) -> torch.Tensor:
        dims = list(self.static_shape) if self.static_shape is not None else [int(d) for d in shape.tolist()]
        if not self.allowzero:
            dims = [x.shape[i] if d == 0 else d for i, d in enumerate(dims)]
        return torch.reshape(x, dims)


class _CastLike(nn.Module):
    def forward(self, x: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
        return x.to(like.dtype)


def _register_extensions() -> None:
    """Converters onnx2torch 1.5 lacks: opset-18 reductions (axes as an input), Gelu, Mish,
    CastLike, and opset 19–22 revisions of ops whose semantics for float CNNs did not change
    (they only added types or attributes whose defaults keep the old behaviour)."""
    from onnx2torch.node_converters import registry
    from onnx2torch.utils.common import OnnxMapping, OperationConverterResult, get_const_value, onnx_mapping_from_node

    def reduce_v18(node, graph):
        axes = None
        if len(node.input_values) > 1 and node.input_values[1]:
            try:
                axes = [int(a) for a in get_const_value(node.input_values[1], graph).tolist()]
            except KeyError:
                raise GzsqError(f"{node.operation_type} node {node.name!r} has non-constant axes; "
                                "re-export the model with constant axes") from None
        module = _StaticReduce(node.operation_type, axes, bool(node.attributes.get("keepdims", 1)),
                               bool(node.attributes.get("noop_with_empty_axes", 0)))
        return OperationConverterResult(torch_module=module,
                                        onnx_mapping=OnnxMapping(inputs=(node.input_values[0],), outputs=node.output_values))

    for op in ("ReduceMean", "ReduceSum", "ReduceMax", "ReduceMin"):
        for version in (18, 20):
            if registry.OperationDescription("", op, version) not in registry._CONVERTER_REGISTRY:
                registry.add_converter(operation_type=op, version=version)(reduce_v18)

    def gelu(node, graph):
        return OperationConverterResult(torch_module=_Gelu(node.attributes.get("approximate", "none")),
                                        onnx_mapping=onnx_mapping_from_node(node))

    def mish(node, graph):
        return OperationConverterResult(torch_module=nn.Mish(), onnx_mapping=onnx_mapping_from_node(node))

    def hard_sigmoid(node, graph):
        # torch's Hardsigmoid is exactly ONNX HardSigmoid(alpha=1/6, beta=0.5): keeping it one
        # aten op lets exporters quantize it as one tensor (onnx2torch would decompose it).
        alpha, beta = node.attributes.get("alpha", 0.2), node.attributes.get("beta", 0.5)
        if abs(alpha - 1 / 6) < 1e-6 and abs(beta - 0.5) < 1e-6:
            return OperationConverterResult(torch_module=nn.Hardsigmoid(), onnx_mapping=onnx_mapping_from_node(node))
        return previous_hard_sigmoid(node, graph)

    previous_hard_sigmoid = registry._CONVERTER_REGISTRY[registry.OperationDescription("", "HardSigmoid", 6)]
    for version in (1, 6):
        registry._CONVERTER_REGISTRY[registry.OperationDescription("", "HardSigmoid", version)] = hard_sigmoid

    def cast_like(node, graph):
        return OperationConverterResult(torch_module=_CastLike(), onnx_mapping=onnx_mapping_from_node(node))

    def reshape(node, graph):
        allowzero = bool(node.attributes.get("allowzero", 0))
        try:
            static_shape = [int(d) for d in get_const_value(node.input_values[1], graph).tolist()]
        except KeyError:
            return OperationConverterResult(torch_module=_Reshape(allowzero), onnx_mapping=onnx_mapping_from_node(node))
        return OperationConverterResult(torch_module=_Reshape(allowzero, static_shape),
                                        onnx_mapping=OnnxMapping(inputs=(node.input_values[0],), outputs=node.output_values))

    for version in (5, 13, 14, 19, 21, 23, 24, 25):
        registry._CONVERTER_REGISTRY[registry.OperationDescription("", "Reshape", version)] = reshape

    for op, version, fn in (("Gelu", 20, gelu), ("Mish", 18, mish), ("Mish", 22, mish),
                            ("CastLike", 15, cast_like), ("CastLike", 19, cast_like), ("CastLike", 21, cast_like)):
        if registry.OperationDescription("", op, version) not in registry._CONVERTER_REGISTRY:
            registry.add_converter(operation_type=op, version=version)(fn)

    # Newer op versions that only widened types (bf16/fp8/int4) or added attributes whose defaults
    # keep the previous behaviour: reuse the newest converter onnx2torch has.
    aliases = {
        "Conv": 22, "ConvTranspose": 22, "MaxPool": 22, "AveragePool": 22, "GlobalAveragePool": 22,
        "GlobalMaxPool": 22, "HardSwish": 22, "HardSigmoid": 22, "Elu": 22, "Selu": 22, "LeakyRelu": 16,
        "InstanceNormalization": 22, "Identity": 25, "Flatten": 25, "Transpose": 25,
        "Squeeze": 25, "Unsqueeze": 25, "Shape": 25, "Cast": 25, "Constant": 25, "Pad": 25, "Resize": 19,
        "Softmax": 13, "Dropout": 22, "Relu": 14, "Sigmoid": 13, "Tanh": 13, "BatchNormalization": 15,
        "Clip": 13, "Concat": 13, "Gather": 13, "Split": 18, "Slice": 13, "Gemm": 13, "MatMul": 13,
        "Add": 14, "Sub": 14, "Mul": 14, "Div": 14, "PRelu": 16, "Expand": 13, "Where": 16,
    }
    known: dict[str, list[int]] = {}
    for desc in registry._CONVERTER_REGISTRY:
        if desc.domain == "":
            known.setdefault(desc.operation_type, []).append(desc.version)
    for op, newest in aliases.items():
        if op not in known:
            continue
        for version in range(max(known[op]) + 1, newest + 1):
            try:
                schema = onnx.defs.get_schema(op, max_inclusive_version=version)
            except Exception:
                continue
            if schema.since_version != version:
                continue
            desc = registry.OperationDescription("", op, version)
            if desc not in registry._CONVERTER_REGISTRY:
                registry._CONVERTER_REGISTRY[desc] = registry._CONVERTER_REGISTRY[registry.OperationDescription("", op, max(known[op]))]


def onnx_to_torch(model: onnx.ModelProto) -> torch.fx.GraphModule:
    """Convert a float ONNX model to an fx.GraphModule (BN kept as modules, weights as parameters)."""
    converter = _onnx2torch()
    try:
        module = converter.convert(model)
    except NotImplementedError as e:
        detail = str(e).replace("Converter is not implemented ", "")
        raise GzsqError(f"cannot convert the ONNX graph to torch for distillation: unsupported op {detail}; "
                        "re-export the model without it or use --method gaussian/uniform/real") from None
    return module.eval()
