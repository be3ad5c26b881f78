"""Servers for a run's variants: started detached (in their own session, so they outlive the terminal or
SSH connection that started them), recorded in the run store with their URL, stopped on request.

The server itself is the real one for the format (`workbench.serve.backends`); the workbench only starts,
watches and stops it. `check` holds a served variant to `workbench chat` through the wire."""

from __future__ import annotations

import contextlib
import os
import re
import secrets
import signal
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from workbench.core import formats
from workbench.core.common import free_port, tail
from workbench.core.errors import InputError, ResourceError, RunError
from workbench.core.paths import run_folder
from workbench.core.records import Server
from workbench.core.store import Store, is_alive, process_started
from workbench.data.files import read_jsonl
from workbench.pipeline import candidates as chat
from workbench.pipeline import launcher
from workbench.serve import backends, load, served
from workbench.serve.client import Endpoint, server_metrics, wait_ready

READY_TIMEOUT_S = 300  # loading the model included
SLOTS = 8  # conversations a server decodes together unless told (`workbench serve --slots`, bench.serve.slots):
# on 2 cores the batch gains most from 4 to 8 (docs/serving.md, Measured)
STOP_GRACE_S = 10


def choose(store: Store, home: Path, run_id: str, variant: str | None, recommended: str | None) -> chat.Candidate:
    """The variant to serve: by name or label, the report's recommendation for a target, or (given neither)
    the CPU recommendation."""
    found, _ = chat.for_run(store, run_id)
    if not found:
        raise RunError(f"run {run_id!r} has no finished variants to serve yet")
    if variant:
        return chat.pick(found, [variant])[0]
    from workbench.report import write

    target = recommended or "cpu"
    comparison = write.load(store, run_id, home / run_id).comparison
    pick = next(r for r in comparison.recommendations if r.target == target)
    if pick.variant is None:
        raise RunError(f"run {run_id!r} has no {target} recommendation ({pick.reason}); name one with --variant")
    return next(c for c in found if c.name == pick.variant)


def cuda_for(variant_format: str) -> bool:
    """Whether the server would run on a GPU: the format's runtime can use one here (llama.cpp's build
    offloads, torch sees CUDA)."""
    return formats.spec(variant_format).gpu_available()


def start(
    store: Store,
    home: Path,
    run_id: str,
    candidate: chat.Candidate,
    host: str = "127.0.0.1",
    port: int = 0,
    api_key: str | None = None,
    backend: str | None = None,
    threads: int | None = None,
    ready_timeout: float = READY_TIMEOUT_S,
    slots: int | None = None,
) -> Server:
    """Start a server for one variant and wait until it answers. A host other than loopback gets an API
    key (a new one when none is given). ResourceError, with the server's last log lines, when it dies or
    does not answer in time; it is then stopped and recorded as stopped."""
    from workbench.core.devices import usable_cores

    if not backends.is_loopback(host) and not api_key:
        api_key = secrets.token_urlsafe(24)
    port = port or free_port(host)
    server_id, log = reserve(
        home, run_id, 1 + max((int(s.id.rsplit("-", 1)[1]) for s in store.servers(run_id)), default=0)
    )
    name = candidate.label if candidate.label not in ("merged", "base") else candidate.name
    plan = backends.plan(
        candidate.format, candidate.path, name, host, port, api_key, threads or usable_cores(),
        cuda_for(candidate.format), backend=backend, lora=candidate.lora, slots=slots or SLOTS,
    )  # fmt: skip
    with open(log, "wb") as out:
        if dropped := sorted(set(os.environ) - set(plan.env)):  # said, not silent: a user may have set them
            out.write(f"workbench: not passed to the server (it reads its address, port, key or settings from"
                      f" them): {', '.join(dropped)}\n".encode())  # fmt: skip
            out.flush()
        process = subprocess.Popen(
            plan.argv,
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            env=plan.env,
        )
    server = Server(
        server_id, run_id, candidate.name, plan.backend, host, port, plan.model, process.pid,
        process_started(process.pid), time.time(), str(log), api_key,
    )  # fmt: skip
    try:
        store.add_server(server)
    except BaseException:  # never a server running that no record names
        process.kill()
        process.wait()
        raise

    def why() -> str:
        return " | ".join(line for line in tail(log, 5) if line.strip()) or f"see {log}"

    try:
        wait_ready(endpoint(server), lambda: process.poll() is None, ready_timeout, why)
    except BaseException:
        stop(store, server)
        raise
    return server


