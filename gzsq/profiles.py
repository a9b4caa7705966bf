"""Deployment target profiles as data: what an accelerator accepts (format, integer scheme,
granularity, I/O type, float ops, supported ops), and `check_artifact_against` listing every way
an artifact breaks them. Profiles describe the rules published by each vendor's compiler/runtime
documentation; the Ethos-U ones are also enforced for real by compiling with Vela.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from gzsq.errors import GzsqError

TFLITE_NPU_OPS = frozenset({
    "ADD", "AVERAGE_POOL_2D", "CONCATENATION", "CONV_2D", "DEPTHWISE_CONV_2D", "FULLY_CONNECTED", "HARD_SWISH",
    "LEAKY_RELU", "LOGISTIC", "MAX_POOL_2D", "MEAN", "MUL", "PAD", "QUANTIZE", "RELU", "RELU6", "RELU_N1_TO_1",
    "RESHAPE", "RESIZE_BILINEAR", "RESIZE_NEAREST_NEIGHBOR", "SOFTMAX", "SUB", "TANH", "TRANSPOSE", "TRANSPOSE_CONV",
    "SPLIT", "SQUEEZE", "STRIDED_SLICE", "SLICE", "PACK", "UNPACK", "MINIMUM", "MAXIMUM", "ABS", "PRELU"})
HTP_QDQ_OPS = frozenset({
    "Conv", "ConvTranspose", "Gemm", "MatMul", "Add", "Sub", "Mul", "Div", "Relu", "Clip", "Sigmoid", "Tanh",
    "HardSwish", "HardSigmoid", "PRelu", "LeakyRelu", "MaxPool", "AveragePool", "GlobalAveragePool", "Reshape",
    "Flatten", "Transpose", "Concat", "Resize", "Softmax", "Pad", "Squeeze", "Unsqueeze", "Slice", "ReduceMean",
    "QuantizeLinear", "DequantizeLinear"})


@dataclass(frozen=True)
class TargetProfile:
    name: str
    description: str
    formats: tuple[str, ...]               # artifact formats it consumes
    activation_dtypes: tuple[str, ...]     # integer types its activations may use
    activation_symmetric: bool             # zero point must be 0
    weight_per_channel: bool               # per-output-channel weight scales allowed
    io_dtypes: tuple[str, ...]             # model input/output types it accepts
    float_ops_allowed: bool                # float ops run (elsewhere) or are refused
    supported_ops: frozenset[str] | None   # op names it runs; None = any
    compiler: str | None = None            # tool that proves it for real ("vela")
    export_format: str = "onnx"            # what `gzsq export --target` emits for it
    export_io: str = "float"


PROFILES: dict[str, TargetProfile] = {p.name: p for p in (
    TargetProfile("generic-cpu", "Any CPU runtime (ONNX Runtime, LiteRT/XNNPACK, OpenVINO CPU)",
                  ("onnx", "tflite", "openvino"), ("int8", "uint8"), False, True, ("float", "int8", "uint8"), True, None),
    TargetProfile("ethos-u55", "Arm Ethos-U55 microNPU through Vela: full-int8 TFLite, int8 I/O, no float ops",
                  ("tflite",), ("int8",), False, True, ("int8",), False, TFLITE_NPU_OPS, "vela", "tflite", "int8"),
    TargetProfile("ethos-u65", "Arm Ethos-U65 microNPU through Vela: full-int8 TFLite, int8 I/O, no float ops",
                  ("tflite",), ("int8",), False, True, ("int8",), False, TFLITE_NPU_OPS, "vela", "tflite", "int8"),
    TargetProfile("openvino-npu", "Intel NPU through OpenVINO: IR with FakeQuantize, 8-bit per-tensor activations",
                  ("openvino",), ("int8", "uint8"), False, True, ("float", "int8", "uint8"), True, None, None, "openvino"),
    TargetProfile("qualcomm-htp", "Qualcomm Hexagon HTP through the QNN execution provider: QDQ ONNX, uint8 "
                  "activations, int8 symmetric weights, every op inside QDQ", ("onnx",), ("uint8", "int8"), False, True,
                  ("float", "uint8"), False, HTP_QDQ_OPS, None, "onnx"),
    TargetProfile("edge-tpu", "Google Edge TPU: full-integer TFLite with int8/uint8 I/O and no float ops",
                  ("tflite",), ("int8", "uint8"), False, True, ("int8", "uint8"), False, TFLITE_NPU_OPS, None, "tflite", "int8"),
)}


def get_profile(name: str) -> TargetProfile:
    if name not in PROFILES:
        raise GzsqError(f"unknown target {name!r}; known targets: {', '.join(PROFILES)}")
    return PROFILES[name]


@dataclass(frozen=True)
class ArtifactFacts:
    """What a checker needs to know about an artifact, read from the file."""

    format: str
    ops: list[str]                          # op type per node, in order
    float_ops: list[str]                    # ops computing in float
    io_dtypes: list[str]                    # dtypes of model inputs and outputs
    activations: list[dict]                 # per quantized activation: name, dtype, channels, zero_points


def tflite_facts(path: Path) -> ArtifactFacts:
    from gzsq.tflite_flatbuffer import op_name, read_model, schema as tflite_schema

    schema = tflite_schema()
    model = read_model(path.read_bytes())
    types = {v: k.lower() for k, v in vars(schema.TensorType).items() if not k.startswith("_")}
    graph = model.subgraphs[0]
    ops, float_ops = [], []
    weights = set()
    for op in graph.operators:
        name = op_name(model, op)
        ops.append(name)
        tensors = [graph.tensors[i] for i in list(op.inputs) + list(op.outputs) if i >= 0]
        if any(t.type == schema.TensorType.FLOAT32 for t in tensors):
            float_ops.append(name)
        if name in ("CONV_2D", "DEPTHWISE_CONV_2D", "FULLY_CONNECTED", "TRANSPOSE_CONV") and len(op.inputs) > 1:
            weights.update(int(i) for i in op.inputs[1:] if i >= 0)
    activations = []
    for index, t in enumerate(graph.tensors):
        q = t.quantization
        if index in weights or t.type not in (schema.TensorType.INT8, schema.TensorType.UINT8) or q is None or q.scale is None:
            continue
        if model.buffers[t.buffer].data is not None and len(model.buffers[t.buffer].data):
            continue  # constants
        activations.append({"name": t.name.decode() if isinstance(t.name, bytes) else str(t.name),
                            "dtype": types[t.type], "channels": len(q.scale),
                            "zero_points": [int(z) for z in q.zeroPoint]})
    io = [types[graph.tensors[i].type] for i in list(graph.inputs) + list(graph.outputs)]
    io = ["float" if d == "float32" else d for d in io]
    return ArtifactFacts("tflite", ops, float_ops, io, activations)


def onnx_facts(path: Path) -> ArtifactFacts:
    import onnx
    from onnx import numpy_helper

    model = onnx.load(str(path))
    inits = {i.name: numpy_helper.to_array(i) for i in model.graph.initializer}
    dq_outputs = {n.output[0] for n in model.graph.node if n.op_type == "DequantizeLinear"}
    q_inputs = {n.input[0] for n in model.graph.node if n.op_type == "QuantizeLinear"}
    ops, float_ops, activations = [], [], []
    for node in model.graph.node:
        ops.append(node.op_type)
        if node.op_type in ("QuantizeLinear", "DequantizeLinear"):
            if node.op_type == "QuantizeLinear" and node.input[0] not in inits:
                scale = inits.get(node.input[1])
                zero = inits.get(node.input[2]) if len(node.input) > 2 else None
                dtype = str(zero.dtype) if zero is not None else "uint8"
                activations.append({"name": node.input[0], "dtype": dtype,
                                    "channels": int(scale.size) if scale is not None else 1,
                                    "zero_points": [] if zero is None else [int(z) for z in zero.reshape(-1)]})
            continue
        float_inputs = [i for i in node.input if i and i not in inits and i not in dq_outputs]
        unquantized_out = [o for o in node.output if o not in q_inputs]
        if float_inputs or (unquantized_out and node.output[0] not in {o.name for o in model.graph.output}):
            float_ops.append(node.op_type)
    elem = {1: "float", 2: "uint8", 3: "int8"}
    io = [elem.get(v.type.tensor_type.elem_type, "other") for v in list(model.graph.input) + list(model.graph.output)
          if v.name not in inits]
    return ArtifactFacts("onnx", ops, float_ops, io, activations)


def openvino_facts(path: Path) -> ArtifactFacts:
    import openvino as ov

    model = ov.Core().read_model(str(path))
    ops = [op.get_type_name() for op in model.get_ordered_ops()]
    activations = []
    for op in model.get_ordered_ops():
        if op.get_type_name() == "FakeQuantize":
            low = op.input_value(3).get_node()
            channels = int(np.asarray(low.get_data()).size) if low.get_type_name() == "Constant" else 1
            activations.append({"name": op.get_friendly_name(), "dtype": "uint8" if op.get_levels() == 256 else "other",
                                "channels": channels, "zero_points": []})
    io = ["float" if str(p.get_element_type()) in ("<Type: 'float32'>", "f32") else str(p.get_element_type())
          for p in list(model.inputs) + list(model.outputs)]
    return ArtifactFacts("openvino", ops, [], io, activations)


def artifact_facts(path: str | Path, fmt: str) -> ArtifactFacts:
    return {"tflite": tflite_facts, "onnx": onnx_facts, "openvino": openvino_facts}[fmt](Path(path))


def violations(facts: ArtifactFacts, profile: TargetProfile) -> list[str]:
    """Every rule of `profile` the artifact breaks, one line each."""
    found = []
    if facts.format not in profile.formats:
        found.append(f"format {facts.format} is not consumed by {profile.name} (it takes {', '.join(profile.formats)}); "
                     f"export with `gzsq export --target {profile.name}`")
        return found
    for dtype in sorted(set(facts.io_dtypes) - set(profile.io_dtypes)):
        found.append(f"model I/O is {dtype}; {profile.name} needs {' or '.join(profile.io_dtypes)} I/O")
    if not profile.float_ops_allowed and facts.float_ops:
        found.append(f"{len(facts.float_ops)} op(s) compute in float ({', '.join(sorted(set(facts.float_ops)))}); "
                     f"{profile.name} runs integer ops only")
    if profile.supported_ops is not None:
        unsupported = sorted(set(facts.ops) - profile.supported_ops - {"DEQUANTIZE"})
        if unsupported:
            found.append(f"op(s) not supported by {profile.name}: {', '.join(unsupported)}")
    for act in facts.activations:
        if act["channels"] > 1:
            found.append(f"activation {act['name']!r} is quantized per channel ({act['channels']} scales); "
                         f"{profile.name} needs per-tensor activations")
        if act["dtype"] not in profile.activation_dtypes:
            found.append(f"activation {act['name']!r} is {act['dtype']}; {profile.name} takes {' or '.join(profile.activation_dtypes)}")
        if profile.activation_symmetric and any(z != 0 for z in act["zero_points"]):
            found.append(f"activation {act['name']!r} has a non-zero zero point; {profile.name} needs symmetric activations")
    return found


def vela_report(tflite_path: str | Path, profile: TargetProfile, work_dir: str | Path) -> dict:
    """Compile with Arm Vela: NPU/CPU operator placement, SRAM/flash use, estimated cycles."""
    import csv
    import shutil
    import subprocess
    import sys

    vela = shutil.which("vela") or str(Path(sys.executable).with_name("vela"))
    if not Path(vela).exists():
        raise GzsqError("Vela is not installed; pip install ethos-u-vela==5.2.0")
    accelerator = {"ethos-u55": "ethos-u55-128", "ethos-u65": "ethos-u65-256"}[profile.name]
    out = Path(work_dir)
    proc = subprocess.run([vela, str(tflite_path), "--accelerator-config", accelerator, "--output-dir", str(out),
                           "--show-cpu-operations"], capture_output=True, text=True, timeout=600)
    if proc.returncode != 0:
        raise GzsqError(f"vela failed on {Path(tflite_path).name}: {(proc.stderr or proc.stdout).strip().splitlines()[-1][:200]}")
    summary = next(out.glob("*_summary_*.csv"), None)
    row = next(csv.DictReader(summary.open())) if summary else {}
    # --show-cpu-operations: "Warning (supported operators) operator: OP, ofm: 'NAME'" then "Reason: …"
    lines = proc.stdout.splitlines()
    cpu_ops, npu, cpu = [], None, None
    for k, line in enumerate(lines):
        match = re.match(r"Warning \(supported operators\) operator: (\w+), ofm: '([^']*)'", line)
        if match:
            reason = lines[k + 1].removeprefix("Reason: ").strip() if k + 1 < len(lines) else ""
            cpu_ops.append({"op": match[1], "tensor": match[2], "reason": reason})
        if line.startswith("CPU operators"):
            cpu = int(line.split("=")[1].split("(")[0])
        if line.startswith("NPU operators"):
            npu = int(line.split("=")[1].split("(")[0])
    return {"accelerator": accelerator, "npu_operators": npu, "cpu_operators": cpu, "cpu_fallback": cpu_ops,
            "sram_kib": float(row.get("sram_memory_used", "nan")),
            "off_chip_flash_kib": float(row.get("off_chip_flash_memory_used", "nan") or "nan"),
            "cycles_total": int(float(row.get("cycles_total", 0))), "cycles_npu": int(float(row.get("cycles_npu", 0))),
            "inference_time_s": float(row.get("inference_time", "nan")),
            "vela_tflite": str(next(out.glob("*_vela.tflite"), ""))}
