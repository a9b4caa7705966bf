"""The one place where names in ranges.json (ONNX tensors of the pre-processed graph) are matched
to nodes of a `torch.export` graph, for exporters that quantize through torch (PT2E → LiteRT).

How the correspondence is built, so it never depends on guessing:
1. The pre-processed ONNX graph gets a static batch and its shape arithmetic is constant-folded
   (torch.export cannot trace a Reshape whose shape is a runtime tensor). Folding keeps every
   other tensor's name.
2. Every ONNX node is renamed `gzsq_n{index}` before onnx2torch converts it, so each torch
   submodule's name says which ONNX node it came from.
3. `torch.export` records, for every aten node, the submodule it was traced in
   (`nn_module_stack`). An aten node whose value leaves its submodule is that ONNX node's output.
"""
from __future__ import annotations

import os
from dataclasses import dataclass

import onnx
import torch

from gzsq.errors import GzsqError

NODE_PREFIX = "gzsq_n"


def static_batch_graph(graph_model: onnx.ModelProto, batch: int = 1) -> onnx.ModelProto:
    """The same graph with a fixed batch and its shape computations folded to constants."""
    import onnxscript.optimizer as onnx_optimizer
    from onnx_ir import serde
    from onnx_ir.passes import common as ir_passes

    model = onnx.ModelProto()
    model.CopyFrom(graph_model)
    initializers = {i.name for i in model.graph.initializer}
    for graph_input in model.graph.input:
        if graph_input.name in initializers:
            continue
        dims = graph_input.type.tensor_type.shape.dim
        if dims and not dims[0].HasField("dim_value"):
            dims[0].Clear()
            dims[0].dim_value = batch
        if any(not d.HasField("dim_value") for d in dims):
            raise GzsqError(f"input {graph_input.name!r} has a dynamic non-batch dimension; pass --input-shape")
    del model.graph.value_info[:]
    model = onnx.shape_inference.infer_shapes(model)
    ir_model = serde.deserialize_model(model)
    onnx_optimizer.fold_constants(ir_model)
    ir_passes.RemoveUnusedNodesPass()(ir_model)
    ir_passes.LiftConstantsToInitializersPass(lift_all_constants=True, size_limit=0)(ir_model)
    return serde.serialize_model(ir_model)


@dataclass
class TorchExportGraph:
    """A torch.export'ed module of a (static-batch) ONNX graph, with the name correspondence."""

    graph_model: onnx.ModelProto
    module: torch.fx.GraphModule
    example_input: torch.Tensor
    input_name: str
    node_outputs: dict[str, list[str]]  # torch submodule name -> the ONNX node's output tensors

    def tensor_name(self, node: torch.fx.Node) -> str | None:
        """The ONNX tensor a node of `module` (or of a graph derived from it by PT2E) computes, or
        None when the node is internal to a converted op (its value never leaves the submodule)."""
        if node.op == "placeholder":
            return self.input_name
        owner = _owner(node)
        if owner is None or owner not in self.node_outputs:
            return None
        leaves = any(_owner(user) != owner for user in _value_users(node))
        if not leaves:
            return None
        outputs = self.node_outputs[owner]
        return outputs[0] if len(outputs) == 1 else None


def _owner(node: torch.fx.Node) -> str | None:
    stack = node.meta.get("nn_module_stack")
    if not stack:
        return None
    for path, _type in reversed(list(stack.values())):
        for part in reversed(str(path).split(".")):
            if part.startswith(NODE_PREFIX):
                return part
    return None


def _value_users(node: torch.fx.Node) -> list[torch.fx.Node]:
    """Users of a value, looking through the observers/quant-dequant pairs PT2E inserts."""
    out = []
    for user in node.users:
        if user.op == "call_module" and "activation_post_process" in str(user.target):
            out.extend(_value_users(user))
        elif user.op == "call_function" and "quantized_decomposed" in str(user.target):
            out.extend(_value_users(user))
        else:
            out.append(user)
    return out


def export_torch_graph(graph_model: onnx.ModelProto, batch: int = 1) -> TorchExportGraph:
    """Static-batch ONNX graph → onnx2torch → torch.export, keeping the name correspondence."""
    from gzsq.onnx_to_torch import onnx_to_torch

    static = static_batch_graph(graph_model, batch)
    renamed = onnx.ModelProto()
    renamed.CopyFrom(static)
    node_outputs = {}
    for index, node in enumerate(renamed.graph.node):
        node.name = f"{NODE_PREFIX}{index}"
        node_outputs[node.name] = list(node.output)
    initializers = {i.name for i in renamed.graph.initializer}
    inputs = [i for i in renamed.graph.input if i.name not in initializers]
    if len(inputs) != 1:
        raise GzsqError(f"the model has {len(inputs)} inputs; gzsq exports single-input models")
    shape = [d.dim_value for d in inputs[0].type.tensor_type.shape.dim]
    module = onnx_to_torch(renamed)
    example = torch.zeros(shape, dtype=torch.float32)
    try:
        program = torch.export.export(module, (example,))
    except Exception as e:  # torch.export errors are long; keep the first line
        if os.environ.get("GZSQ_DEBUG"):
            raise
        raise GzsqError(f"torch.export cannot trace the converted graph ({type(e).__name__}: "
                        f"{str(e).strip().splitlines()[0][:200]}); this op pattern is not supported by the torch-based exporters") from None
    return TorchExportGraph(static, program.module(), example, inputs[0].name, node_outputs)
