"""`workbench run`, `launch` and `sweep`: a recipe's stages, here, on a cluster, or once per combination."""

from __future__ import annotations

import argparse
import faulthandler
import os
from pathlib import Path

from workbench.cli.common import Subcommands, _csv, _load_report, _out, _run_name, _store
from workbench.core.errors import RunError
from workbench.pipeline import launcher
from workbench.pipeline.runlock import RunLock
from workbench.report import runs

# Heavier modules (pydantic recipes, data, the runner's stages) load inside the commands that need them,
# so `workbench` / `workbench tui` start fast.


def cmd_run(args: argparse.Namespace) -> int:
    from workbench.core.recipe import load_recipe
    from workbench.pipeline.runner import run_recipe

    recipe = load_recipe(args.recipe, args.set)
    run_id = args.run_id or recipe.name
    node_rank = _join_nodes(args)
    if node_rank:  # another machine's share of the training; the first machine does the rest
        if args.detach:
            raise RunError("--node-rank: run the other machines in the foreground (their launcher, e.g. srun, waits)")
        args.stages = ["train"]
        _out(f"machine {node_rank} of {recipe.train.distributed.nodes}: the data and train stages only")
    if args.detach:
        if args.stages or args.force:
            raise RunError("--detach runs the whole recipe; leave out --stages and --force")
        started = launcher.launch(Path(args.recipe), args.home, run_id, args.set)
        _out(f"run {run_id} started in the background (pid {started.pid}); output: {started.log}")
        _out(f"follow it: `workbench tui` or `workbench show {run_id}`; stop it: `workbench cancel {run_id}`")
        return 0
    launcher.stop_on_sigterm()
    with RunLock.held(args.home, run_id):  # refused here, before anything is written, if the run is live
        if args.worker:  # started by `launch`: its output already goes to worker.log
            faulthandler.enable(all_threads=True)
            run_recipe(recipe, args.home, stages=args.stages, force=args.force, run_id=run_id)
        else:
            with launcher.logged_to(args.home / run_id / "worker.log"):
                run_recipe(recipe, args.home, stages=args.stages, force=args.force, run_id=run_id)
    _out(f"run {run_id} done; `workbench show {run_id}` lists its stages and artifacts")
    return 0


def _join_nodes(args: argparse.Namespace) -> int:
    """The multi-machine options, handed to the train stage as the launchers' own environment variables
    (which may also be set directly); returns this machine's node rank."""
    for name, value in (("NODE_RANK", args.node_rank), ("MASTER_ADDR", args.master_addr)):
        if value is not None:
            os.environ[name] = str(value)
    if args.master_port is not None:
        os.environ["MASTER_PORT"] = str(args.master_port)
    try:
        return int(os.environ.get("NODE_RANK", "0") or 0)
    except ValueError:
        raise RunError(f"NODE_RANK={os.environ['NODE_RANK']!r} is not a number") from None


def cmd_launch(args: argparse.Namespace) -> int:
    from workbench.core.recipe import load_recipe
    from workbench.pipeline import slurm

    recipe = load_recipe(args.recipe, args.set)
    out = args.out or args.home / "slurm" / f"{recipe.name}.sbatch"
    script = slurm.sbatch_script(
        Path(args.recipe),
        recipe,
        args.home,
        args.set,
        stages=args.stages,
        partition=args.partition,
        time=args.time,
        account=args.account,
    )
    out.parent.mkdir(parents=True, exist_ok=True)
    (args.home / "slurm").mkdir(parents=True, exist_ok=True)  # the job's output goes there
    out.write_text(script)
    out.chmod(0o755)
    spread = recipe.train.distributed
    _out(f"wrote {out}: {spread.nodes} machine(s) x {spread.processes} process(es), strategy {spread.strategy}")
    _out(f"submit it: sbatch {out}")
    return 0


