"""The hostile corpus's harness: each entry (`corpus.py`) is run as a new user would type it, the real
command line in a child process (`python -P -m workbench.cli --home RUNS ...`), from a working folder
holding planted modules, with a canary HOME and folders around it. Then, for every entry:

- each command's exit status and output: a refusal is a WorkbenchError's message (`error: ...`) naming
  what the entry says it must name, never a traceback;
- files: the canary (HOME, the working folder, other folders, the repository's models and tasks) is
  snapshotted before and after (paths, sizes, mtimes, modes, link targets); only the entry's runs home,
  the temporary folder and the caches may change;
- network: every Python process of the entry carries an audit hook (`site/sitecustomize.py`) recording
  each connect, send or bind to an address that is not loopback, and the sockets of every process are
  polled while it runs;
- processes: the harness is the child subreaper of what it starts, so a detached process stays its
  descendant; whatever still runs after the entry (or carries the entry's marker variable) is left behind;
- planted code: modules planted in the working folder and code in hostile task folders write a marker
  file when they run.
"""

from __future__ import annotations

import contextlib
import ctypes
import ipaddress
import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from string import Template
from typing import Any

import psutil
import yaml

REPO = Path(__file__).resolve().parents[2]
HERE = Path(__file__).resolve().parent
FILES = HERE / "files"
SITE = HERE / "site"
MARK = "WORKBENCH_HOSTILE_ENTRY"  # set for every process of an entry: /proc finds what it left behind
NET = "WORKBENCH_HOSTILE_NET"
TRACEBACK = "Traceback (most recent call last)"
CONTROLS = re.compile(r"[\x00-\x08\x0b-\x1f\x7f-\x9f]")  # what a terminal acts on (newline and tab are text)
REFUSED = (1, 2, 3)  # the exit statuses of WorkbenchErrors (argparse's refusals exit 2 too)
PLANTED = ("json.py", "typing_extensions.py")  # modules every workbench process imports
DROPPED = ("WORKBENCH_HOME", "WORKBENCH_API_KEY", "WORKBENCH_WEB_TOKEN", "WORKBENCH_FAULT", "PYTHONSTARTUP")


@dataclass
class Command:
    """One command of an entry. `argv` is templated ($WORK, $RUNS, $HOME, $MODEL, ... see `Sandbox.values`).

    expect: "refused" (a WorkbenchError matching `refusal`), "ok" (exit 0) or "either"."""

    argv: list[str]
    expect: str = "refused"
    refusal: str = ""
    env: dict[str, str] = field(default_factory=dict)
    timeout: float = 120
    background: bool = False  # left running for the next steps; stopped (SIGINT) when the entry ends
    clean_output: bool = False  # its output must hold no control character but newline and tab
    max_rss_mb: float | None = None  # its peak resident memory, its children included
    after_ok: bool = False  # run only when the command before it exited 0 (e.g. the script it wrote)


def cli(*args: str, **options: Any) -> Command:
    """The workbench command line as a user types it, with the entry's runs home."""
    return Command(["$PYTHON", "-P", "-m", "workbench.cli", "--home", "$RUNS", *args], **options)


@dataclass
class Check:
    """A check between or after commands: returns a problem, or None."""

    what: str
    run: Callable[[Sandbox], str | None]


@dataclass
class Entry:
    id: str
    item: int  # the item of issue 28 it attacks
    attack: str  # what the attacker does, in a line
    steps: list[Command | Check]
    files: str | None = None  # a folder under files/ copied (templated) into the working folder
    recipe: dict[str, Any] | None = None  # overrides of the base recipe written to $WORK/recipe.yaml
    setup: Callable[[Sandbox], None] | None = None  # generated inputs: big files, links, stores, odd names
    env: dict[str, str] = field(default_factory=dict)  # for every command
    allowed: list[str] = field(default_factory=list)  # more (templated) paths that may change
    where: str = ""  # where the attack is exercised when that is not its whole route


@dataclass
class StepResult:
    argv: list[str]
    rc: int | None
    stdout: str
    stderr: str
    seconds: float
    peak_mb: float
    skipped: bool = False


