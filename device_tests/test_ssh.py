"""Remote device over SSH, for real: the test starts an sshd on loopback (its own host key,
a fresh client key, a free port) and `gzsq verify --target ssh://…` runs a zoo artifact there."""
from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from gzsq.cli import main

pytestmark = pytest.mark.ssh
SSHD = shutil.which("sshd") or ("/usr/sbin/sshd" if Path("/usr/sbin/sshd").exists() else None)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def loopback_sshd(tmp_path_factory):
    if SSHD is None or shutil.which("ssh") is None or shutil.which("ssh-keygen") is None:
        pytest.skip("openssh-server/openssh-client not installed (apt-get install openssh-server)")
    if os.geteuid() != 0:
        pytest.skip("the loopback sshd runs as root here (privilege separation)")
    d = tmp_path_factory.mktemp("sshd")
    for name in ("host_key", "client_key"):
        subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(d / name)], check=True)
    (d / "authorized_keys").write_text((d / "client_key.pub").read_text())
    os.chmod(d / "authorized_keys", 0o600)
    port = _free_port()
    Path("/run/sshd").mkdir(exist_ok=True)
    config = d / "sshd_config"
    config.write_text(f"Port {port}\nListenAddress 127.0.0.1\nHostKey {d / 'host_key'}\nPidFile {d / 'sshd.pid'}\n"
                      f"AuthorizedKeysFile {d / 'authorized_keys'}\nPasswordAuthentication no\nPermitRootLogin prohibit-password\n"
                      "StrictModes no\nUsePAM no\nSubsystem sftp internal-sftp\n")
    proc = subprocess.Popen([SSHD, "-D", "-e", "-f", str(config)], stderr=subprocess.PIPE)
    for _ in range(50):
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                break
        time.sleep(0.1)
    known_hosts = d / "known_hosts"
    yield {"port": port, "key": str(d / "client_key"), "known_hosts": str(known_hosts)}
    proc.terminate()
    proc.wait(timeout=10)


@pytest.fixture(scope="module")
def zoo_artifacts(tmp_path_factory):
    out = tmp_path_factory.mktemp("ssh-run")
    assert main(["run", "zoo:fmnist_resnet_bn", "--formats", "onnx,tflite", "--eval-limit", "300", "-o", str(out)]) == 0
    return out


def test_zoo_artifact_end_to_end_over_ssh(loopback_sshd, zoo_artifacts, tmp_path):
    user = os.environ.get("USER", "root")
    url = f"ssh://{user}@127.0.0.1:{loopback_sshd['port']}"
    out = tmp_path / "verify"
    assert main(["verify", "zoo:fmnist_resnet_bn", str(zoo_artifacts / "model_int8.tflite"),
                 str(zoo_artifacts / "model_int8.onnx"), "--target", url, "--ssh-key", loopback_sshd["key"],
                 "--ssh-known-hosts", loopback_sshd["known_hosts"], "--remote-python", sys.executable,
                 "--device-limit", "64", "--eval-limit", "300", "-o", str(out)]) == 0
    report = json.loads((out / "report.json").read_text())
    for fmt in ("tflite", "onnx"):
        device = report["artifacts"][fmt]["device"]
        assert device["images"] == 64 and device["latency_kind"] == "device"
        assert device["top1_agreement_with_host_pct"] == 100.0  # same machine, same kernels
        assert device["max_abs_output_difference"] < 1e-4
        assert 0 <= device["top1_pct"] <= 100


def test_device_without_the_runtime_is_one_line(loopback_sshd, zoo_artifacts, tmp_path, capsys):
    bare = tmp_path / "bare-python"
    bare.write_text(f"#!/bin/sh\nexec {sys.executable} -S -I \"$@\"\n")  # no site-packages: neither NumPy nor a runtime
    bare.chmod(0o755)
    url = f"ssh://root@127.0.0.1:{loopback_sshd['port']}"
    code = main(["verify", "zoo:fmnist_resnet_bn", str(zoo_artifacts / "model_int8.tflite"), "--target", url,
                 "--ssh-key", loopback_sshd["key"], "--ssh-known-hosts", loopback_sshd["known_hosts"],
                 "--remote-python", str(bare), "--device-limit", "8",
                 "--eval-limit", "50", "-o", str(tmp_path / "v")])
    assert code == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "device lacks the runtime" in err and "pip install numpy" in err


def test_unreachable_host_and_bad_url(zoo_artifacts, tmp_path, capsys):
    port = _free_port()  # nothing listens there
    assert main(["verify", "zoo:fmnist_resnet_bn", str(zoo_artifacts / "model_int8.tflite"), "--target",
                 f"ssh://root@127.0.0.1:{port}", "--ssh-known-hosts", str(tmp_path / "kh"), "--eval-limit", "20",
                 "-o", str(tmp_path / "v")]) == 2
    assert "cannot reach" in capsys.readouterr().err
    assert main(["verify", "zoo:fmnist_resnet_bn", str(zoo_artifacts / "model_int8.tflite"), "--target",
                 "ssh://root@host;rm -rf /", "--eval-limit", "20", "-o", str(tmp_path / "v2")]) == 2
    assert "bad SSH target" in capsys.readouterr().err
