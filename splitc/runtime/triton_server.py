"""Start and stop a real Triton Inference Server from the ``nvidia-pytriton`` wheel (``splitc serve --server triton``).

The PyPI wheel ``nvidia-pytriton`` ships the ``tritonserver`` binary (2.51) with the python backend
and its stubs (no ONNX Runtime or TensorRT backend: those are in NVIDIA's containers). What it
takes to run it outside PyTriton, each point found necessary:

* the python backend (``libtriton_python.so``, its utils) and the stub of the venv's Python version
  copied into one backend folder (the stub must sit next to the library);
* ``PATH`` starting with the venv's ``bin`` (the stub embeds CPython in isolated mode and finds its
  prefix, hence the venv's site-packages, through ``python3`` on ``PATH``; ``PYTHONPATH`` is ignored)
  and ``LD_LIBRARY_PATH`` with the wheel's libraries and the interpreter's ``LIBDIR`` (otherwise the
  stub may load another libpython than the venv's standard library expects);
* numpy < 2 in that venv (with numpy 2 every python-backend output came back empty or rejected);
* a copy of the repository to serve (the stub writes ``__pycache__`` into model folders), a unique
  shared-memory prefix per server (so exactly its ``/dev/shm`` files can be removed after a crash),
  loopback addresses unless told otherwise (it binds 0.0.0.0 by default).

Stopping: SIGTERM, which exits in 2-3 s once clients have closed their connections (an open
keep-alive makes it wait ``exit_timeout_s``), then SIGKILL of the whole process group (the stubs)
and removal of the prefix's ``/dev/shm`` files.

Example:
    >>> with TritonServer("repo/", port=0) as server:            # doctest: +SKIP
    ...     server.http_url, server.grpc_url
    ('http://127.0.0.1:41000', 'grpc://127.0.0.1:41001')
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from splitc.errors import SplitcError

__all__ = ["TritonServer", "TritonInstall", "find_triton", "free_port_block", "MODELS_VENV_COMMAND"]

MODELS_VENV_COMMAND = "python3 -m venv triton-venv && triton-venv/bin/pip install nvidia-pytriton onnxruntime"

_PROBE = r"""
import json, os, sys, sysconfig
out = {"python": "%d.%d" % sys.version_info[:2], "libdir": sysconfig.get_config_var("LIBDIR") or "",
       "executable": sys.executable}
try:
    import pytriton
    out["pytriton"] = os.path.dirname(pytriton.__file__)
except Exception as exc:
    out["pytriton_error"] = repr(exc)
try:
    import numpy
    out["numpy"] = numpy.__version__
except Exception as exc:
    out["numpy_error"] = repr(exc)
try:
    import onnxruntime
    out["onnxruntime"] = onnxruntime.__version__
except Exception as exc:
    out["onnxruntime_error"] = repr(exc)
