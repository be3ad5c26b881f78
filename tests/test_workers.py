"""The worker contract: job in, result out, events streamed, output logged, time and memory measured, a
timeout that ends the whole process group, a death by signal turned into one plain error."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path
from typing import Any, cast

import psutil
import pytest

from workbench import workers
from workbench.workers.selftest import SelfTestJob, SelfTestResult, selftest_job


def selftest(tmp_path: Path, timeout: float | None = None, **job: Any) -> workers.Outcome:
    return workers.run("workers.selftest", SelfTestJob(**job), name="Q8_0.gguf", log=tmp_path / "x.log",
                       timeout=timeout)  # fmt: skip


def gone(pid: int, within: float = 10.0) -> bool:
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        try:
            if psutil.Process(pid).status() == psutil.STATUS_ZOMBIE:
                return True
        except psutil.NoSuchProcess:
            return True
        time.sleep(0.05)
    return False


def test_result_events_output_and_memory(tmp_path: Path) -> None:
    running = workers.start(
        "workers.selftest",
        SelfTestJob(echo=[1, "two"], events=3, say="hello from the child"),
        name="t",
        log=tmp_path / "x.log",
    )
    assert list(running.events()) == [{"number": 0}, {"number": 1}, {"number": 2}]
    outcome = running.outcome
    assert outcome is not None and outcome.ok and outcome.status == "done" and outcome.error is None
    assert outcome.value_as(SelfTestResult) == SelfTestResult(echo=[1, "two"])
    assert "hello from the child" in (tmp_path / "x.log").read_text() and outcome.tail[-1] == "hello from the child"
    assert outcome.seconds > 0 and outcome.returncode == 0


def test_peak_memory_is_the_childs_own(tmp_path: Path) -> None:
    small = selftest(tmp_path)
    large = selftest(tmp_path, do="memory", megabytes=300)
    assert small.peak_rss_mb is not None and large.peak_rss_mb is not None
    assert large.peak_rss_mb - small.peak_rss_mb > 250


def test_an_exception_is_one_line_naming_the_phase(tmp_path: Path) -> None:
    outcome = selftest(tmp_path, do="raise", phase="smoke check", message="no such tensor")
    assert outcome.status == "failed"
    assert outcome.error == f"Q8_0.gguf: smoke check failed: ValueError: no such tensor — see {tmp_path / 'x.log'}"
    assert "Traceback" in (tmp_path / "x.log").read_text()  # the whole story stays in the log
    with pytest.raises(workers.WorkerFailed, match="smoke check failed"):
        outcome.value_as(SelfTestResult)


def test_a_segfault_is_named_with_its_signal_and_log(tmp_path: Path) -> None:
    outcome = selftest(tmp_path, do="crash", phase="smoke check")
    assert outcome.status == "crashed" and outcome.returncode == -signal.SIGSEGV
    assert outcome.error == f"Q8_0.gguf: smoke check crashed (SIGSEGV) — see {tmp_path / 'x.log'}"
    assert "Segmentation fault" in (tmp_path / "x.log").read_text()  # faulthandler's Python stack
    assert outcome.result is None and outcome.peak_rss_mb is None


def test_an_exit_without_a_result_is_a_failure(tmp_path: Path) -> None:
    outcome = selftest(tmp_path, do="exit", status=3, say="last words")
    assert outcome.status == "failed" and outcome.returncode == 3
    assert "self-test exited with status 3 without a result (last words)" in outcome.error


def test_a_hung_child_and_everything_it_started_end_at_the_timeout(tmp_path: Path) -> None:
    script = tmp_path / "grandchild.py"
    script.write_text("import time\ntime.sleep(3600)\n")
    started = time.monotonic()
    running = workers.start(
        "workers.selftest", SelfTestJob(do="hang", spawn=[sys.executable, str(script)]), name="t",
        log=tmp_path / "x.log", timeout=2,
    )  # fmt: skip
    events = list(running.events())
    outcome = running.outcome
    assert outcome is not None and outcome.status == "timed_out"
    assert outcome.error == f"t: self-test timed out after 2 s — see {tmp_path / 'x.log'}"
    assert time.monotonic() - started < 2 + workers.KILL_GRACE_S + 5
    assert gone(running.pid, 1) and gone(events[0]["grandchild"])  # its process group went with it


def test_leaving_the_events_early_stops_the_child(tmp_path: Path) -> None:
    running = workers.start("workers.selftest", SelfTestJob(do="hang", events=1), name="t", log=tmp_path / "x.log")
    for _ in running.events():
        break
    assert running.outcome is not None and running.outcome.status == "stopped" and gone(running.pid, 1)


def test_a_killed_parent_takes_its_worker_along(tmp_path: Path) -> None:
    """SIGKILL gives the parent no chance to clean up: the child notices and ends its own process group."""
    pid_file = tmp_path / "child.pid"
    parent = subprocess.Popen(
        [
            sys.executable,
            "-c",
            textwrap.dedent(f"""
                from pathlib import Path
                from workbench import workers
                from workbench.workers.selftest import SelfTestJob
                running = workers.start("workers.selftest", SelfTestJob(do="hang"), name="t")
                Path({str(pid_file)!r}).write_text(str(running.pid))
                running.wait()
            """),
        ]
    )
    deadline = time.monotonic() + 30
    while not pid_file.exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    child = int(pid_file.read_text())
    assert not gone(child, 0.5)
    parent.kill()
    parent.wait()
    assert gone(child, 5)


def test_only_registered_tasks_run(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="unknown worker task 'os:system'"):
        workers.start("os:system", SelfTestJob(), name="t", log=tmp_path / "x.log")


def test_stop_from_another_thread(tmp_path: Path) -> None:
    import threading

    running = workers.start("workers.selftest", SelfTestJob(do="hang"), name="t", log=tmp_path / "x.log")
    threading.Timer(1.0, running.stop).start()
    outcome = running.wait()
    assert outcome.status == "stopped" and outcome.error == "t: self-test stopped"
    assert gone(running.pid, 1)


def test_a_crash_after_the_result_is_reported_does_not_undo_it(tmp_path: Path) -> None:
    """Native libraries can abort in their static destructors at exit (seen with torch.compile's pools under
    GPTQModel): the worker leaves without running them, and a result that arrived whole stands."""
    outcome = selftest(tmp_path, do="crash-at-exit", echo="kept")
    assert outcome.status == "done" and outcome.value_as(SelfTestResult).echo == "kept"


def test_spread_runs_one_worker_per_device_at_a_time(tmp_path: Path) -> None:
    def begin(number: int, device: str | None) -> workers.Running:
        if number == 4:
            raise ValueError("no such variant")  # a start that fails is reported; the others go on
        job = SelfTestJob(do="sleep", seconds=1.0, echo=number)
        return workers.start("workers.selftest", job, name=str(number), env=workers.device_env(device))

    ended = dict(workers.spread([0, 1, 2, 3, 4], begin, ["3", "5"]))
    assert isinstance(ended.pop(4), ValueError)
    results = {n: outcome.value_as(SelfTestResult) for n, outcome in ended.items()}
    assert {r.echo for r in results.values()} == {0, 1, 2, 3}
    assert sorted(r.gpu or "" for r in results.values()) == ["3", "3", "5", "5"]  # each pinned to its GPU
    spans = sorted(r.span or (0.0, 0.0) for r in results.values())
    assert spans[1][0] < spans[0][1]  # the first two ran side by side
    for device in ("3", "5"):  # never two at once on one GPU
        mine = sorted(r.span or (0.0, 0.0) for r in results.values() if r.gpu == device)
        assert mine[0][1] <= mine[1][0]

    alone = dict(workers.spread([0, 1], begin, [None]))  # one slot: one after another, not pinned
    first, second = sorted(outcome.value_as(SelfTestResult).span or (0.0, 0.0) for outcome in alone.values())
    assert first[1] <= second[0]
    assert {o.value_as(SelfTestResult).gpu for o in alone.values()} == {os.environ.get("CUDA_VISIBLE_DEVICES")}


def test_a_job_is_checked_against_its_type_on_arrival(tmp_path: Path) -> None:
    """The wire decodes the job into the task's declared dataclass: a field it does not know, or a value of
    the wrong type, fails the job with a message naming the task and the field (not a KeyError later)."""

    def raw(job: dict[str, Any]) -> workers.Outcome:  # JSON as a hand-written or stale job file holds it
        return workers.run("workers.selftest", cast(Any, job), name="Q8_0.gguf", log=tmp_path / "x.log")

    unknown = raw({"do": "answer", "echoo": 1})
    assert unknown.status == "failed"
    assert "self-test failed: WireError: workers.selftest job is not a SelfTestJob: unknown field(s) echoo" in (
        unknown.error or ""
    )
    wrong = raw({"events": "many"})
    assert wrong.status == "failed" and "events: Input should be a valid integer" in (wrong.error or "")


def test_a_task_function_must_declare_its_types() -> None:
    """No task goes untyped: a function without a job or result annotation is refused when resolved."""
    from workbench.workers.wire import WireError, signature

    def untyped(job, channel):
        return {}

    def no_result(job: SelfTestJob, channel: object):
        return None

    for function in (untyped, no_result):
        with pytest.raises(WireError, match="does not declare its job and result types"):
            signature(function)
    assert signature(selftest_job) == (SelfTestJob, SelfTestResult)


def test_a_result_reads_back_as_its_type(tmp_path: Path) -> None:
    from workbench.workers.wire import WireError

    outcome = selftest(tmp_path, echo={"nested": [1, 2]})
    assert outcome.result == {"echo": {"nested": [1, 2]}, "gpu": None, "span": None}  # JSON on the wire
    assert outcome.value_as(SelfTestResult) == SelfTestResult(echo={"nested": [1, 2]})
    with pytest.raises(WireError, match="workers.selftest result is not a SelfTestJob"):
        from workbench.workers.selftest import SelfTestJob

        outcome.value_as(SelfTestJob)  # fields it does not have: refused, not silently dropped


def test_every_task_declares_dataclasses_for_its_job_and_result() -> None:
    """What crosses a process is typed: each registered task's function takes a job dataclass and returns a
    result dataclass (mypy then checks both sides), resolved from its annotations."""
    import dataclasses

    from workbench.workers.child import resolve
    from workbench.workers.tasks import TASKS
    from workbench.workers.wire import signature

    untyped = []
    for name in TASKS:
        job, result = signature(resolve(name))
        if not (dataclasses.is_dataclass(job) and dataclasses.is_dataclass(result)):
            untyped.append(name)
    assert untyped == [], f"tasks whose job or result is not a dataclass: {untyped}"
