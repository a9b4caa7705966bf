"""Models in: ONNX files, torch.export `.pt2` programs, nn.Modules (Python API) and `zoo:NAME`.

Everything becomes one pair: the float ONNX graph (what is calibrated and exported, tensor names
are the ONNX ones) and a torch fx module converted from that very graph (for gradients during
distillation), so the two can never disagree about structure or names.
"""
from __future__ import annotations

import contextlib
import io
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import onnx
from onnx import numpy_helper

from gzsq.config import InputDomain
from gzsq.errors import GzsqError
from gzsq.fileio import sha256_bytes

PICKLED_SUFFIXES = (".pt", ".pth", ".ts", ".torchscript", ".pkl", ".bin")


@dataclass
class LoadedModel:
    name: str
    onnx_model: onnx.ModelProto
    input_name: str
    input_shape: tuple[int, ...]          # one sample, batch dim excluded: (C, H, W) or (F,)
    batch_dim_fixed: int | None            # the graph's fixed batch size, None when dynamic
    sha256: str
    domain: InputDomain | None = None      # known for zoo models; the user's flags override
    task: str | None = None                # 'classification' / 'denoising' for zoo models
    zoo_entry: Any = None
    _torch_module: Any = field(default=None, repr=False)

    @property
    def onnx_bytes(self) -> bytes:
        return self.onnx_model.SerializeToString()

    def torch_module(self):
        """fx module converted from the ONNX graph, built on first use (distillation only)."""
        if self._torch_module is None:
            from gzsq.onnx_to_torch import onnx_to_torch

            self._torch_module = onnx_to_torch(self.onnx_model)
            for p in self._torch_module.parameters():
                p.requires_grad_(False)
        return self._torch_module


def torch_to_onnx(module_or_program, example_input) -> onnx.ModelProto:
    """Export with BatchNorm kept as its own node (zeroq needs it) and a dynamic batch dim.

    torch's dynamo exporter folds BN when it optimises; here only constants are folded.
    """
    import torch
    import onnxscript.optimizer as onnx_optimizer
    from onnx_ir import serde
    from onnx_ir.passes import common as ir_passes

    batch = torch.export.Dim("batch", min=1, max=4096)
    # torch.onnx.export prints progress lines to stdout; keep the CLI's output readable.
    with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
        warnings.simplefilter("ignore")
        if isinstance(module_or_program, torch.export.ExportedProgram):
            program = torch.onnx.export(module_or_program, dynamo=True, optimize=False, verbose=False)
        else:
            if not isinstance(module_or_program, torch.fx.GraphModule):  # unlifted .pt2 modules refuse eval()
                module_or_program = module_or_program.eval()
            program = torch.onnx.export(module_or_program, (example_input,), dynamo=True, optimize=False,
                                        dynamic_shapes=({0: batch},), input_names=["input"], output_names=["output"],
                                        verbose=False)
    model = program.model
    onnx_optimizer.fold_constants(model)
    ir_passes.RemoveUnusedNodesPass()(model)
    ir_passes.LiftConstantsToInitializersPass(lift_all_constants=True, size_limit=0)(model)
    return serde.serialize_model(model)


def _input_info(model: onnx.ModelProto, input_shape: tuple[int, ...] | None) -> tuple[str, tuple[int, ...], int | None]:
    initializers = {i.name for i in model.graph.initializer}
    inputs = [i for i in model.graph.input if i.name not in initializers]
    if len(inputs) != 1:
        raise GzsqError(f"model has {len(inputs)} inputs; gzsq quantizes single-input image models")
    inp = inputs[0]
    tensor_type = inp.type.tensor_type
    if tensor_type.elem_type != onnx.TensorProto.FLOAT:
        raise GzsqError(f"model input {inp.name!r} is not float32; export the float model, not a quantized one")
    dims = [d.dim_value if d.HasField("dim_value") and d.dim_value > 0 else None for d in tensor_type.shape.dim]
    if not dims:
        raise GzsqError(f"model input {inp.name!r} has no shape; pass --input-shape C,H,W")
    batch_fixed = dims[0]
    sample_dims = dims[1:]
    if input_shape is not None:
        if len(input_shape) != len(sample_dims):
            raise GzsqError(f"--input-shape {','.join(map(str, input_shape))} has {len(input_shape)} dims but input "
                            f"{inp.name!r} has {len(sample_dims)} per-sample dims; pass them without the batch dim")
        for given, declared in zip(input_shape, sample_dims):
            if declared is not None and declared != given:
                raise GzsqError(f"--input-shape {','.join(map(str, input_shape))} contradicts the model's input shape "
                                f"{[d or '?' for d in sample_dims]}; pass the model's shape")
        return inp.name, tuple(input_shape), batch_fixed
    if any(d is None for d in sample_dims):
        shown = ",".join(str(d) if d else "?" for d in sample_dims)
        raise GzsqError(f"input {inp.name!r} has dynamic dims ({shown}); pass --input-shape C,H,W")
    return inp.name, tuple(int(d) for d in sample_dims), batch_fixed


