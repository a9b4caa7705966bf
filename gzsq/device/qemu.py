"""ARM64 under emulation: a Debian bookworm arm64 rootfs built once with debootstrap and run
through proot + qemu-user-static (binfmt_misc is not needed), with aarch64 wheels of
ai-edge-litert, onnxruntime and NumPy installed into it.

Built in `<cache>/targets/arm64-qemu.partial` and renamed into place only when complete, with a
stamp file; a directory without its stamp (an interrupted build) is removed and rebuilt. The
host's /sys stays hidden from the guest: ai-edge-litert crashes under qemu when it can read it.
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import tempfile
from pathlib import Path

import numpy as np

from gzsq.errors import GzsqError

NAME = "arm64-qemu"
SUITE = "bookworm"
WHEELS = ("ai-edge-litert==2.3.0", "onnxruntime==1.32.0", "numpy==2.4.6")
PLATFORMS = ("manylinux_2_17_aarch64", "manylinux_2_27_aarch64", "manylinux_2_28_aarch64", "manylinux_2_34_aarch64")
STAMP = ".gzsq-complete"
TOOLS = {"qemu-aarch64-static": "qemu-user-static", "debootstrap": "debootstrap", "proot": "proot"}


def cache_root() -> Path:
    return Path(os.environ.get("GZSQ_CACHE", Path.home() / ".cache" / "gzsq")) / "targets"


def rootfs() -> Path:
    return cache_root() / NAME


def is_ready() -> bool:
    return (rootfs() / STAMP).is_file()


def _tool(name: str) -> str:
    path = shutil.which(name) or (f"/usr/sbin/{name}" if Path(f"/usr/sbin/{name}").exists() else None)
    if path is None:
        raise GzsqError(f"{name} is missing; apt-get install {' '.join(sorted(set(TOOLS.values())))} "
                        f"(then `gzsq target setup {NAME}`)")
    return path


def _mirror() -> str:
    for source in [Path("/etc/apt/sources.list"), *sorted(Path("/etc/apt/sources.list.d").glob("*"))]:
        try:
            for line in source.read_text().splitlines():
                words = line.split()
                if line.startswith("URIs:") and "debian" in line and "security" not in line:
                    return words[1]
                if words[:1] == ["deb"] and "debian" in line and "security" not in line:
                    return next(w for w in words[1:] if w.startswith("http"))
        except (OSError, StopIteration):
            continue
    return "http://deb.debian.org/debian"


def _install_tools(log) -> None:
    missing = [pkg for tool, pkg in TOOLS.items() if not (shutil.which(tool) or Path(f"/usr/sbin/{tool}").exists())]
    if not missing:
        return
    if os.geteuid() != 0 or not shutil.which("apt-get"):
        raise GzsqError(f"missing {', '.join(missing)}; run `apt-get install {' '.join(missing)}` as root, "
                        f"then `gzsq target setup {NAME}`")
    log(f"installing {' '.join(missing)} with apt-get")
    subprocess.run(["apt-get", "install", "-y", "-qq", *missing], check=True, capture_output=True,
                   env={**os.environ, "DEBIAN_FRONTEND": "noninteractive"})


def _run(cmd: list[str], what: str, env: dict | None = None, timeout: int = 1800) -> None:
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=timeout)
    if proc.returncode != 0:
        tail = (proc.stderr or proc.stdout).strip().splitlines()[-1:] or ["no output"]
        raise GzsqError(f"{what} failed ({tail[0][:200]}); rerun `gzsq target setup {NAME}`")


def guest_command(root: Path, argv: list[str], binds: list[tuple[Path, str]] = ()) -> list[str]:
    cmd = [_tool("proot"), "-q", _tool("qemu-aarch64-static"), "-r", str(root), "-b", "/dev", "-w", "/"]
    for host, guest in binds:
        cmd += ["-b", f"{host}:{guest}"]
    return cmd + argv


def setup(log=print, force: bool = False) -> Path:
    """Build (or reuse) the rootfs; returns its path."""
    final = rootfs()
    if is_ready() and not force:
        log(f"{NAME}: ready at {final}")
        return final
    if final.exists():
        log(f"{NAME}: {final} has no completion stamp (an interrupted build?); rebuilding")
        shutil.rmtree(final, ignore_errors=True)
    _install_tools(log)
    partial = final.with_name(final.name + ".partial")
    shutil.rmtree(partial, ignore_errors=True)
    partial.parent.mkdir(parents=True, exist_ok=True)
    try:
        mirror = _mirror()
        log(f"{NAME}: debootstrap stage 1 ({SUITE} arm64 from {mirror})")
        _run([_tool("debootstrap"), "--foreign", "--arch=arm64", "--variant=minbase", "--include=python3", SUITE,
              str(partial), mirror], "debootstrap (first stage)")
        log(f"{NAME}: debootstrap stage 2 under emulation (minutes)")
        _run(guest_command(partial, ["/debootstrap/debootstrap", "--second-stage"]), "debootstrap (second stage)",
             env={**os.environ, "DEBOOTSTRAP_DIR": "/debootstrap"})
        log(f"{NAME}: aarch64 wheels: {', '.join(WHEELS)}")
        import sys

        cmd = [sys.executable, "-m", "pip", "install", "-q", "--disable-pip-version-check", "--target",
               str(partial / "opt" / "site"), "--only-binary=:all:", "--python-version", "3.11", "--no-deps"]
        for platform_tag in PLATFORMS:
            cmd += ["--platform", platform_tag]
        _run(cmd + list(WHEELS) + ["flatbuffers", "protobuf", "ml_dtypes", "typing-extensions", "backports.strenum",
                                   "tqdm", "coloredlogs", "humanfriendly", "packaging", "sympy", "mpmath"],
             "pip install of aarch64 wheels")
        probe = subprocess.run(guest_command(partial, ["/usr/bin/env", "PYTHONPATH=/opt/site", "/usr/bin/python3", "-c",
                                                       "import numpy, onnxruntime, ai_edge_litert.interpreter, platform; "
                                                       "print(platform.machine())"]),
                               capture_output=True, text=True, timeout=600)
        if probe.returncode != 0 or "aarch64" not in probe.stdout:
            raise GzsqError(f"the arm64 rootfs does not import its runtimes ({(probe.stderr or probe.stdout).strip()[-200:]})")
        (partial / STAMP).write_text(json.dumps({"suite": SUITE, "wheels": list(WHEELS)}))
        partial.rename(final)
    except BaseException:
        shutil.rmtree(partial, ignore_errors=True)
        raise
    log(f"{NAME}: ready at {final}")
    return final


def run_emulated(artifact: str | Path, images: np.ndarray, threads: int = 1, timeout: int = 1800) -> dict:
    """Run the runner on `images` inside the rootfs; returns outputs and (emulated) latencies."""
    if not is_ready():
        if rootfs().exists():
            raise GzsqError(f"the {NAME} rootfs at {rootfs()} is incomplete; run `gzsq target setup {NAME}`")
        raise GzsqError(f"target {NAME} is not set up; run `gzsq target setup {NAME}` (once, about 10 minutes)")
    root = rootfs()
    runner = Path(__file__).with_name("runner.py")
    with tempfile.TemporaryDirectory(prefix="gzsq-job-", dir=root / "tmp") as job:
        job = Path(job)
        shutil.copy(artifact, job / Path(artifact).name)
        shutil.copy(runner, job / "runner.py")
        np.savez(job / "inputs.npz", images=images.astype(np.float32))
        guest = f"/tmp/{job.name}"
        proc = subprocess.run(guest_command(root, ["/usr/bin/env", "PYTHONPATH=/opt/site", "/usr/bin/python3",
                                                   f"{guest}/runner.py", f"{guest}/{Path(artifact).name}",
                                                   f"{guest}/inputs.npz", f"{guest}/outputs.npz", str(threads)]),
                              capture_output=True, text=True, timeout=timeout)
        if proc.returncode != 0:
            raise GzsqError(f"the emulated run failed: {(proc.stderr or proc.stdout).strip().splitlines()[-1][:200]}")
        with np.load(job / "outputs.npz") as data:
            return {"outputs": data["outputs"], "latency_ms": data["latency_ms"], "machine": str(data["machine"])}
