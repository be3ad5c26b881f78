"""Which real server serves a variant, and its command line: the first usable server of its format's spec
(`servers`, `workbench.core.formats`) — GGUF through llama-cpp-python's server (the chat template stored in
the file), the transformers formats (merged, GPTQ, AWQ, nf4) through vLLM when CUDA and vLLM are present,
otherwise `transformers serve`. Nothing here starts a process."""

from __future__ import annotations

import ast
import functools
import importlib.util
import ipaddress
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from workbench.core import formats
from workbench.core.common import PYTHON, child_env
from workbench.core.errors import InputError

BACKENDS = ("llama.cpp", "vllm", "transformers")
# Variables a server would take its address, port, key or configuration from, over or beside its command
# line (compared lower-cased): llama-cpp-python's server reads HOST, PORT and CONFIG_FILE over its
# arguments (and every field of its settings, `llama_cpp_settings`); uvicorn, under every server,
# WEB_CONCURRENCY and FORWARDED_ALLOW_IPS; vLLM its VLLM_* variables; llama.cpp's llama-server LLAMA_ARG_*
# and LLAMA_API_KEY. None of them reaches a server from the environment the workbench runs in.
SERVER_VARIABLES = frozenset({"host", "port", "config_file", "web_concurrency", "forwarded_allow_ips", "llama_api_key"})
SERVER_PREFIXES = ("vllm_", "llama_arg_")


@dataclass
class Plan:
    backend: str
    argv: list[str]
    model: str  # the name the server's API answers to
    env: dict[str, str] = field(default_factory=dict)  # all of it (`server_env`); the API key travels here


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


@functools.cache
def llama_cpp_settings() -> frozenset[str]:
    """The fields llama-cpp-python's server fills from environment variables of the same name (any case)
    where its command line leaves them out (pydantic-settings): every annotated name of the classes in its
    settings module, read from the source, not imported (importing it loads numpy and libllama, and the TUI
    starts servers)."""
    spec = importlib.util.find_spec("llama_cpp")  # a top-level package: found, not imported
    if spec is None or spec.origin is None:
        return frozenset()
    source = Path(spec.origin).parent / "server" / "settings.py"
    tree = ast.parse(source.read_text(encoding="utf-8"))
    return frozenset(
        statement.target.id.lower()
        for node in ast.walk(tree)
        if isinstance(node, ast.ClassDef)
        for statement in node.body
        if isinstance(statement, ast.AnnAssign) and isinstance(statement.target, ast.Name)
    )


def server_env(
    backend: str, key: tuple[str, str] | None = None, base: Mapping[str, str] | None = None
) -> dict[str, str]:
    """The environment a server starts with: this process's (or `base`) without any variable the server
    would read its address, port, key or configuration from, plus `key` (name, value): the API key under
    the name its server reads it from, set by the workbench only."""
    read = SERVER_VARIABLES | (llama_cpp_settings() if backend == "llama.cpp" else frozenset())
    kept = {
        name: value
        for name, value in (os.environ if base is None else base).items()
        if name.lower() not in read and not name.lower().startswith(SERVER_PREFIXES)
    }
    return child_env(kept, **dict([key] if key else []))


def pick_backend(variant_format: str, cuda: bool, vllm: bool | None = None) -> str:
    """The first of the format's servers that can run here (vLLM: on CUDA, when it is installed)."""
    for backend in formats.spec(variant_format).servers:
        if backend != "vllm":
            return backend
        if vllm is None:
            vllm = importlib.util.find_spec("vllm") is not None
        if cuda and vllm:
            return backend
    raise InputError(f"no server for {variant_format} variants can run here")


def plan(
    variant_format: str,
    path: str,
    model: str,
    host: str,
    port: int,
    api_key: str | None,
    threads: int,
    cuda: bool,
    context: int = 2048,
    backend: str | None = None,
    lora: str | None = None,
) -> Plan:
    """The server command for one variant. Refused (InputError) where the server could not keep its promise:
    an API key on `transformers serve`, which has none, or a non-loopback bind without a key."""
    backend = backend or pick_backend(variant_format, cuda)
    if not is_loopback(host) and not api_key:
        raise InputError(f"--host {host} is reachable from other machines: it needs an API key")
    if backend == "llama.cpp":
        argv = [*PYTHON, "-m", "llama_cpp.server", "--model", path, "--model_alias", model]
        argv += ["--host", host, "--port", str(port), "--n_ctx", str(context), "--n_threads", str(threads)]
        argv += ["--n_gpu_layers", "-1" if cuda else "0", "--verbose", "true"]  # per-request timings in its log
        argv += ["--interrupt_requests", "false"]  # its default cuts a streaming answer off at the next request
        argv += ["--lora_path", lora] if lora else []  # a GGUF adapter on the (quantized) base
        return Plan(backend, argv, model, server_env(backend, ("API_KEY", api_key) if api_key else None))
    if backend == "vllm":
        argv = [*PYTHON, "-m", "vllm.entrypoints.openai.api_server", "--model", path, "--served-model-name", model]
        argv += ["--host", host, "--port", str(port), "--max-model-len", str(context)]
        return Plan(backend, argv, model, server_env(backend, ("VLLM_API_KEY", api_key) if api_key else None))
    if backend == "transformers":
        if api_key:
            raise InputError(
                "`transformers serve` has no API key, so it serves on 127.0.0.1 only; put an authenticating"
                " proxy in front of it, or serve a GGUF variant (llama.cpp's server takes a key)"
            )
        # `transformers serve` names the model by the path it was given
        argv = [*PYTHON, "-m", "transformers.cli.transformers", "serve", path, "--host", host, "--port", str(port)]
        # in the dtype the workbench computes it in (fp32 on a CPU: bf16 there is emulated and answers can
        # differ from `workbench chat`'s)
        argv += [
            "--device",
            "auto" if cuda else "cpu",
            "--dtype",
            formats.compute_dtype(variant_format, "cuda" if cuda else "cpu"),
        ]
        return Plan(backend, argv, path, server_env(backend))
    raise InputError(f"unknown server backend {backend!r}; one of {', '.join(BACKENDS)}")