def reserve(home: Path, run_id: str, number: int) -> tuple[str, Path]:
    """The next free server id of the run and its log file, created exclusively: two `serve` commands
    started at once get different ids."""
    folder = run_folder(home, run_id) / "serve"
    folder.mkdir(parents=True, exist_ok=True)
    while True:
        server_id = f"{run_id}-{number}"
        try:
            os.close(os.open(folder / f"{server_id}.log", os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644))
            return server_id, folder / f"{server_id}.log"
        except FileExistsError:
            number += 1


def endpoint(server: Server) -> Endpoint:
    return Endpoint(server.local_url, server.model, server.backend, server.api_key)


def gone(server: Server, within: float = 3.0) -> bool:
    """Whether the server's process has ended, waiting up to `within` seconds (a request can fail while a
    crashing server is still on its way out)."""
    deadline = time.monotonic() + within
    while is_alive(server.pid, server.pid_started):
        if time.monotonic() >= deadline:
            return False
        time.sleep(0.1)
    return True


def stop(store: Store, server: Server) -> bool:
    """Stop a server (its whole process group: vLLM has children) and record it stopped. False when it had
    already gone."""
    was_running = is_alive(server.pid, server.pid_started)
    if was_running:  # only the process recorded (a pid reused since belongs to someone else)
        launcher.signal_process(server.pid, server.pid_started, signal.SIGTERM)
        deadline = time.monotonic() + STOP_GRACE_S
        while is_alive(server.pid, server.pid_started) and time.monotonic() < deadline:
            with contextlib.suppress(ChildProcessError):
                os.waitpid(server.pid, os.WNOHANG)  # started by this process: reap it
            time.sleep(0.1)
        if is_alive(server.pid, server.pid_started):
            launcher.signal_process(server.pid, server.pid_started, signal.SIGKILL)
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(server.pid, signal.SIGKILL)  # what it left behind in its session (vLLM's engine)
    with contextlib.suppress(ChildProcessError):
        os.waitpid(server.pid, os.WNOHANG)
    store.add_server(Server(**{**server.__dict__, "status": "stopped", "stopped": time.time()}))
    return was_running


def find(store: Store, which: str) -> list[Server]:
    """Running servers by server id, or all of a run's."""
    running = [s for s in store.servers() if s.status == "running"]
    chosen = [s for s in running if which in (s.id, s.run_id)]
    if not chosen:
        names = ", ".join(s.id for s in running) or "none"
        raise InputError(f"no running server {which!r}; running: {names}")
    return chosen


def held_out_conversations(home: Path, run_id: str) -> list[list[dict[str, str]]]:
    """The run's held-out conversations without their answers: what a served variant is asked."""
    rows = read_jsonl(home / run_id / "data" / "held_out.jsonl")
    return [row["messages"][:-1] for row in rows if row.get("messages")]


def cases(store: Store, home: Path, server: Server, count: int, max_tokens: int) -> list[served.Case]:
    """Held-out conversations of the server's run with what `workbench chat` answers for its variant and
    the prompt length training gave each (from the tokenizer saved with the merged model)."""
    found, _ = chat.for_run(store, server.run_id)
    candidate = next(c for c in found if c.name == server.variant)
    conversations = held_out_conversations(home, server.run_id)[:count]
    reference = next((v for v in store.variants(server.run_id) if v.is_reference and v.status == "done"), None)
    lengths: list[int | None] = [None] * len(conversations)
    if reference is not None:
        from transformers import AutoTokenizer

        tokenizer = AutoTokenizer.from_pretrained(reference.path)
        for index, messages in enumerate(conversations):
            text = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
            lengths[index] = len(tokenizer(text, add_special_tokens=False)["input_ids"])
    made = []
    for messages, length in zip(conversations, lengths, strict=True):
        pieces, end_of_turn = [], False
        for event in chat.ask(candidate, messages, max_tokens):
            if "text" in event:
                pieces.append(event["text"])
            elif "done" in event:
                end_of_turn = event["done"].end_of_turn
            elif "error" in event:
                raise RunError(f"`workbench chat` could not answer with {server.variant}: {event['error']}")
        made.append(served.Case(messages, length, "".join(pieces), end_of_turn))
    return made


