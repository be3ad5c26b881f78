"""An sbatch script that runs a recipe over `train.distributed.nodes` machines: one `workbench run` per
machine (srun, one task each), the first machine's address as the rendezvous. The first machine runs the
whole recipe in the runs folder; the others train their share with a home of their own under it
(`<home>/node<K>`, so no two machines write one SQLite store) and stop after the train stage."""

from __future__ import annotations

import re
import shlex
from pathlib import Path

from workbench.core.common import PYTHON
from workbench.core.errors import InputError
from workbench.core.recipe import Recipe

# what Slurm accepts, and nothing a shell or sbatch's own parser would read as more than one value
SLURM_NAME = r"[A-Za-z0-9_.-]+"
RULES = {
    "partition": (re.compile(rf"{SLURM_NAME}(,{SLURM_NAME})*"), "Slurm partition names, comma-separated"),
    "account": (re.compile(SLURM_NAME), "a Slurm account name: letters, digits, '_', '.', '-'"),
    "time": (
        re.compile(r"([0-9]+-)?[0-9]+(:[0-9]+){0,2}|UNLIMITED|INFINITE", re.IGNORECASE),
        "Slurm's time formats: minutes, minutes:seconds, hours:minutes:seconds, days-hours,"
        " days-hours:minutes, days-hours:minutes:seconds, UNLIMITED",
    ),
}
_UNQUOTABLE = re.compile(r"[\x00-\x1f\x7f\\]")  # sbatch reads a directive to the line's end, `\` as an escape


def checked(option: str, value: str) -> str:
    """An option's value when it is what Slurm takes for it; else refused with the rule."""
    pattern, rule = RULES[option]
    if not pattern.fullmatch(value):
        raise InputError(f"--{option} {value!r}: expected {rule}")
    return value


def directive_path(what: str, path: Path) -> str:
    """A path quoted for an #SBATCH line (sbatch splits those as a shell does); a path with a line break,
    another control character or a backslash cannot be written there and is refused."""
    if _UNQUOTABLE.search(str(path)):
        raise InputError(
            f"{what} {str(path)!r}: a folder whose path holds a control character or '\\' cannot go"
            " into an #SBATCH line; use another"
        )
    return shlex.quote(str(path))


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
    output = directive_path("--home", home / "slurm" / f"{recipe.name}-%j.out")
    directives = [
        f"--job-name=workbench-{recipe.name}",  # a run name: letters, digits, '.', '_', '-'
        f"--nodes={spread.nodes}",
        "--ntasks-per-node=1",  # one `workbench run` per machine; it starts the machine's processes itself
        f"--output={output}",
    ]
    if recipe.train.device != "cpu":
        directives.append(f"--gpus-per-node={spread.processes}" if spread.processes != "auto" else "--exclusive")
    directives += [
        f"--{key}={checked(key, value)}"
        for key, value in (("partition", partition), ("time", time), ("account", account))
        if value
    ]
    # -P: the submitting folder, where the job starts, is not on sys.path (a json.py there is not imported)
    command = [*PYTHON, "-m", "workbench.cli", "--home"]
    options = ["run", str(recipe_path.resolve())]
    for override in overrides:
        options += ["--set", override]
    if stages:
        options += ["--stages", ",".join(stages)]
    run = f'{shlex.join(command)} "$NODE_HOME" {shlex.join(options)}'
    lines = [
        "#!/bin/bash",
        *(f"#SBATCH {directive}" for directive in directives),
        "# written by `workbench launch --slurm`; submit with sbatch",
        "set -euo pipefail",
        f"cd {shlex.quote(str(Path.cwd()))}",
        "export PYTHONSAFEPATH=1",
        'export MASTER_ADDR="$(scontrol show hostnames "$SLURM_JOB_NODELIST" | head -n 1)"',
        f"export MASTER_PORT={int(spread.port or 29500)}",
        'export HF_HUB_OFFLINE="${HF_HUB_OFFLINE:-1}"',
        "",
        "run_node() {  # on each machine",
        f'  NODE_HOME={shlex.quote(str(home))}; [ "$SLURM_NODEID" = 0 ] || NODE_HOME="$NODE_HOME/node$SLURM_NODEID"',
        f'  exec {run} --node-rank "$SLURM_NODEID" --master-addr "$MASTER_ADDR" --master-port "$MASTER_PORT"',
        "}",
        "export -f run_node",
        "# one failed machine fails the job instead of leaving the others waiting",
        "srun --kill-on-bad-exit=1 bash -c run_node",
        "",
    ]
    return "\n".join(lines)
