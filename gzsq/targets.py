"""Deployment targets: which integer scheme keeps the runtime's int8 kernels exact on them."""
from __future__ import annotations

import platform
from dataclasses import dataclass
from pathlib import Path

from gzsq.errors import GzsqError


@dataclass(frozen=True)
class Target:
    name: str
    weight_bits: int   # 8, or 7 where u8×s8 pair sums can saturate int16 (x86 without VNNI)
    reason: str


TARGETS = {
    "x86-avx2": Target("x86-avx2", 7, "x86 without VNNI: 7-bit weights keep vpmaddubsw pair sums inside int16"),
    "x86-vnni": Target("x86-vnni", 8, "x86 with VNNI: int32 accumulation; ONNX Runtime's depthwise kernel can still "
                       "saturate a few outputs, kept at 8 bits because 7 costs more accuracy"),
    "arm64": Target("arm64", 8, "ARM64 dot-product kernels accumulate in int32"),
    "generic": Target("generic", 7, "unknown CPU: 7-bit weights are saturation-safe on every int8 kernel"),
}


def _cpu_flags() -> set[str]:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("flags"):
                return set(line.split(":", 1)[1].split())
    except OSError:
        pass
    return set()


def detect_target() -> Target:
    machine = platform.machine().lower()
    if machine in ("aarch64", "arm64"):
        return TARGETS["arm64"]
    if machine in ("x86_64", "amd64"):
        flags = _cpu_flags()
        return TARGETS["x86-vnni"] if flags & {"avx512_vnni", "avx_vnni", "amx_int8"} else TARGETS["x86-avx2"]
    return TARGETS["generic"]


def resolve_target(target: "Target | str") -> Target:
    if isinstance(target, Target):
        return target
    if target in ("auto", "", None):
        return detect_target()
    if target not in TARGETS:
        raise GzsqError(f"unknown target {target!r}; choose auto or one of {', '.join(TARGETS)}")
    return TARGETS[target]
