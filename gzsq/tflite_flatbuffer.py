"""Reading and rewriting .tflite flatbuffers through LiteRT's generated schema (object API): the
few operations the TFLite exporter and the target checker share."""
from __future__ import annotations


def schema():
    from ai_edge_litert import schema_py_generated

    return schema_py_generated


def read_model(tflite_bytes: bytes):
    """The mutable object tree (ModelT) of a .tflite file."""
    return schema().ModelT.InitFromPackedBuf(tflite_bytes, 0)


def pack_model(model, size_hint: int = 0) -> bytes:
    import flatbuffers

    builder = flatbuffers.Builder(size_hint + 4096)
    builder.Finish(model.Pack(builder), file_identifier=b"TFL3")
    return bytes(builder.Output())


def builtin_code(model, op) -> int:
    """An operator's builtin code (opcodes ≥ 127 live in builtinCode, older ones in the deprecated field)."""
    code = model.operatorCodes[op.opcodeIndex]
    return max(code.builtinCode, code.deprecatedBuiltinCode)


def op_name(model, op) -> str:
    names = {v: k for k, v in vars(schema().BuiltinOperator).items() if not k.startswith("_")}
    code = builtin_code(model, op)
    return names.get(code, str(code))