def compare_to_chat(store: Store, home: Path, server: Server, count: int = 4, max_tokens: int = 64) -> dict[str, Any]:
    """Served parity for the server's variant, recorded on the variant (`served`)."""
    result = served.compare_to_chat(endpoint(server), cases(store, home, server, count, max_tokens), max_tokens)
    result["checked_at"] = time.time()
    with contextlib.suppress(KeyError):  # the base model is no stored variant
        store.set_variant_meta(server.run_id, server.variant, "served", result)
    return result


REQUEST_LINE = re.compile(r'"POST /v1/(?:chat/)?completions HTTP/[\d.]+" 200')
SPEED_LINE = re.compile(r"\beval time =.*?([\d.]+) tokens per second")  # llama.cpp's timings, per request


@dataclass
class Activity:
    requests: int  # answered (HTTP 200) since the server started
    tokens_per_s: float | None  # generation speed: llama-server's own average, else the last request's
    busy: int | None = None  # requests being decoded now (llama-server's slots in use)
    queued: int | None = None  # requests waiting for a slot


def activity(server: Server) -> Activity:
    """What the server has done, read from its log (uvicorn's access lines; llama-server's timings, one per
    answered request), and what it is doing, from llama-server's Prometheus metrics."""
    requests, speed = 0, None
    try:
        with open(server.log, encoding="utf-8", errors="replace") as handle:
            for line in handle:
                if REQUEST_LINE.search(line):
                    requests += 1
                elif "prompt eval time" not in line and (found := SPEED_LINE.search(line)):
                    speed = float(found.group(1))
                    requests += server.backend == "llama.cpp"
    except OSError:
        pass
    if server.backend != "llama.cpp":
        return Activity(requests, speed)
    try:
        now = server_metrics(endpoint(server), timeout=2)
    except ResourceError:
        return Activity(requests, speed)
    busy, queued = now.get("requests_processing"), now.get("requests_deferred")
    return Activity(
        requests, now.get("predicted_tokens_seconds") or speed,
        int(busy) if busy is not None else None, int(queued) if queued is not None else None,
    )  # fmt: skip


def knee_rate(store: Store, run_id: str, variant: str) -> float | None:
    """The highest request rate at which the run's bench held the SLO for the variant."""
    rates = [
        float(rate)
        for record in store.bench(run_id)
        if record.variant == variant and record.rates
        for rate, numbers in record.rates.items()
        if numbers.get("holds_slo")
    ]
    return max(rates, default=None)


def soak(
    store: Store, home: Path, server: Server, seconds: float, rate: float, max_tokens: int = 64,
    slo: load.Slo | None = None,
) -> dict[str, Any]:  # fmt: skip
    """Constant load at `rate` for `seconds` on a running server, its memory sampled; then served parity on
    the held-out conversations, so an answer that drifted under load shows. Recorded on the variant."""
    import psutil

    conversations = held_out_conversations(home, server.run_id)
    process = psutil.Process(server.pid)
    found = load.soak(endpoint(server), conversations, rate, seconds, max_tokens,
                      lambda: process.memory_info().rss / 2**20, slo)  # fmt: skip
    parity = compare_to_chat(store, home, server)
    result = {
        "seconds": seconds,
        "rate": rate,
        "requests": found.level.requests,
        "errors": found.level.errors,
        "first_error": found.level.first_error,
        "output_tps": found.level.output_tps,
        "rss_start_mb": found.rss_mb[0][1],
        "rss_end_mb": found.rss_mb[-1][1],
        "rss_slope_mb_per_min": found.rss_slope_mb_per_min,
        "parity": parity["status"],
        "status": "passed" if found.level.errors == 0 and parity["status"] != "failed" else "failed",
        "checked_at": time.time(),
    }
    with contextlib.suppress(KeyError):
        store.set_variant_meta(server.run_id, server.variant, "soak", result)
    return result
