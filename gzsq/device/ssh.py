"""Remote device over SSH: `ssh://user@host[:port]`. Pushes the artifact, the evaluation batch
and the runner into a fresh remote temporary directory, runs it with the device's own Python and
runtime, pulls the outputs, and removes the directory. Arguments are passed as lists locally and
each remote word is shell-quoted, so nothing the user types is interpreted by a shell. Every
call has a timeout; BatchMode means a missing key fails at once instead of asking a password."""
from __future__ import annotations

import re
import shlex
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from gzsq.errors import GzsqError

_URL = re.compile(r"^ssh://(?:(?P<user>[A-Za-z0-9._-]+)@)?(?P<host>[A-Za-z0-9.:_-]+?|\[[0-9a-fA-F:]+\])(?::(?P<port>\d{1,5}))?/?$")


@dataclass(frozen=True)
class SshTarget:
    host: str
    user: str | None = None
    port: int = 22
    identity: str | None = None
    python: str = "python3"
    connect_timeout_s: int = 10
    run_timeout_s: int = 1800
    options: tuple[str, ...] = ()

    @property
    def destination(self) -> str:
        return f"{self.user}@{self.host}" if self.user else self.host

    def _options(self) -> list[str]:
        """Options ssh and scp share (scp spells the port -P, so the port is not among them)."""
        cmd = ["-o", "BatchMode=yes", "-o", f"ConnectTimeout={self.connect_timeout_s}", "-o", "StrictHostKeyChecking=accept-new"]
        if self.identity:
            cmd += ["-i", self.identity]
        for option in self.options:
            cmd += ["-o", option]
        return cmd

    def ssh_base(self) -> list[str]:
        return ["ssh", "-p", str(self.port), *self._options()]

    def scp_base(self) -> list[str]:
        return ["scp", "-q", "-P", str(self.port), *self._options()]


def parse_target(url: str, **kwargs) -> SshTarget:
    match = _URL.match(url)
    if not match:
        raise GzsqError(f"bad SSH target {url!r}; write ssh://user@host[:port]")
    port = int(match["port"] or 22)
    if not 0 < port < 65536:
        raise GzsqError(f"bad port {port} in {url!r}")
    return SshTarget(host=match["host"].strip("[]"), user=match["user"], port=port, **kwargs)


def _remote(target: SshTarget, words: list[str], timeout: int, what: str) -> str:
    """Run a command on the device; each word is quoted for the remote shell."""
    cmd = target.ssh_base() + [target.destination, "--", " ".join(shlex.quote(w) for w in words)]
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        raise GzsqError(f"{what} on {target.destination} timed out after {timeout} s") from None
    if proc.returncode == 255:
        detail = proc.stderr.strip().splitlines()[-1:] or ["no detail"]
        raise GzsqError(f"cannot reach {target.destination}:{target.port} over SSH ({detail[0][:160]}); "
                        "check the host, port and key (ssh -i KEY)")
    if proc.returncode == 3 and "runtime missing" in proc.stderr:
        raise GzsqError(f"the device lacks the runtime: {proc.stderr.strip().splitlines()[-1].replace('runtime missing: ', '')}")
    if proc.returncode != 0:
        detail = (proc.stderr or proc.stdout).strip().splitlines()[-1:] or ["no output"]
        raise GzsqError(f"{what} failed on {target.destination} (exit {proc.returncode}: {detail[0][:160]})")
    return proc.stdout


def _copy(target: SshTarget, sources: list[str], destination: str, timeout: int, what: str) -> None:
    """scp over SFTP, then the legacy SCP protocol (`-O`) for devices without an SFTP server
    (dropbear on many boards)."""
    for legacy in (False, True):
        cmd = target.scp_base() + (["-O"] if legacy else []) + sources + [destination]
        try:
            proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
        except subprocess.TimeoutExpired:
            raise GzsqError(f"{what} to/from {target.destination} timed out after {timeout} s") from None
        if proc.returncode == 0:
            return
    if proc.returncode != 0:
        raise GzsqError(f"{what} failed for {target.destination} ({proc.stderr.strip()[:160]})")


def run_remote(target: SshTarget, artifact: str | Path, images: np.ndarray, threads: int = 1) -> dict:
    runner = Path(__file__).with_name("runner.py")
    remote_dir = _remote(target, ["mktemp", "-d", "/tmp/gzsq-job-XXXXXXXX"], target.connect_timeout_s + 20,
                         "creating a work directory").strip()
    if not re.fullmatch(r"/tmp/gzsq-job-[A-Za-z0-9]{8}", remote_dir):
        raise GzsqError(f"unexpected work directory from {target.destination}: {remote_dir[:80]!r}")
    try:
        with tempfile.TemporaryDirectory(prefix="gzsq-ssh-") as tmp:
            inputs = Path(tmp) / "inputs.npz"
            np.savez(inputs, images=images.astype(np.float32))
            name = Path(artifact).name
            staged = Path(tmp) / ("artifact" + Path(artifact).suffix)
            staged.write_bytes(Path(artifact).read_bytes())
            _copy(target, [str(runner), str(inputs), str(staged)], f"{target.destination}:{remote_dir}/", 600, "upload")
            _remote(target, [target.python, f"{remote_dir}/runner.py", f"{remote_dir}/{staged.name}",
                             f"{remote_dir}/inputs.npz", f"{remote_dir}/outputs.npz", str(int(threads))],
                    target.run_timeout_s, f"running {name}")
            local = Path(tmp) / "outputs.npz"
            _copy(target, [f"{target.destination}:{remote_dir}/outputs.npz"], str(local), 600, "download")
            with np.load(local) as data:
                return {"outputs": data["outputs"], "latency_ms": data["latency_ms"], "machine": str(data["machine"])}
    finally:
        try:
            _remote(target, ["rm", "-rf", remote_dir], target.connect_timeout_s + 20, "cleaning up")
        except GzsqError:
            pass
