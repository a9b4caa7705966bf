"""Running artifacts off this machine's CPU: an ARM64 Debian under qemu-user emulation and remote
devices over SSH. Both ship the same small runner (runner.py, standard library + NumPy + the
runtime package only) with the artifact and an evaluation batch, and read its outputs back."""
from __future__ import annotations

from pathlib import Path

import numpy as np

from gzsq.errors import GzsqError

DEVICE_FORMATS = (".tflite", ".onnx")


def run_on_target(spec: str, artifact: str | Path, images: np.ndarray, threads: int = 1, ssh_key: str | None = None,
                  remote_python: str = "python3", known_hosts: str | None = None) -> dict:
    """One dispatch point for off-host targets: `arm64-qemu` or `ssh://user@host[:port]`."""
    if Path(artifact).suffix not in DEVICE_FORMATS:
        raise GzsqError(f"{Path(artifact).name}: device targets run {' and '.join(DEVICE_FORMATS)} artifacts")
    if spec == "arm64-qemu":
        from gzsq.device.qemu import run_emulated

        result = run_emulated(artifact, images, threads)
        result["emulated"] = True
        return result
    if spec.startswith("ssh://"):
        from gzsq.device.ssh import parse_target, run_remote

        options = (f"UserKnownHostsFile={known_hosts}",) if known_hosts else ()
        result = run_remote(parse_target(spec, identity=ssh_key, python=remote_python, options=options), artifact, images,
                            threads)
        result["emulated"] = False
        return result
    raise GzsqError(f"unknown device target {spec!r}; use arm64-qemu or ssh://user@host[:port]")