def validate_weights(model: onnx.ModelProto) -> None:
    """Refuse NaN/Inf weights and layers whose weights are all one value (nothing to quantize)."""
    weight_inputs = {}
    for node in model.graph.node:
        if node.op_type in ("Conv", "Gemm", "MatMul", "ConvTranspose") and len(node.input) > 1:
            weight_inputs[node.input[1]] = node.name or node.op_type
    for init in model.graph.initializer:
        if init.data_type not in (onnx.TensorProto.FLOAT, onnx.TensorProto.FLOAT16, onnx.TensorProto.DOUBLE):
            continue
        values = numpy_helper.to_array(init)
        if not np.all(np.isfinite(values)):
            raise GzsqError(f"weight tensor {init.name!r} contains NaN/Inf; fix or retrain the model before quantizing")
        if init.name in weight_inputs and values.size > 1 and float(values.max()) == float(values.min()):
            raise GzsqError(f"weights of layer {weight_inputs[init.name]!r} ({init.name!r}) are all {float(values.flat[0])}; "
                            "the model looks untrained or corrupted — export the trained weights")


def from_onnx_model(model: onnx.ModelProto, name: str, input_shape: tuple[int, ...] | None = None,
                    raw_bytes: bytes | None = None) -> LoadedModel:
    try:
        onnx.checker.check_model(model)
    except Exception as e:  # checker raises several exception types
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise GzsqError(f"{name}: invalid ONNX model ({first}); re-export it") from None
    input_name, shape, batch_fixed = _input_info(model, input_shape)
    validate_weights(model)
    return LoadedModel(name=name, onnx_model=model, input_name=input_name, input_shape=shape,
                       batch_dim_fixed=batch_fixed, sha256=sha256_bytes(raw_bytes or model.SerializeToString()))


def from_torch_module(module, input_shape: tuple[int, ...], name: str = "module") -> LoadedModel:
    """Python API: an nn.Module (or ExportedProgram) and its per-sample input shape."""
    import torch

    example = torch.randn(2, *input_shape)
    onnx_model = torch_to_onnx(module, example)
    return from_onnx_model(onnx_model, name, input_shape)


def load_model(spec, input_shape: tuple[int, ...] | None = None, trust_pickle: bool = False) -> LoadedModel:
    """Load `zoo:NAME`, a `.onnx` file, a `.pt2` program, or (Python API) an nn.Module."""
    if not isinstance(spec, (str, Path)):
        if input_shape is None:
            raise GzsqError("an nn.Module needs input_shape=(C, H, W)")
        return from_torch_module(spec, input_shape)
    spec = str(spec)
    if spec.startswith("zoo:"):
        from gzsq.zoo import load_zoo_model

        return load_zoo_model(spec[4:], input_shape)
    path = Path(spec)
    if not path.exists():
        raise GzsqError(f"model file {spec} does not exist; pass an .onnx/.pt2 path or zoo:NAME (see `gzsq zoo list`)")
    if path.is_dir():
        raise GzsqError(f"{spec} is a directory; pass the model file itself")
    suffix = path.suffix.lower()
    if suffix == ".onnx":
        raw = path.read_bytes()
        try:
            model = onnx.load_from_string(raw)
        except Exception:
            raise GzsqError(f"{spec} is not a readable ONNX file (corrupt or truncated); re-export it") from None
        if not model.graph.node:
            raise GzsqError(f"{spec} holds no ONNX graph (corrupt, truncated or not ONNX); re-export it")
        return from_onnx_model(model, path.stem, input_shape, raw)
    if suffix == ".pt2":
        import torch

        try:
            program = torch.export.load(str(path))
        except Exception as e:
            raise GzsqError(f"{spec} is not a readable torch.export program ({type(e).__name__}); re-save it with torch.export.save") from None
        args = program.example_inputs[0] if program.example_inputs else ()
        if input_shape is None:
            if not args:
                raise GzsqError(f"{spec} records no example input; pass --input-shape C,H,W")
            input_shape = tuple(args[0].shape[1:])
        try:  # re-trace with a dynamic batch dim; a program exported with static shapes keeps its batch
            onnx_model = torch_to_onnx(program.module(), torch.zeros(2, *input_shape))
        except Exception:
            onnx_model = torch_to_onnx(program, None)
        loaded = from_onnx_model(onnx_model, path.stem, input_shape)
        loaded.sha256 = sha256_bytes(path.read_bytes())
        return loaded
    if suffix in PICKLED_SUFFIXES:
        if not trust_pickle:
            raise GzsqError(f"{spec} is a pickled torch file, which can run arbitrary code when loaded; "
                            "export it to ONNX or .pt2, or pass --trust-pickle if you trust its source")
        return _load_pickled(path, input_shape)
    raise GzsqError(f"{spec}: unknown model format {suffix or '(no suffix)'}; pass an .onnx or .pt2 file or zoo:NAME")


def _load_pickled(path: Path, input_shape: tuple[int, ...] | None) -> LoadedModel:
    import torch

    if input_shape is None:
        raise GzsqError("a pickled model carries no input shape; pass --input-shape C,H,W")
    try:
        module = torch.jit.load(str(path), map_location="cpu")
    except Exception:
        module = torch.load(str(path), map_location="cpu", weights_only=False)
    if not isinstance(module, torch.nn.Module):
        raise GzsqError(f"{path} holds a {type(module).__name__}, not a model; a state_dict needs its architecture — "
                        "use the Python API gzsq.load_model(module, input_shape=...)")
    loaded = from_torch_module(module, input_shape, path.stem)
    loaded.sha256 = sha256_bytes(path.read_bytes())
    return loaded