@dataclass
class Outcome:
    entry: Entry
    verdict: str = "FAILED"  # refused | contained | FAILED
    problems: list[str] = field(default_factory=list)
    steps: list[StepResult] = field(default_factory=list)
    seconds: float = 0.0
    tracebacks: int = 0
    outside: list[str] = field(default_factory=list)
    network: list[str] = field(default_factory=list)
    listening: list[str] = field(default_factory=list)
    left: list[str] = field(default_factory=list)
    planted: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return self.verdict != "FAILED"


class Sandbox:
    """The canary around one entry: HOME, its working folder, its runs home, other folders."""

    def __init__(self, root: Path, entry: Entry, model: Path, gguf: Path | None) -> None:
        self.root, self.entry = root, entry
        self.home = root / "home"
        self.work = root / "work" / entry.id
        self.runs = root / "runs" / entry.id
        self.other = root / "other" / entry.id
        self.logs = root / "logs" / entry.id
        self.net = root / "net" / entry.id
        self.markers = root / "markers"
        self.tmp, self.cache = root / "tmp", root / "cache"
        self.token = f"{entry.id}-{uuid.uuid4().hex[:8]}"
        self.state: dict[str, Any] = {}
        self.background: list[tuple[Command, subprocess.Popen[bytes], Path, Path, float]] = []
        self.values = {
            "PYTHON": sys.executable,
            "CANARY": str(root),
            "HOME": str(self.home),
            "WORK": str(self.work),
            "RUNS": str(self.runs),
            "OTHER": str(self.other),
            "MARKERS": str(self.markers),
            "MODEL": str(model),
            "GGUF": str(gguf or ""),
            "PORT": str(free_port()),
            "ENTRY": entry.id,
        }

    def fill(self, text: str) -> str:
        return Template(text).safe_substitute(self.values)

    def environment(self, extra: dict[str, str]) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if k not in DROPPED}
        env.update(
            HOME=str(self.home),
            TMPDIR=str(self.tmp),
            XDG_CACHE_HOME=str(self.cache),
            XDG_CONFIG_HOME=str(self.home / ".config"),
            XDG_DATA_HOME=str(self.home / ".local" / "share"),
            HF_HOME=str(self.cache / "huggingface"),
            HF_HUB_OFFLINE="1",
            HF_DATASETS_OFFLINE="1",
            TRANSFORMERS_OFFLINE="1",
            TOKENIZERS_PARALLELISM="false",
            PYTHONPATH=os.pathsep.join([str(SITE), *filter(None, [os.environ.get("PYTHONPATH")])]),
            **{MARK: self.token, NET: str(self.net)},
        )
        env.update({key: self.fill(value) for key, value in {**self.entry.env, **extra}.items()})
        return env

    def log_text(self, name: str) -> str:
        path = self.logs / name
        return path.read_text(errors="replace") if path.exists() else ""


def free_port() -> int:
    import socket

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


# ---------------------------------------------------------------------------------------------- processes