print(json.dumps(out))
"""


@dataclass(frozen=True)
class TritonInstall:
    """Where the server, backend and stub are, for one Python environment."""

    python: Path            # the interpreter the models run in
    server: Path            # .../pytriton/tritonserver/bin/tritonserver
    backend: Path           # .../pytriton/tritonserver/backends/python
    stub: Path              # .../python_backend_stubs/<X.Y>/triton_python_backend_stub
    libs: list[str]         # LD_LIBRARY_PATH entries
    numpy: str
    onnxruntime: str | None


def _die_with_parent() -> None:  # runs in the child between fork and exec
    import ctypes

    ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


def find_triton(venv: str | Path | None = None) -> TritonInstall:
    """The tritonserver of the ``nvidia-pytriton`` wheel in ``venv`` (default: this interpreter's environment).

    Raises:
        SplitcError: the wheel is missing, or the environment has numpy 2 (which breaks the python backend).
    """
    python = Path(venv) / "bin" / "python" if venv else Path(sys.executable)
    if not python.exists():
        raise SplitcError(f"--triton-venv {venv}: no {python}", f"create one: {MODELS_VENV_COMMAND}")
    try:
        probe = json.loads(subprocess.run([str(python), "-c", _PROBE], capture_output=True, text=True, timeout=120,
                                          check=True).stdout.strip().splitlines()[-1])
    except (subprocess.SubprocessError, ValueError, IndexError) as exc:
        raise SplitcError(f"cannot run {python} to find tritonserver: {exc}") from None
    where = f"the Python environment of {python}"
    if "pytriton" not in probe:
        raise SplitcError(f"no tritonserver in {where} (the nvidia-pytriton wheel is not installed)",
                          f"pip install nvidia-pytriton, or point --triton-venv at a venv made with: "
                          f"{MODELS_VENV_COMMAND}")
    if "numpy" not in probe or int(probe["numpy"].split(".")[0]) >= 2:
        raise SplitcError(f"{where} has numpy {probe.get('numpy', 'missing')}; Triton's python backend needs numpy < 2",
                          f"use --triton-venv with a venv made with: {MODELS_VENV_COMMAND}")
    root = Path(probe["pytriton"]) / "tritonserver"
    install = TritonInstall(python, root / "bin" / "tritonserver", root / "backends" / "python",
                            root / "python_backend_stubs" / probe["python"] / "triton_python_backend_stub",
                            [str(Path(probe["pytriton"]).parent / "nvidia_pytriton.libs"), probe["libdir"]],
                            probe["numpy"], probe.get("onnxruntime"))
    for path in (install.server, install.backend / "libtriton_python.so", install.stub):
        if not path.exists():
            raise SplitcError(f"the nvidia-pytriton wheel in {where} lacks {path}",
                              f"reinstall it (Python {probe['python']} needs its python-backend stub)")
    return install


def free_port_block(n: int = 3, host: str = "127.0.0.1") -> int:
    """A port p such that p .. p+n-1 are free now (HTTP, gRPC, metrics)."""
    for _ in range(200):
        with socket.socket() as s:
            s.bind((host, 0))
            base = s.getsockname()[1]
        if base + n >= 65535:
            continue
        free = True
        for k in range(1, n):
            with socket.socket() as s:
                try:
                    s.bind((host, base + k))
                except OSError:
                    free = False
                    break
        if free:
            return base
    raise SplitcError("no block of free ports found", "pass --port")


class TritonServer:
    """One tritonserver process serving a copy of ``repository``.

    Args:
        repository: the model repository (copied before serving).
        port: HTTP port; gRPC is port+1, metrics port+2 (0 = a free block).
        host: address to bind.
        venv: environment with nvidia-pytriton, numpy < 2 (and onnxruntime for ONNX-Runtime-in-python models).
        exit_timeout_s: how long a SIGTERM waits for requests in flight.
        extra_args: more tritonserver flags.
        die_with_parent: the server gets SIGTERM when the thread that started it exits (Linux
            ``PR_SET_PDEATHSIG``): a ``splitc serve`` killed with SIGKILL leaves no tritonserver behind.
    """

    def __init__(self, repository: str | Path, port: int = 0, host: str = "127.0.0.1", venv: str | Path | None = None,
                 exit_timeout_s: int = 5, extra_args: tuple[str, ...] = (), die_with_parent: bool = False) -> None:
        self.repository = Path(repository).resolve()
        self.install = find_triton(venv)
        self.host = host
        self.port = port or free_port_block(3, host)
        self.exit_timeout_s = exit_timeout_s
        self.extra_args = tuple(extra_args)
        self.prefix = f"splitc{uuid.uuid4().hex[:10]}_"
        self.proc: subprocess.Popen | None = None
        self.work: Path | None = None
        self.ready_s: float | None = None
        self.die_with_parent = die_with_parent

    @property
    def http_url(self) -> str:
        return f"http://{self._client_host}:{self.port}"

    @property
    def grpc_url(self) -> str:
        return f"grpc://{self._client_host}:{self.port + 1}"

    @property
    def _client_host(self) -> str:
        return "127.0.0.1" if self.host in ("0.0.0.0", "") else self.host

    @property
    def log_path(self) -> Path | None:
        return self.work / "tritonserver.log" if self.work else None

    def log_text(self, tail: int = 4000) -> str:
        """The end of the server's log."""
        path = self.log_path
        if not path or not path.exists():
            return ""
        return path.read_text(errors="replace")[-tail:]

    def start(self, timeout_s: float = 120.0) -> float:
        """Start and wait until ``/v2/health/ready``; returns the seconds it took.

        Raises:
            RuntimeError: the server exited or was not ready in time (with the end of its log).
        """
        self.work = Path(tempfile.mkdtemp(prefix="splitc-triton-"))
        backend = self.work / "backends" / "python"
        backend.mkdir(parents=True)
        for src in (self.install.backend / "libtriton_python.so",
                    self.install.backend / "triton_python_backend_utils.py", self.install.stub):
            shutil.copy(src, backend / src.name)
        repo = self.work / "repository"
        shutil.copytree(self.repository, repo)
        env = dict(os.environ, PATH=f"{self.install.python.parent}{os.pathsep}{os.environ.get('PATH', '')}",
                   LD_LIBRARY_PATH=os.pathsep.join(self.install.libs + [os.environ.get("LD_LIBRARY_PATH", "")]).rstrip(
                       os.pathsep))
        env.pop("PYTHONPATH", None)
        cmd = [str(self.install.server), f"--model-repository={repo}", f"--backend-directory={self.work / 'backends'}",
               f"--http-address={self.host}", f"--http-port={self.port}",
               f"--grpc-address={self.host}", f"--grpc-port={self.port + 1}",
               f"--metrics-address={self.host}", f"--metrics-port={self.port + 2}",
               "--disable-auto-complete-config", f"--exit-timeout-secs={self.exit_timeout_s}",
               "--allow-gpu-metrics=false", "--pinned-memory-pool-byte-size=0",
               f"--backend-config=python,shm-region-prefix-name={self.prefix}", *self.extra_args]
        start = time.perf_counter()
        with open(self.log_path, "wb") as log:
            self.proc = subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
                                         preexec_fn=_die_with_parent if self.die_with_parent else None)
        while time.perf_counter() - start < timeout_s:
            if self.proc.poll() is not None:
                text = self.log_text()
                self.stop()
                raise RuntimeError(f"tritonserver exited with code {self.proc.returncode}:\n{text}")
            if self._ready():
                self.ready_s = time.perf_counter() - start
                return self.ready_s
            time.sleep(0.05)
        text = self.log_text()
        self.stop()
        raise RuntimeError(f"tritonserver was not ready within {timeout_s:g} s:\n{text}")

    def _ready(self) -> bool:
        try:
            with urllib.request.urlopen(f"{self.http_url}/v2/health/ready", timeout=1) as answer:
                return answer.status == 200
        except (urllib.error.URLError, OSError):
            return False

    def running(self) -> bool:
        """Whether the server process is alive."""
        return self.proc is not None and self.proc.poll() is None

    def shm_files(self) -> list[str]:
        """This server's files in /dev/shm (the python backend's shared memory)."""
        return sorted(p.name for p in Path("/dev/shm").glob(self.prefix + "*"))

    def kill(self) -> None:
        """SIGKILL the server and its stubs at once (a crash); :meth:`stop` still cleans up after it."""
        if self.running():
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait()

    def stop(self) -> dict[str, Any]:
        """SIGTERM, wait, SIGKILL what is left of the process group, remove the shm files and the copy.

        Returns:
            ``{"returncode", "stop_s", "killed", "shm_removed", "log_tail"}``.
        """
        info: dict[str, Any] = {"returncode": None, "stop_s": 0.0, "killed": False, "shm_removed": []}
        if self.proc is not None:
            start = time.perf_counter()
            if self.proc.poll() is None:
                self.proc.send_signal(signal.SIGTERM)
                try:
                    self.proc.wait(timeout=self.exit_timeout_s + 15)
                except subprocess.TimeoutExpired:
                    info["killed"] = True
            try:  # stubs live in the server's process group; none may outlive it
                os.killpg(self.proc.pid, signal.SIGKILL)
                info["killed"] = info["killed"] or self.proc.poll() is None
            except (ProcessLookupError, PermissionError):
                pass
            info["returncode"] = self.proc.wait()
            info["stop_s"] = round(time.perf_counter() - start, 2)
        info["shm_removed"] = self.shm_files()
        for name in info["shm_removed"]:
            Path("/dev/shm", name).unlink(missing_ok=True)
        info["log_tail"] = self.log_text(64 * 1024)  # the models' finalize lines (splitc's batch statistics) included
        if self.work is not None:
            shutil.rmtree(self.work, ignore_errors=True)
            self.work = None
        return info

    def __enter__(self) -> "TritonServer":
        self.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.stop()
