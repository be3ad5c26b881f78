"""`workbench serve`: a run's variant on an OpenAI-compatible endpoint; the servers started; stopping them."""

from __future__ import annotations

import argparse
import os

from workbench.cli.common import Subcommands, _out, _run_name, _store, _when
from workbench.core.parity import describe_served


def cmd_serve(args: argparse.Namespace) -> int:
    from workbench.pipeline import servers

    store = _store(args)
    if args.stop:
        for server in servers.find(store, args.stop):
            servers.stop(store, server)
            _out(f"stopped {server.id} ({server.url})")
        return 0
    if args.run is None:
        listed = store.servers()
        if not listed:
            _out("no servers yet; `workbench serve RUN` starts one")
        for server in listed:
            since = _when(server.started if server.status == "running" else server.stopped)
            _out(f"{server.id:28} {server.status:8} {server.url:32} {server.backend:12} {since:20} {server.variant}")
        return 0
    candidate = servers.choose(store, args.home, args.run, args.variant, args.recommended)
    _out(f"starting a server for {candidate.name} ({candidate.format}) ...", flush=True)
    server = servers.start(
        store, args.home, args.run, candidate, args.host, args.port, args.api_key or os.environ.get("WORKBENCH_API_KEY")
    )
    _out(f"serving {server.variant} with {server.backend} at {server.url} (model {server.model!r})")
    if server.api_key:
        _out(f"API key: {server.api_key}  (send it as `Authorization: Bearer <key>`)")
    _out(f"log: {server.log}; stop it: `workbench serve --stop {server.id}`")
    if args.check:
        _out("checking it against `workbench chat` (held-out conversations, stream and non-stream) ...", flush=True)
        result = servers.compare_to_chat(store, args.home, server)
        _out(f"served parity: {describe_served(result)}")
        return 0 if result["status"] != "failed" else 1
    return 0


def register(sub: Subcommands) -> None:
    serve = sub.add_parser(
        "serve", help="serve a run's variant on an OpenAI-compatible endpoint (no RUN: list servers)"
    )
    serve.add_argument("run", nargs="?", type=_run_name)
    which = serve.add_mutually_exclusive_group()
    which.add_argument("--variant", help="a variant's name or label (e.g. Q8_0.gguf, merged, GPTQ)")
    which.add_argument(
        "--recommended", choices=["cpu", "gpu"], help="the report's recommendation for a target (default: cpu)"
    )
    serve.add_argument("--host", default="127.0.0.1", help="address to listen on (default: this machine only)")
    serve.add_argument("--port", type=int, default=0, help="port (default: a free one)")
    serve.add_argument(
        "--api-key", help="required for a host other than loopback (default: $WORKBENCH_API_KEY, else a new one)"
    )
    serve.add_argument("--check", action="store_true", help="then hold it to `workbench chat` through the wire")
    serve.add_argument("--stop", metavar="SERVER|RUN", help="stop a server, or every server of a run")
    serve.set_defaults(func=cmd_serve)