def set_subreaper(on: bool) -> bool:
    """Orphans of what this process starts are re-parented to it (Linux), so detached ones stay findable."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        return libc.prctl(36, int(on), 0, 0, 0) == 0  # PR_SET_CHILD_SUBREAPER
    except (OSError, AttributeError):
        return False


def is_loopback(host: str) -> bool:
    try:
        return ipaddress.ip_address(host.split("%")[0]).is_loopback
    except ValueError:
        return host == "localhost"


class Watcher(threading.Thread):
    """While an entry runs: reaps orphans that ended (they are this process's children now) and records the
    sockets of every descendant that reach or listen beyond loopback."""

    def __init__(self) -> None:
        super().__init__(daemon=True)
        self.lock = threading.Lock()
        self.active: set[int] = set()  # started by the harness and waited for by it
        self.network: set[str] = set()
        self.listening: set[str] = set()
        self.stopped = threading.Event()

    def run(self) -> None:
        while not self.stopped.wait(0.2):
            self.sweep()

    def sweep(self) -> None:
        with self.lock:
            reap_orphans(self.active)
        for process in descendants():
            try:
                connections = process.net_connections(kind="inet")
                name = " ".join(process.cmdline()[:4])
            except psutil.Error:
                continue
            for conn in connections:
                if conn.raddr and not is_loopback(conn.raddr.ip):
                    self.network.add(f"{conn.raddr.ip}:{conn.raddr.port} from pid {process.pid} ({name})")
                if conn.status == psutil.CONN_LISTEN and not is_loopback(conn.laddr.ip):
                    self.listening.add(f"{conn.laddr.ip}:{conn.laddr.port} by pid {process.pid} ({name})")


def descendants() -> list[psutil.Process]:
    try:
        return [p for p in psutil.Process().children(recursive=True) if p.status() != psutil.STATUS_ZOMBIE]
    except psutil.Error:
        return []


def reap_orphans(active: set[int]) -> None:
    for child in psutil.Process().children():
        with contextlib.suppress(psutil.Error, ChildProcessError):
            if child.pid not in active and child.status() == psutil.STATUS_ZOMBIE:
                os.waitpid(child.pid, os.WNOHANG)


def marked(token: str) -> list[int]:
    """Live processes whose environment carries the entry's marker (those outside this process's tree too)."""
    found = []
    needle = f"{MARK}={token}".encode()
    for pid in psutil.pids():
        try:
            with open(f"/proc/{pid}/environ", "rb") as handle:
                if needle in handle.read().split(b"\0") and psutil.Process(pid).status() != psutil.STATUS_ZOMBIE:
                    found.append(pid)
        except (OSError, psutil.Error):
            continue
    return found


def left_behind(sandbox: Sandbox, watcher: Watcher, earlier: set[int], grace: float = 8.0) -> list[str]:
    """Processes of the entry still running after it (given `grace` seconds to end); each is then killed.
    `earlier`: descendants that were there before the entry (not its own)."""
    deadline = time.monotonic() + grace
    while True:
        with watcher.lock:
            reap_orphans(watcher.active)
        pids = ({p.pid for p in descendants()} - earlier) | set(marked(sandbox.token))
        pids.discard(os.getpid())
        if not pids or time.monotonic() > deadline:
            break
        time.sleep(0.2)
    found = []
    for pid in sorted(pids):
        with contextlib.suppress(psutil.Error):
            process = psutil.Process(pid)
            found.append(f"pid {pid}: {' '.join(process.cmdline())[:160]}")
            process.kill()
    for pid in pids:
        with contextlib.suppress(ChildProcessError, OSError):
            os.waitpid(pid, 0)
    return found


# ------------------------------------------------------------------------------------------------ files


def snapshot(roots: list[Path], skip: list[Path]) -> dict[str, tuple[Any, ...]]:
    """Every path under `roots` (links not followed) with its type, size, mtime, mode and link target."""
    skipped = {str(p) for p in skip}
    seen: dict[str, tuple[Any, ...]] = {}
    for root in roots:
        if not root.exists():
            continue
        for folder, dirs, files in os.walk(root):
            dirs[:] = [d for d in dirs if os.path.join(folder, d) not in skipped]
            for name in [*dirs, *files, ""]:
                path = os.path.join(folder, name) if name else folder
                if path in skipped:
                    continue
                with contextlib.suppress(OSError):
                    info = os.lstat(path)
                    target = os.readlink(path) if os.path.islink(path) else None
                    seen[path] = (info.st_mode, info.st_size, info.st_mtime_ns, target)
    return seen


def differences(
    before: dict[str, tuple[Any, ...]], after: dict[str, tuple[Any, ...]], containers: set[str]
) -> list[str]:
    """What changed; `containers` are folders whose own times change when what they hold does (the folder
    that holds every entry's runs home): what they hold is compared, not them."""
    changed = [f"written: {p}" for p in after if p not in before]
    changed += [f"removed: {p}" for p in before if p not in after]
    changed += [f"changed: {p}" for p in before if p in after and before[p] != after[p] and p not in containers]
    return sorted(changed)


# ------------------------------------------------------------------------------------------------ running


BASE_RECIPE = {
    "name": "hostile",
    "base_model": "$MODEL",
    "data": {"path": "$WORK/qa.json", "held_out": 8, "max_length": 64},
    "train": {"method": "lora", "max_steps": 2, "batch_size": 8, "lora": {"r": 8, "alpha": 16}},
    "merge": {"dtype": "float32"},
    "export": {"gguf": [], "nf4": False, "gptq": False, "awq": False},
}
PLANTED_CODE = "open({marker!r}, 'w').close()\nraise SystemExit(71)\n"


def merged(base: dict[str, Any], overrides: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for key, value in overrides.items():
        out[key] = merged(out[key], value) if isinstance(value, dict) and isinstance(out.get(key), dict) else value
    return out


def prepare(sandbox: Sandbox) -> None:
    entry = sandbox.entry
    for folder in (sandbox.work, sandbox.other, sandbox.logs, sandbox.net, sandbox.markers):
        folder.mkdir(parents=True, exist_ok=True)
    for name in PLANTED:  # the folder every command runs in is hostile too
        (sandbox.work / name).write_text(PLANTED_CODE.format(marker=str(sandbox.markers / f"{entry.id}-{name}")))
    rows = [{"question": f"What is {a} + {a + 7}?", "answer": str(2 * a + 7)} for a in range(10, 58)]
    (sandbox.work / "qa.json").write_text(json.dumps(rows))
    if entry.files:
        copy_templated(FILES / entry.files, sandbox.work, sandbox)
    recipe = merged(BASE_RECIPE, entry.recipe or {})
    (sandbox.work / "recipe.yaml").write_text(sandbox.fill(yaml.safe_dump(recipe, sort_keys=False)))
    if entry.setup:
        entry.setup(sandbox)


def copy_templated(source: Path, target: Path, sandbox: Sandbox) -> None:
    for path in sorted(source.rglob("*")):
        destination = target / path.relative_to(source)
        if path.is_dir():
            destination.mkdir(parents=True, exist_ok=True)
        else:
            destination.parent.mkdir(parents=True, exist_ok=True)
            destination.write_text(sandbox.fill(path.read_text()))


def execute(command: Command, sandbox: Sandbox, watcher: Watcher, number: int) -> StepResult | None:
    argv = [sandbox.fill(part) for part in command.argv]
    out, err = sandbox.logs / f"{number}.out", sandbox.logs / f"{number}.err"
    started = time.monotonic()
    with out.open("wb") as stdout, err.open("wb") as stderr, watcher.lock:
        process = subprocess.Popen(
            argv,
            cwd=sandbox.work,
            env=sandbox.environment(command.env),
            stdin=subprocess.DEVNULL,
            stdout=stdout,
            stderr=stderr,
            start_new_session=True,
        )
        watcher.active.add(process.pid)
    if command.background:
        sandbox.background.append((command, process, out, err, started))
        return None
    return finish(process, argv, out, err, started, command.timeout, watcher)


def finish(
    process: subprocess.Popen[bytes],
    argv: list[str],
    out: Path,
    err: Path,
    started: float,
    timeout: float,
    watcher: Watcher,
    stop: signal.Signals | None = None,
) -> StepResult:
    """Wait for a command (sending `stop` first, if given), with its peak memory from wait4."""
    if stop is not None:
        with contextlib.suppress(ProcessLookupError):
            process.send_signal(stop)
    deadline = time.monotonic() + timeout
    timed_out = False
    while True:
        pid, status, usage = os.wait4(process.pid, os.WNOHANG)
        if pid:
            break
        if time.monotonic() > deadline and not timed_out:
            timed_out = True
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGKILL)
        time.sleep(0.05)
    process.returncode = os.waitstatus_to_exitcode(status)
    with watcher.lock:
        watcher.active.discard(process.pid)
    stderr = err.read_text(errors="replace")
    if timed_out:
        stderr += f"\n[harness] killed after {timeout:.0f} s\n"
    return StepResult(
        argv, process.returncode, out.read_text(errors="replace"), stderr, time.monotonic() - started,
        usage.ru_maxrss / 1024,
    )  # fmt: skip


def judge(command: Command, result: StepResult) -> tuple[str | None, list[str]]:
    """(what the command did: refused | ok, or None when neither) and its problems."""
    problems = []
    said = f"{result.stderr}\n{result.stdout}"
    where = f"`{shown(result.argv)}`"
    if TRACEBACK in said:
        problems.append(f"{where}: a traceback: {last_lines(said)}")
    if command.clean_output and CONTROLS.search(said):
        problems.append(f"{where}: control characters reached the terminal: {CONTROLS.findall(said)[:5]!r}")
    if command.max_rss_mb and result.peak_mb > command.max_rss_mb:
        problems.append(f"{where}: peak memory {result.peak_mb:.0f} MiB, over the bound {command.max_rss_mb:.0f} MiB")
    did = None
    if result.rc == 0:
        did = "ok"
    elif result.rc in REFUSED and result.stderr.strip() and TRACEBACK not in said:  # a WorkbenchError's
        did = "refused"
        if command.refusal and not re.search(command.refusal, result.stderr, re.IGNORECASE | re.DOTALL):
            problems.append(f"{where}: refused, but not naming /{command.refusal}/: {last_lines(result.stderr)}")
    allowed = {"refused": {"refused"}, "ok": {"ok"}, "either": {"refused", "ok"}}[command.expect]
    if did not in allowed:
        got = "exit 0" if did == "ok" else f"exit {result.rc}" if did is None else "a refusal"
        problems.append(f"{where}: {got}, expected {command.expect}: {last_lines(said)}")
    return did, problems


def shown(argv: list[str]) -> str:
    """A command as the user typed it: `workbench ...` for the command line, without the runs home."""
    if argv[1:4] == ["-P", "-m", "workbench.cli"]:
        argv = ["workbench", *argv[6:]]
    return " ".join(argv)[:100]


def last_lines(text: str, count: int = 3) -> str:
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    return " | ".join(lines[-count:])[:400] or "(no output)"


def run_entry(entry: Entry, root: Path, model: Path, gguf: Path | None) -> Outcome:
    sandbox = Sandbox(root, entry, model, gguf)
    outcome = Outcome(entry)
    prepare(sandbox)
    allowed = [sandbox.runs, sandbox.tmp, sandbox.cache, sandbox.markers, root / "net", root / "logs"]
    allowed += [Path(sandbox.fill(p)) for p in entry.allowed]
    roots = [root, REPO / "models", REPO / "evals"]
    before = snapshot(roots, allowed)
    earlier = {p.pid for p in descendants()}
    watcher = Watcher()
    watcher.start()
    started = time.monotonic()
    last: StepResult | None = None
    did: list[str | None] = []
    try:
        for number, step in enumerate(entry.steps):
            if isinstance(step, Check):
                problem = step.run(sandbox)
                if problem:
                    outcome.problems.append(f"{step.what}: {problem}")
                continue
            if step.after_ok and (last is None or last.rc != 0):
                argv = [sandbox.fill(part) for part in step.argv]
                outcome.steps.append(StepResult(argv, None, "", "", 0.0, 0.0, skipped=True))
                continue
            last = execute(step, sandbox, watcher, number)
            if last is not None:
                outcome.steps.append(last)
                sandbox.state.setdefault("results", []).append(last)
                verdict, problems = judge(step, last)
                did.append(verdict)
                outcome.problems += problems
        for command, process, out, err, begun in sandbox.background:
            argv = [sandbox.fill(part) for part in command.argv]
            result = finish(process, argv, out, err, begun, 20, watcher, stop=signal.SIGINT)
            outcome.steps.append(result)
            if TRACEBACK in result.stderr + result.stdout:
                outcome.problems.append(f"`{shown(result.argv)}` (in the background): a traceback")
    finally:
        outcome.left = left_behind(sandbox, watcher, earlier)
        watcher.stopped.set()
        watcher.join()
        watcher.sweep()
    outcome.seconds = time.monotonic() - started
    containers = {str(root / "runs")}
    outcome.outside = differences(before, snapshot(roots, allowed), containers)
    outcome.network = sorted(watcher.network | audit(sandbox, "connect") | audit(sandbox, "send"))
    outcome.listening = sorted(watcher.listening | audit(sandbox, "bind"))
    outcome.planted = sorted(p.name for p in sandbox.markers.glob(f"{entry.id}-*"))
    outcome.tracebacks = sum(TRACEBACK in s.stderr + s.stdout for s in outcome.steps)
    for what, found in (
        ("written outside the run's folder", outcome.outside),
        ("reached beyond loopback", outcome.network),
        ("listened beyond loopback", outcome.listening),
        ("left behind", outcome.left),
        ("planted code ran", outcome.planted),
    ):
        if found:
            outcome.problems.append(f"{what}: {'; '.join(found[:5])}{' ...' if len(found) > 5 else ''}")
    if not outcome.problems:
        outcome.verdict = "refused" if "refused" in did else "contained"
    return outcome


def audit(sandbox: Sandbox, kind: str) -> set[str]:
    """What the audit hooks of the entry's Python processes recorded."""
    found = set()
    for path in sandbox.net.glob("*.tsv"):
        for line in path.read_text(errors="replace").splitlines():
            event, host, port, pid, argv = (line.split("\t") + [""] * 5)[:5]
            if event == kind:
                found.add(f"{host}:{port} ({kind}) from pid {pid} ({argv[:80]})")
    return found


def run_corpus(
    entries: list[Entry],
    root: Path,
    model: Path,
    gguf: Path | None = None,
    report: Callable[[Outcome], None] | None = None,
) -> list[Outcome]:
    """Every entry in turn, in the canary `root`."""
    for name in ("home", "tmp", "cache", "markers", "work", "runs", "other", "logs", "net"):
        (root / name).mkdir(parents=True, exist_ok=True)
    plant_home(root / "home")
    reaping = set_subreaper(True)
    outcomes = []
    try:
        for entry in entries:
            outcome = run_entry(entry, root, model, gguf)
            if not reaping:
                outcome.problems.append("(the harness could not become a subreaper: detached processes may be missed)")
            outcomes.append(outcome)
            if report:
                report(outcome)
    finally:
        set_subreaper(False)
    return outcomes


def plant_home(home: Path) -> None:
    """A HOME worth protecting: a key, a shell profile, a project folder a symlink attack aims at."""
    (home / ".ssh").mkdir(parents=True, exist_ok=True)
    (home / ".ssh" / "id_rsa").write_text(
        "-----BEGIN OPENSSH PRIVATE KEY-----\ncanary\n-----END OPENSSH PRIVATE KEY-----\n"
    )
    (home / ".ssh" / "id_rsa").chmod(0o600)
    (home / ".bashrc").write_text("# canary\n")
    (home / "victim" / "data").mkdir(parents=True, exist_ok=True)
    (home / "victim" / "data" / "important.txt").write_text("the user's own work\n")


# ------------------------------------------------------------------------------------------------ figures


COLUMNS = [
    "attack",
    "attacks tried",
    "refused (WorkbenchError)",
    "contained",
    "failed",
    "tracebacks",
    "files written outside the run's folder",
    "connections beyond loopback",
    "sockets listening beyond loopback",
    "child processes left behind",
    "planted code run",
    "time (s)",
]


def figures(outcomes: list[Outcome], labels: dict[int, str] | None = None) -> list[list[str]]:
    """One row per item of the review (named by `labels`), then the total."""
    rows = []
    groups = sorted({o.entry.item for o in outcomes})
    for item in [*groups, None]:
        chosen = [o for o in outcomes if item is None or o.entry.item == item]
        rows.append(
            [
                "all" if item is None else f"{item}. {(labels or {}).get(item, '')}".strip(),
                str(len(chosen)),
                str(sum(o.verdict == "refused" for o in chosen)),
                str(sum(o.verdict == "contained" for o in chosen)),
                str(sum(o.verdict == "FAILED" for o in chosen)),
                str(sum(o.tracebacks for o in chosen)),
                str(sum(len(o.outside) for o in chosen)),
                str(sum(len(o.network) for o in chosen)),
                str(sum(len(o.listening) for o in chosen)),
                str(sum(len(o.left) for o in chosen)),
                str(sum(len(o.planted) for o in chosen)),
                f"{sum(o.seconds for o in chosen):.1f}",
            ]
        )
    return rows


def markdown(outcomes: list[Outcome], labels: dict[int, str] | None = None) -> str:
    lines = ["| " + " | ".join(COLUMNS) + " |", "|" + "---|" * len(COLUMNS)]
    lines += ["| " + " | ".join(row) + " |" for row in figures(outcomes, labels)]
    return "\n".join(lines)


def describe(outcome: Outcome, verbose: bool = False) -> str:
    """The entry's verdict and its problems; `verbose`: each command's last words too."""
    head = f"{outcome.entry.id} (item {outcome.entry.item}): {outcome.verdict} in {outcome.seconds:.1f} s"
    lines = [head, *(f"    {problem}" for problem in outcome.problems)]
    if verbose:
        for step in outcome.steps:
            said = "skipped" if step.skipped else f"exit {step.rc}: {last_lines(step.stderr or step.stdout, 2)}"
            lines.append(f"    `{shown(step.argv)}` {said}")
    return "\n".join(lines)
