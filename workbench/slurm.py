"""An sbatch script that runs a recipe over `train.distributed.nodes` machines: one `workbench run` per
machine (srun, one task each), the first machine's address as the rendezvous. The first machine runs the
whole recipe in the runs folder; the others train their share with a home of their own under it
(`<home>/node<K>`, so no two machines write one SQLite store) and stop after the train stage."""

from __future__ import annotations

import shlex
import sys
from pathlib import Path

from workbench.recipe import Recipe


def sbatch_script(
    recipe_path: Path,
    recipe: Recipe,
    home: Path,
    overrides: list[str],
    *,
    stages: list[str] | None = None,
    partition: str | None = None,
    time: str | None = None,
    account: str | None = None,
) -> str:
    spread = recipe.train.distributed
    home = home.resolve()
    directives = [
        f"--job-name=workbench-{recipe.name}",
        f"--nodes={spread.nodes}",
        "--ntasks-per-node=1",  # one `workbench run` per machine; it starts the machine's processes itself
        f"--output={home / 'slurm' / f'{recipe.name}-%j.out'}",
    ]
    if recipe.train.device != "cpu":
        directives.append(f"--gpus-per-node={spread.processes}" if spread.processes != "auto" else "--exclusive")
    directives += [
        f"--{key}={value}" for key, value in (("partition", partition), ("time", time), ("account", account)) if value
    ]
    command = [sys.executable, "-m", "workbench.cli", "--home", "$NODE_HOME", "run", str(recipe_path.resolve())]
    for override in overrides:
        command += ["--set", override]
    if stages:
        command += ["--stages", ",".join(stages)]
    run = " ".join('"$NODE_HOME"' if part == "$NODE_HOME" else shlex.quote(part) for part in command)
    quoted_home = shlex.quote(str(home))
    lines = [
        "#!/bin/bash",
        *(f"#SBATCH {directive}" for directive in directives),
        f"# written by `workbench launch --slurm {recipe_path}`; submit with sbatch",
        "set -euo pipefail",
        f"cd {shlex.quote(str(Path.cwd()))}",
        'export MASTER_ADDR="$(scontrol show hostnames "$SLURM_JOB_NODELIST" | head -n 1)"',
        f"export MASTER_PORT={spread.port or 29500}",
        'export HF_HUB_OFFLINE="${HF_HUB_OFFLINE:-1}"',
        "",
        "run_node() {  # on each machine",
        f'  NODE_HOME={quoted_home}; [ "$SLURM_NODEID" = 0 ] || NODE_HOME="$NODE_HOME/node$SLURM_NODEID"',
        f'  exec {run} --node-rank "$SLURM_NODEID" --master-addr "$MASTER_ADDR" --master-port "$MASTER_PORT"',
        "}",
        "export -f run_node",
        "# one failed machine fails the job instead of leaving the others waiting",
        "srun --kill-on-bad-exit=1 bash -c run_node",
        "",
    ]
    return "\n".join(lines)
