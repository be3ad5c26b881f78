"""`workbench serve`: a run's variant on an OpenAI-compatible endpoint; the servers started; stopping them."""

from __future__ import annotations

import argparse
import os

from workbench.cli.common import Subcommands, _out, _positive, _run_name, _store, _when
from workbench.core.errors import InputError
from workbench.core.parity import describe_served
from workbench.core.records import Server
from workbench.core.store import Store


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
    rate = soak_rate(args, store, candidate.name) if args.soak else None
    _out(f"starting a server for {candidate.name} ({candidate.format}) ...", flush=True)
    key = args.api_key or os.environ.get("WORKBENCH_API_KEY")
    server = servers.start(store, args.home, args.run, candidate, args.host, args.port, key, slots=args.slots)
    _out(f"serving {server.variant} with {server.backend} at {server.url} (model {server.model!r})")
    if server.api_key:
        _out(f"API key: {server.api_key}  (send it as `Authorization: Bearer <key>`)")
    _out(f"log: {server.log}; stop it: `workbench serve --stop {server.id}`")
    if args.check:
        _out("checking it against `workbench chat` (held-out conversations, stream and non-stream) ...", flush=True)
        result = servers.compare_to_chat(store, args.home, server)
        _out(f"served parity: {describe_served(result)}")
        if result["status"] == "failed":
            return 1
    if rate is not None:
        return soak(args, store, server, rate)
    return 0


def soak_rate(args: argparse.Namespace, store: Store, variant: str) -> float:
    """--rate, else the knee the run's bench found for the variant; refused (before any server starts)
    when there is neither."""
    from workbench.pipeline import servers

    rate = args.rate or servers.knee_rate(store, args.run, variant)
    if rate is None:
        raise InputError(
            f"--soak needs a request rate: --rate R, or a bench of {variant} with `bench.serve.rates` that found the"
            " highest rate holding the SLO"
        )
    return float(rate)


def soak(args: argparse.Namespace, store: Store, server: Server, rate: float) -> int:
    from workbench.pipeline import servers

    where = "as asked" if args.rate else "the highest rate the run's bench found holding the SLO"
    _out(f"soak: {rate:g} requests/s ({where}) for {args.soak:g} s ...", flush=True)
    result = servers.soak(store, args.home, server, args.soak, rate)
    slope = result["rss_slope_mb_per_min"]
    _out(
        f"soak {result['status']}: {result['requests']} requests, {result['errors']} errors, "
        f"{result['output_tps']:.1f} tok/s; server memory {result['rss_start_mb']:.0f} -> {result['rss_end_mb']:.0f} MB"
        f" ({'slope ' + format(slope, '+.2f') + ' MB/min' if slope is not None else 'too short for a slope'});"
        f" parity after it {result['parity']}"
    )
    return 0 if result["status"] == "passed" else 1


def duration(value: str) -> float:
    """Seconds from `90`, `90s`, `10m` or `1h`."""
    units = {"s": 1, "m": 60, "h": 3600}
    number, unit = (value[:-1], units[value[-1]]) if value[-1:] in units else (value, 1)
    try:
        seconds = float(number) * unit
    except ValueError:
        raise argparse.ArgumentTypeError(f"a duration such as 90s, 10m or 1h, not {value!r}") from None
    if seconds <= 0:
        raise argparse.ArgumentTypeError("a duration above 0")
    return seconds


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
        "--soak", type=duration, metavar="DURATION",
        help="then hold a constant load for DURATION (e.g. 10m): errors, server memory, parity after it",
    )  # fmt: skip
    serve.add_argument("--rate", type=float, help="the soak's requests/s (default: the knee the run's bench found)")
    serve.add_argument(
        "--slots", type=_positive,
        help="conversations a GGUF server decodes together (llama-server's --parallel; default 8)",
    )  # fmt: skip
    serve.add_argument(
        "--api-key", help="required for a host other than loopback (default: $WORKBENCH_API_KEY, else a new one)"
    )
    serve.add_argument("--check", action="store_true", help="then hold it to `workbench chat` through the wire")
    serve.add_argument("--stop", metavar="SERVER|RUN", help="stop a server, or every server of a run")
    serve.set_defaults(func=cmd_serve)