def cmd_sweep(args: argparse.Namespace) -> int:
    from workbench.core.recipe import Recipe, load_recipe
    from workbench.pipeline import sweep
    from workbench.pipeline.runner import run_recipe

    recipe = load_recipe(args.recipe, args.set)
    combos = sweep.combinations(recipe.name, sweep.parse_vary(args.vary), args.set)
    recipes = sweep.load_all(Path(args.recipe), combos)  # every combination refused now, not hours in
    _out(f"sweep of {len(combos)} runs:")
    for combo in combos:
        _out(f"  {combo.run_id}  ({combo.describe()})")
    if args.detach:
        started = launcher.launch_sweep(Path(args.recipe), args.home, recipe.name, args.vary, args.set)
        _out(f"started in the background (pid {started.pid}); output: {started.log}")
        _out("each run appears in `workbench runs` / the TUI as it starts; the comparison ends the log")
        return 0
    launcher.stop_on_sigterm()

    def run_one(one: Recipe, run_id: str) -> None:
        with launcher.logged_to(args.home / run_id / "worker.log"):
            run_recipe(one, args.home, run_id=run_id)

    outcome = sweep.run_sweep(combos, recipes, args.home, run_one)
    finished = [run_id for run_id, error in outcome.items() if error is None]
    _out(f"\nsweep done: {len(finished)} of {len(combos)} runs finished")
    for run_id, error in outcome.items():
        if error is not None:
            _out(f"  {run_id} FAILED: {error}")
    if finished:
        store = _store(args)
        side = runs.side_by_side([_load_report(store, args.home, run_id) for run_id in finished])
        _out("\n" + runs.markdown(side))
    return 0 if len(finished) == len(combos) else 1


def register(sub: Subcommands) -> None:
    run = sub.add_parser("run", help="run a recipe's stages (finished, unchanged stages are skipped)")
    run.add_argument("recipe")
    run.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a recipe field")
    run.add_argument("--stages", type=_csv, help="comma-separated stages to run (and what they need)")
    run.add_argument("--force", type=_csv, default=[], help="comma-separated stages to redo even if cached")
    run.add_argument("--run-id", type=_run_name, help="run name (default: the recipe's name; re-running resumes it)")
    run.add_argument("--detach", action="store_true", help="run in a background worker that outlives the terminal")
    run.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)  # set by `launch` for its worker
    nodes = run.add_argument_group("several machines (train.distributed.nodes > 1)")
    nodes.add_argument("--node-rank", type=int, metavar="K", help="this machine's rank, 0 first (or $NODE_RANK)")
    nodes.add_argument("--master-addr", metavar="HOST", help="the first machine's address (or $MASTER_ADDR)")
    nodes.add_argument(
        "--master-port", type=int, metavar="PORT", help="its rendezvous port (or $MASTER_PORT; default the recipe's)"
    )
    run.set_defaults(func=cmd_run)

    launch = sub.add_parser("launch", help="write a cluster job script that runs a recipe on its machines")
    launch.add_argument("recipe")
    launch.add_argument("--slurm", action="store_true", required=True, help="an sbatch script (SLURM)")
    launch.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a recipe field")
    launch.add_argument("--stages", type=_csv, help="comma-separated stages to run (and what they need)")
    launch.add_argument("--out", type=Path, help="where to write it (default: runs/slurm/RECIPE.sbatch)")
    launch.add_argument("--partition", help="#SBATCH --partition")
    launch.add_argument("--time", help="#SBATCH --time (e.g. 12:00:00)")
    launch.add_argument("--account", help="#SBATCH --account")
    launch.set_defaults(func=cmd_launch)

    sweep = sub.add_parser(
        "sweep", help="run a recipe once per combination of varied fields, then compare the runs side by side"
    )
    sweep.add_argument("recipe")
    sweep.add_argument(
        "--vary", action="append", default=[], required=True, metavar="KEY=V1,V2",
        help="a recipe field and its values, e.g. train.qat.target=none,q4_0 (repeat for a grid)",
    )  # fmt: skip
    sweep.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override for every run")
    sweep.add_argument("--detach", action="store_true", help="run the sweep in a background worker")
    sweep.set_defaults(func=cmd_sweep)
