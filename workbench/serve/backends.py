"""Which real server serves a variant, and its command line: the first usable server of its format's spec
(`servers`, `workbench.core.formats`) — GGUF through llama.cpp's own `llama-server` (built at set-up from
the source llama-cpp-python vendors: parallel slots, continuous batching, the chat template stored in the
file, Prometheus metrics), the transformers formats (merged, GPTQ, AWQ, nf4) through vLLM when CUDA and
vLLM are present, otherwise `transformers serve`. Nothing here starts a process."""

from __future__ import annotations

import importlib.util
import ipaddress
import os
from collections.abc import Mapping
from dataclasses import dataclass, field

from workbench.core import formats
from workbench.core.common import PYTHON, child_env
from workbench.core.errors import InputError

BACKENDS = ("llama.cpp", "vllm", "transformers")
# Variables a server would take its address, port, key or configuration from, beside its command line
# (compared lower-cased): llama-server every option from LLAMA_ARG_*, its key from LLAMA_API_KEY, a router
# mode from LLAMA_SERVER_*, debugging switches from LLAMA_* and LLAMACPP_*, the hub token from HF_TOKEN, and
# MTMD_*, LLGUIDANCE_* for vision and grammars; uvicorn, under the Python servers, WEB_CONCURRENCY and
# FORWARDED_ALLOW_IPS; vLLM its VLLM_* variables; HOST, PORT, API_KEY and CONFIG_FILE are what Python
# servers' settings classes read. None of them reaches a server from the environment the workbench runs in.
SERVER_VARIABLES = frozenset(
    {"host", "port", "api_key", "config_file", "web_concurrency", "forwarded_allow_ips", "hf_token"}
)
SERVER_PREFIXES = ("vllm_", "llama", "mtmd_", "llguidance_")


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


def server_env(key: tuple[str, str] | None = None, base: Mapping[str, str] | None = None) -> dict[str, str]:
    """The environment a server starts with: this process's (or `base`) without any variable the server
    would read its address, port, key or configuration from, plus `key` (name, value): the API key under
    the name its server reads it from, set by the workbench only."""
    kept = {
        name: value
        for name, value in (os.environ if base is None else base).items()
        if name.lower() not in SERVER_VARIABLES and not name.lower().startswith(SERVER_PREFIXES)
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
    slots: int = 1,
) -> Plan:
    """The server command for one variant: `context` tokens a conversation, `slots` conversations decoded
    together (llama-server's parallel slots over one KV cache of `slots` x `context`; vLLM and `transformers
    serve` schedule their own batches). Refused (InputError) where the server could not keep its promise: an
    API key on `transformers serve`, which has none, or a non-loopback bind without a key."""
    backend = backend or pick_backend(variant_format, cuda)
    if not is_loopback(host) and not api_key:
        raise InputError(f"--host {host} is reachable from other machines: it needs an API key")
    if backend == "llama.cpp":
        from workbench.export.llamacpp_tools import binary

        argv = [str(binary("llama-server")), "--model", path, "--alias", model, "--host", host, "--port", str(port)]
        # a KV stream per slot, `context` tokens each: with one unified cache every conversation's attention
        # runs over all slots' cells, and the first token took twice as long at 4 and 8 clients
        # (benchmarks/serve_batching.py --both-kv)
        argv += ["--parallel", str(slots), "--cont-batching", "--ctx-size", str(context * slots)]
        argv += ["--threads", str(threads)]
        argv += ["--n-gpu-layers", "all" if cuda else "0", "--jinja", "--metrics", "--no-webui", "--offline"]
        argv += ["--cors-origins", "localhost"]  # a web page elsewhere cannot read its answers
        argv += ["--flash-attn", "off"]  # as llama-cpp-python computes (eval, chat): the same greedy answers
        argv += ["--lora", lora] if lora else []  # a GGUF adapter on the (quantized) base
        return Plan(backend, argv, model, server_env(("LLAMA_API_KEY", api_key) if api_key else None))
    if backend == "vllm":
        argv = [*PYTHON, "-m", "vllm.entrypoints.openai.api_server", "--model", path, "--served-model-name", model]
        argv += ["--host", host, "--port", str(port), "--max-model-len", str(context)]
        return Plan(backend, argv, model, server_env(("VLLM_API_KEY", api_key) if api_key else None))
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
        if variant_format == formats.HF.name:
            # requests decoded together: 4.4x one client's tok/s at 8 clients on 2 cores, 1.0x without (one
            # request at a time), answers unchanged (benchmarks/serve_batching.py --continuous-batching); the
            # quantized HF formats are served as before (not measured)
            argv.append("--continuous-batching")
        return Plan(backend, argv, path, server_env())
    raise InputError(f"unknown server backend {backend!r}; one of {', '.join(BACKENDS)}")
