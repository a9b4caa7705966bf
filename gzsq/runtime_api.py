"""The interface every runtime harness implements (runtimes/ register them as `gzsq.runtimes`
entry points), and the helpers they share. Core calls harnesses only through this interface.

A harness takes float NCHW batches, whatever the artifact wants inside: it transposes to NHWC,
quantizes int8 inputs and dequantizes int8 outputs with the artifact's own parameters, and splits
batches when the artifact has a fixed batch size.
"""
from __future__ import annotations

import contextlib
import io
import logging
import os
import sys
import time
import warnings
from pathlib import Path
from typing import Callable, Protocol

import numpy as np

from gzsq.errors import GzsqError


class RuntimeHarness(Protocol):
    name: str
    threads: int | None

    def run(self, images: np.ndarray, batch_size: int = 64) -> np.ndarray: ...

    def latency(self, sample: np.ndarray, warmup: int = 5, repeats: int = 30) -> dict: ...


def measure_latency(call: Callable[[], object], warmup: int = 5, repeats: int = 30) -> dict:
    """p50/p90 of `repeats` timed calls after `warmup` untimed ones, in milliseconds."""
    for _ in range(warmup):
        call()
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        call()
        times.append(time.perf_counter() - t)
    times_ms = np.array(times) * 1000
    return {"p50_ms": float(np.percentile(times_ms, 50)), "p90_ms": float(np.percentile(times_ms, 90)),
            "mean_ms": float(times_ms.mean()), "repeats": repeats, "warmup": warmup}


def to_layout(images: np.ndarray, wanted_shape: tuple[int, ...]) -> np.ndarray:
    """NCHW images in the layout an artifact's input has (NCHW as is, or NHWC)."""
    shape = tuple(wanted_shape[1:])
    if images.shape[1:] == shape:
        return images
    if images.ndim == 4 and (images.shape[2], images.shape[3], images.shape[1]) == shape:
        return np.ascontiguousarray(images.transpose(0, 2, 3, 1))
    raise GzsqError(f"images of shape {tuple(images.shape[1:])} (NCHW) do not fit the artifact's input "
                    f"{tuple(wanted_shape)}; give eval data of the model's input size")


def quantize(x: np.ndarray, scale: float, zero_point: int, dtype) -> np.ndarray:
    info = np.iinfo(dtype)
    return np.clip(np.round(x / scale) + zero_point, info.min, info.max).astype(dtype)


def dequantize(q: np.ndarray, scale: float, zero_point: int) -> np.ndarray:
    return (q.astype(np.float32) - zero_point) * np.float32(scale)


def run_in_batches(call: Callable[[np.ndarray], np.ndarray], images: np.ndarray, batch: int,
                   fixed_batch: int | None = None) -> np.ndarray:
    """Run `call` over `images` in chunks; a fixed-batch artifact gets its last chunk padded."""
    step = fixed_batch or batch
    outs = []
    for i in range(0, len(images), step):
        chunk = images[i:i + step]
        if fixed_batch and len(chunk) < step:
            pad = np.repeat(chunk[-1:], step - len(chunk), axis=0)
            outs.append(call(np.concatenate([chunk, pad]))[: len(chunk)])
        else:
            outs.append(call(chunk))
    return np.concatenate(outs)


def file_size_bytes(path: str | Path) -> int:
    path = Path(path)
    if path.suffix == ".xml":  # OpenVINO IR: the graph plus its weights file
        return path.stat().st_size + path.with_suffix(".bin").stat().st_size
    return path.stat().st_size


def default_threads() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


@contextlib.contextmanager
def quiet_native():
    """Mute stdout/stderr at the file-descriptor level: litert-torch, torchao, absl and LiteRT
    print progress and import notices from C++ that Python redirection cannot catch. Errors are
    exceptions, raised after the descriptors are restored."""
    for name in ("absl", "torch", "torchao", "litert_torch", "jax", None):
        logging.getLogger(name).setLevel(logging.ERROR)
    sys.stdout.flush()
    sys.stderr.flush()
    saved = [os.dup(1), os.dup(2)]
    devnull = os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(devnull, 1)
        os.dup2(devnull, 2)
        with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
            warnings.simplefilter("ignore")
            yield
    finally:
        sys.stdout.flush()
        sys.stderr.flush()
        os.dup2(saved[0], 1)
        os.dup2(saved[1], 2)
        for fd in saved + [devnull]:
            os.close(fd)
