"""Start and stop the real vLLM OpenAI-compatible server on CPU (tests and benchmarks)."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import time
import urllib.request
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
# max_num_batched_tokens above any batch's prompt tokens: vLLM 0.32 on CPU crashes ("CPU Generator does not
# use offset") when a request with its own seed is split by chunked prefill; compass seeds every request.
ENGINE_ARGS = {"dtype": "float32", "max_model_len": 1024, "gpu_memory_utilization": 0.2, "enforce_eager": True,
               "max_num_batched_tokens": 32768}
ENV = {"VLLM_CPU_KVCACHE_SPACE": "1", "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1",
       "TOKENIZERS_PARALLELISM": "false"}


def vllm_python(venv: str | os.PathLike) -> Path:
    return Path(venv) / "bin" / "python"


# The vLLM venv the tests use (`make vllm-env`); COMPASS_REQUIRE_VLLM=1 (CI) makes its absence an error, not a skip.
VENV = os.environ.get("COMPASS_VLLM_VENV") or str(REPO / ".venv-vllm")
HAVE_VLLM = vllm_python(VENV).exists()
if not HAVE_VLLM and os.environ.get("COMPASS_REQUIRE_VLLM") == "1":
    raise RuntimeError(f"COMPASS_REQUIRE_VLLM=1 but no vLLM venv at {VENV}: run `make vllm-env`")


def build_tiny_model(venv, out: Path) -> Path:
    """Build the tiny random model with the vLLM venv's transformers (the version that will load it)."""
    subprocess.run([str(vllm_python(venv)), str(REPO / "tests" / "support" / "tiny_model.py"), str(out)],
                   check=True, capture_output=True, env={**os.environ, **ENV}, timeout=300)
    return out


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class VLLMServer:
    """`python -m vllm.entrypoints.openai.api_server` in its own process group; `url` ends in /v1."""

    def __init__(self, venv, model: Path, log: Path, port: int | None = None):
        self.port = port or free_port()
        self.url = f"http://127.0.0.1:{self.port}/v1"
        self.cmd = [str(vllm_python(venv)), "-m", "vllm.entrypoints.openai.api_server", "--model", str(model),
                    "--dtype", ENGINE_ARGS["dtype"], "--max-model-len", str(ENGINE_ARGS["max_model_len"]),
                    "--gpu-memory-utilization", str(ENGINE_ARGS["gpu_memory_utilization"]), "--enforce-eager",
                    "--max-num-batched-tokens", str(ENGINE_ARGS["max_num_batched_tokens"]),
                    "--host", "127.0.0.1", "--port", str(self.port)]
        self.log = log
        self.proc: subprocess.Popen | None = None

    def start(self, timeout: float = 240.0) -> VLLMServer:
        self._log = open(self.log, "w")
        self.proc = subprocess.Popen(self.cmd, stdout=self._log, stderr=subprocess.STDOUT,
                                     env={**os.environ, **ENV}, start_new_session=True)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"vLLM server exited ({self.proc.returncode}); log: {self.log}")
            try:
                urllib.request.urlopen(self.url + "/models", timeout=2).read()
                return self
            except OSError:
                time.sleep(1.0)
        self.stop()
        raise RuntimeError(f"vLLM server not up after {timeout:.0f}s; log: {self.log}")

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()
        if getattr(self, "_log", None):
            self._log.close()

    def __enter__(self) -> VLLMServer:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()
