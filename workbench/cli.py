"""The `workbench` command line: the same engine the TUI drives."""

from __future__ import annotations

import argparse
import datetime as dt
import faulthandler
import os
import sys
from pathlib import Path
from typing import Any

from workbench.core import paths, safe
from workbench.core.common import default_home
from workbench.core.errors import RunError, WorkbenchError
from workbench.core.parity import describe_served
from workbench.core.store import Store
from workbench.pipeline import launcher
from workbench.pipeline.runlock import RunLock
from workbench.qat.check import describe_grid
from workbench.report import runs, table, twins, write
from workbench.report.compare import parity_status

# Heavier modules (pydantic recipes, data, the runner's stages) load inside the commands that need them,
# so `workbench` / `workbench tui` start fast.


def _csv(value: str) -> list[str]:
    return [item.strip() for item in value.split(",") if item.strip()]


def _positive(value: str) -> int:
    if not value.isdigit() or int(value) < 1:
        raise argparse.ArgumentTypeError(f"{value}: expected a whole number of 1 or more")
    return int(value)


def _percent(value: str) -> float:
    number = float(value)
    if not 0 < number <= 100:
        raise argparse.ArgumentTypeError(f"{value}: expected a percentage above 0 and at most 100")
    return number


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
        store = Store(args.home / "workbench.db")
        side = runs.side_by_side([_load_report(store, args.home, run_id) for run_id in finished])
        _out("\n" + runs.markdown(side))
    return 0 if len(finished) == len(combos) else 1


def cmd_validate(args: argparse.Namespace) -> int:
    import tempfile

    from workbench.core.recipe import load_recipe
    from workbench.eval import tasks

    recipe = load_recipe(args.recipe, args.set)
    tasks.check_metric(recipe.eval.metric)
    folders = [tasks.BUILTIN_EVALS, *(recipe.resolve_path(folder) for folder in recipe.eval.include)]
    with tempfile.TemporaryDirectory(prefix="workbench-tasks-") as scratch:  # the eval stage's task checks, now
        tasks.copy_task_folders(folders, Path(scratch), recipe.eval.trust_task_code)
    _out(f"{args.recipe}: ok (recipe {recipe.name!r}, base model {recipe.base_model})")
    return 0


def cmd_data_inspect(args: argparse.Namespace) -> int:
    from workbench.data.dataset import load_data, render, token_lengths
    from workbench.pipeline.stages.data import length_stats

    data = load_data(Path(args.file), args.format, args.system_prompt, args.encoding)
    _out(f"file:    {data.path}")
    _out(f"format:  {data.format}")
    _out(f"rows:    {data.total} ({len(data.rows)} good, {len(data.bad)} bad)")
    for info in data.bad[:20]:
        _out(f"  bad {info}")
    if len(data.bad) > 20:
        _out(f"  ... and {len(data.bad) - 20} more")
    if not data.rows:
        return 1
    from transformers import AutoTokenizer

    from workbench.core.models import ModelError, resolve_model

    try:
        tokenizer = AutoTokenizer.from_pretrained(resolve_model(args.model))
    except (ModelError, OSError) as exc:
        _out(f"(no tokenizer: {exc}; showing the first row as data)")
        _out(safe.json_text(data.rows[0][1], indent=2, ensure_ascii=False))
        return 0 if not data.bad else 1
    number, first = data.rows[0]
    _out(f"\nexample ({data.unit} {number}) through the chat template of {args.model}:\n")
    _out(render(first, tokenizer))
    stats = length_stats(token_lengths([row for _, row in data.rows], tokenizer))
    _out("tokens:  " + ", ".join(f"{k} {v}" for k, v in stats.items()))
    return 0 if not data.bad else 1


def cmd_models_list(args: argparse.Namespace) -> int:
    from workbench.core.models import load_registry

    default, entries = load_registry()
    _out(f"{'name':28} {'params':7} {'local':6} source")
    for entry in entries.values():
        mark = " (default)" if entry.name == default else ""
        where = "yes" if entry.is_local else "no"
        _out(f"{entry.name:28} {entry.params or '':7} {where:6} {entry.source}: {entry.package or entry.hub_id}{mark}")
    return 0


def cmd_models_pull(args: argparse.Namespace) -> int:
    from workbench.core.models import pull

    path = pull(args.name)
    _out(f"{args.name}: {path}")
    return 0


def _when(ts: float | None) -> str:
    return dt.datetime.fromtimestamp(ts).strftime("%Y-%m-%d %H:%M:%S") if ts else "-"


def cmd_setup(args: argparse.Namespace) -> int:
    from workbench.export import llamacpp_tools

    _out(f"llama.cpp converter: {llamacpp_tools.fetch()}")
    return 0


def cmd_doctor(args: argparse.Namespace) -> int:
    from workbench import doctor

    recipe = None
    if args.recipe:
        from workbench.core.recipe import load_recipe

        recipe = load_recipe(args.recipe)
    report = doctor.examine(args.home, recipe)
    if not args.json:
        _out("\n".join(doctor.header_lines(report)))
        needed = ", ".join(report.needed)
        _out(f"\nbackends needed ({needed}), each in its own process (logs in {args.home / 'doctor'}):", flush=True)

    def show(probe: doctor.Probe) -> None:
        _out(doctor.probe_line(probe), flush=True)

    doctor.run_probes(report, args.home, doctor.gguf_types_of(recipe), on_probe=None if args.json else show)
    if args.json:
        _out(safe.json_text(report.to_dict(), indent=2))
    else:
        _out("\n".join(doctor.verdict_lines(report)))
    return 3 if report.failing else 0


def cmd_cancel(args: argparse.Namespace) -> int:
    if not launcher.cancel(Store(args.home / "workbench.db"), args.run):
        raise RunError(f"run {args.run!r} has no live worker to stop")
    _out(f"asked run {args.run} to stop; it saves what it can resume from")
    return 0


def cmd_chat(args: argparse.Namespace) -> int:
    from workbench.pipeline import candidates as chat

    store = Store(args.home / "workbench.db")
    found, system_prompt = chat.for_run(store, args.run)
    found += chat.served(store, args.run)  # its running servers answer over HTTP (`served:<server>`)
    chosen = chat.pick(found, args.variant) if args.variant else found
    if not chosen:
        raise RunError(f"run {args.run!r} has no finished variants to ask yet")
    conversation = chat.messages(args.prompt, system_prompt)
    failed = 0
    for candidate in chosen:  # one at a time: each gets the machine to itself, so tok/s compare
        label, name = candidate["label"], candidate["name"]
        _out(f"── {name if label == name else f'{label}: {name}'} ({candidate['format']})", flush=True)
        for event in chat.ask(chat.job(candidate, conversation, args.max_tokens)):
            if "text" in event:
                _out(event["text"], end="", flush=True)
            elif "done" in event:
                _out(f"\n   {chat.stats_line(event['done'])}\n", flush=True)
            elif "error" in event:
                _out(f"   FAILED: {event['error']}\n", flush=True)
                failed += 1
    return 1 if failed else 0


def cmd_serve(args: argparse.Namespace) -> int:
    from workbench.pipeline import servers

    store = Store(args.home / "workbench.db")
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
    _out(f"starting a server for {candidate['name']} ({candidate['format']}) ...", flush=True)
    server = servers.start(
        store, args.home, args.run, candidate, args.host, args.port, args.api_key or os.environ.get("WORKBENCH_API_KEY")
    )
    _out(f"serving {server.variant} with {server.backend} at {server.url} (model {server.model!r})")
    if server.api_key:
        _out(f"API key: {server.api_key}  (send it as `Authorization: Bearer <key>`)")
    _out(f"log: {server.log}; stop it: `workbench serve --stop {server.id}`")
    if args.check:
        _out("checking it against `workbench chat` (held-out conversations, stream and non-stream) ...", flush=True)
        result = servers.compare_to_chat(store, args.home, server)
        _out(f"served parity: {describe_served(result)}")
        return 0 if result["status"] != "failed" else 1
    return 0


def cmd_publish(args: argparse.Namespace) -> int:
    from workbench.pipeline import publish

    store = Store(args.home / "workbench.db")
    folder = publish.lay_out(store, args.home, args.run, args.variant, args.repo)
    files = sorted(str(p.relative_to(folder)) for p in folder.rglob("*") if p.is_file())
    _out(f"{folder}: {', '.join(files)}")
    if args.dry_run:
        _out("dry run: nothing uploaded; the model card is README.md there")
        return 0
    _out(f"uploaded: {publish.upload(folder, args.repo, args.private)}")
    return 0


TOKEN_IN_PS = (
    "--token is in this process's command line, which every local user can read (`ps`);"
    " put it in ${} or a --token-file (mode 0600) instead"
)


def cmd_tui(args: argparse.Namespace) -> int:
    if getattr(args, "web", False):
        from workbench.tui import web

        if args.token is not None:
            _out(f"warning: {TOKEN_IN_PS.format(web.TOKEN_ENV)}", file=sys.stderr)
        web.serve(args.home, args.host, args.port, args.token, args.allow_host, args.max_sessions, args.token_file)
        return 0
    from workbench.tui.app import WorkbenchApp

    WorkbenchApp(args.home).run()
    return 0


def cmd_runs(args: argparse.Namespace) -> int:
    store = Store(args.home / "workbench.db")
    runs = store.runs()
    if not runs:
        _out("no runs yet")
        return 0
    _out(f"{'run':24} {'status':12} {'updated':20} stages")
    for run in runs:
        stages = " ".join(f"{s.name}:{s.status}" for s in store.stages(run["id"]))
        status = store.live_status(run)
        _out(f"{run['id']:24} {status:12} {_when(run['updated']):20} {stages}")
        if status == "crashed":
            last = store.log_tail(run["id"], 1)
            _out(f"{'':24} last words: {last[0] if last else '(no log)'}")
    return 0


def cmd_show(args: argparse.Namespace) -> int:
    store = Store(args.home / "workbench.db")
    run = store.run(args.run)
    if run is None:
        _out(f"no run {args.run!r}; `workbench runs` lists them", file=sys.stderr)
        return 1
    status = store.live_status(run)
    _out(f"run {run['id']}  recipe {run['recipe_path'] or run['name']}  status {status}")
    _out(f"\n{'stage':10} {'status':12} {'time':>9}  error")
    for stage in store.stages(args.run):
        took = f"{stage.seconds:.1f}s" if stage.seconds else "-"
        _out(f"{stage.name:10} {stage.status:12} {took:>9}  {stage.error or ''}")
    if status == "crashed":
        _out(f"\nits worker (pid {run['pid']}) is gone; the last lines of {store.worker_log(args.run)}:")
        _out("\n".join(f"  {line}" for line in store.log_tail(args.run)) or "  (empty)")
        _out(f"`workbench run {run['recipe_path'] or '<recipe>'} --run-id {args.run}` resumes it")
    artifacts = store.artifacts(args.run)
    if artifacts:
        _out(f"\n{'artifact':16} {'kind':8} {'size':>10}  path")
        for item in artifacts:
            _out(f"{item.name:16} {item.kind:8} {item.size / 1e6:>8.1f}MB  {item.path}")
    variants = store.variants(args.run)
    if variants:
        _out(
            f"\n{'variant':44} {'format':6} {'bits':>5} {'size':>10} {'time':>7} {'peak':>8} {'parity':6}  smoke/error"
        )
        for v in variants:
            size = f"{v.size / 1e6:.1f}MB" if v.size else "-"
            took = f"{v.seconds:.1f}s" if v.seconds else "-"
            peak = f"{v.peak_mem_mb:.0f}MB" if v.peak_mem_mb else "-"
            parity = {"passed": "ok", "failed": "FAIL", "skipped": "skip"}.get(
                parity_status(v.meta.get("parity")) or "", "-"
            )
            smoke = v.meta.get("smoke")
            note = repr(smoke[0]["reply"])[:40] if smoke else "-"
            if v.status == "failed":
                note = f"FAILED: {(v.error or '').splitlines()[0] if v.error else '?'}"
            _out(f"{v.name:44} {v.format:6} {v.bits:>5g} {size:>10} {took:>7} {peak:>8} {parity:6}  {note}")
        for v in variants:
            if v.meta.get("grid"):
                _out(f"grid check: {v.name}: {describe_grid(v.meta['grid'])}")
        for v in variants:
            serving = v.meta.get("serving") or {}
            if serving.get("modelfile"):
                _out(f"ollama: {v.name}: `ollama create NAME -f {Path(v.path).parent / serving['modelfile']}`")
            elif serving.get("untranslatable"):
                _out(f"ollama: {v.name}: no Modelfile: {serving['untranslatable']}")
            if v.meta.get("served"):
                _out(f"served: {v.name}: {describe_served(v.meta['served'])}")
        _out(f"serve one: `workbench serve {args.run} --variant NAME` (llama-server commands: the report)")
    metrics = store.metrics(args.run)
    if metrics:
        from workbench.report.scores import format_table

        _out("\nevaluation (lm-eval; fidelity vs the merged model: next-token KLD, top-1 agreement, perplexity ratio)")
        _out("\n".join(format_table(metrics)))
        _out(f"per-sample outputs: {args.home / args.run / 'eval' / 'models'}/<model>/samples/")
    from workbench.core import progress  # plain functions over the store (no terminal)

    logs = store.events(args.run, kind="train_log")
    by_stage = {name: [log for log in logs if log["stage"] == name] for name in progress.TRAINING}
    recipe = progress.run_recipe(run["recipe"])
    if any(by_stage.values()):
        _out()
    spread = {a.stage: a.meta["distributed"] for a in store.artifacts(args.run) if a.meta.get("distributed")}
    for name, staged in by_stage.items():  # one line per training stage that logged: train, reward, tune
        if not staged:
            continue
        first, last = staged[0], staged[-1]
        line = f"{'training' if name == 'train' else progress.stage_label(name, recipe)}: "
        line += f"step {last['step']}/{last['total_steps']}, loss {first['loss']:.4f} -> {last['loss']:.4f}"
        for key in progress.headline_keys(name, staged):
            values = [log["metrics"][key] for log in staged if key in (log.get("metrics") or {})]
            line += f", {key} {progress.figure(values[0])} -> {progress.figure(values[-1])}"
        line += f", {last['tokens_per_s']} tokens/s" if last.get("tokens_per_s") else ""
        if name in spread:
            line += f" on {spread[name]['world_size']} processes ({spread[name]['strategy']})"
        _out(line)
    if metrics or store.bench(args.run):
        _out(f"\nspeed, comparison and recommendation: `workbench report {args.run}`")
    return 0


def _load_report(store: Store, home: Path, run_id: str, keep_percent: float | None = None) -> write.RunReport:
    try:
        return write.load(store, run_id, home / run_id, keep_percent)
    except KeyError:
        raise RunError(f"no run {run_id!r}; `workbench runs` lists them") from None


def cmd_report(args: argparse.Namespace) -> int:
    store = Store(args.home / "workbench.db")
    report = _load_report(store, args.home, args.run, args.keep_percent)
    report.recovered = twins.in_store(store, args.home, report)
    if args.format == "json":
        _out(safe.json_text(report.to_dict(), indent=2))
        return 0
    dest = args.out or args.home / args.run / "report"
    if args.keep_percent is not None and args.out is None:  # the run's own report keeps the recipe's threshold
        dest = dest.with_name(f"report-keep{args.keep_percent:g}")
    dest = write.write(report, dest, own=args.out is None)
    _out(table.plain(report.comparison))
    _out()
    for line in write.recommendation_lines(report.comparison) + write.adapter_lines(report.comparison):
        _out(line)
    _out("\nstages: " + "; ".join(write.stage_lines(report)))
    _out(f"\nreport: {dest / 'report.html'} (also report.md, results.json, comparison.csv)")
    return 0


def cmd_compare(args: argparse.Namespace) -> int:
    store = Store(args.home / "workbench.db")
    side = runs.side_by_side([_load_report(store, args.home, run_id) for run_id in args.runs])
    _out(safe.json_text(side, indent=2) if args.format == "json" else runs.markdown(side))
    return 0


def _out(text: str = "", **options: object) -> None:
    """Everything the command line prints goes through here (tests/test_security_secrets.py holds it to that):
    file names, store rows, model answers and logs may hold terminal controls, and none reaches the terminal."""
    print(safe.terminal_text(text), **options)  # type: ignore[call-overload]


class _Parser(argparse.ArgumentParser):
    """argparse's usage and error messages, which echo what was typed, through `_out` too."""

    def _print_message(self, message: str, file: Any = None) -> None:
        if message:
            _out(message, end="", file=file or sys.stderr)


def _run_name(value: str) -> str:
    try:
        return paths.check_name(value)
    except paths.BadName as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="workbench", description=__doc__)
    parser.add_argument(
        "--home",
        type=Path,
        default=default_home(),
        help="folder of the run store and run artifacts (default: $WORKBENCH_HOME or ./runs)",
    )
    sub = parser.add_subparsers(dest="command")

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

    recipe = sub.add_parser("recipe", help="recipe tools").add_subparsers(dest="recipe_command", required=True)
    validate = recipe.add_parser("validate", help="check a recipe; prints every problem")
    validate.add_argument("recipe")
    validate.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    validate.set_defaults(func=cmd_validate)

    data = sub.add_parser("data", help="data tools").add_subparsers(dest="data_command", required=True)
    inspect = data.add_parser("inspect", help="detected format, rows, bad rows, a rendered example, token lengths")
    inspect.add_argument("file")
    inspect.add_argument("--format", default="auto")
    inspect.add_argument("--model", default="smollm2-135m-instruct", help="whose chat template and tokenizer")
    inspect.add_argument("--system-prompt")
    inspect.add_argument("--encoding", default="utf-8", help="text encoding of the file (default utf-8)")
    inspect.set_defaults(func=cmd_data_inspect)

    models = sub.add_parser("models", help="base models").add_subparsers(dest="models_command", required=True)
    models.add_parser("list", help="registry models and which are local").set_defaults(func=cmd_models_list)
    pull = models.add_parser("pull", help="materialise a registry model under models/")
    pull.add_argument("name")
    pull.set_defaults(func=cmd_models_pull)

    sub.add_parser("setup", help="fetch what runs need offline later (llama.cpp's converter)").set_defaults(
        func=cmd_setup
    )
    doctor = sub.add_parser("doctor", help="CPU, builds, versions, and a tiny run of each backend in its own process")
    doctor.add_argument("--for", dest="recipe", metavar="RECIPE", help="judge by the backends this recipe needs")
    doctor.add_argument("--json", action="store_true", help="print the report as JSON")
    doctor.set_defaults(func=cmd_doctor)
    sub.add_parser("runs", help="list runs with status").set_defaults(func=cmd_runs)
    cancel = sub.add_parser("cancel", help="stop a run's worker (training checkpoints first)")
    cancel.add_argument("run", type=_run_name)
    cancel.set_defaults(func=cmd_cancel)
    chat_parser = sub.add_parser("chat", help="one prompt answered by a run's variants, with tok/s each")
    chat_parser.add_argument("run", type=_run_name)
    chat_parser.add_argument("prompt")
    chat_parser.add_argument(
        "--variant", action="append", default=[], help="a variant's name or part of it (repeatable; default: all)"
    )
    chat_parser.add_argument("--max-tokens", type=_positive, default=128, help="per answer")
    chat_parser.set_defaults(func=cmd_chat)
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
        "--api-key", help="required for a host other than loopback (default: $WORKBENCH_API_KEY, else a new one)"
    )
    serve.add_argument("--check", action="store_true", help="then hold it to `workbench chat` through the wire")
    serve.add_argument("--stop", metavar="SERVER|RUN", help="stop a server, or every server of a run")
    serve.set_defaults(func=cmd_serve)
    publish = sub.add_parser("publish", help="a variant with its model card to the Hugging Face Hub")
    publish.add_argument("run", type=_run_name)
    publish.add_argument("--variant", required=True, help="a variant's name or label (e.g. Q4_K_M.gguf, merged)")
    publish.add_argument("--repo", required=True, help="OWNER/NAME on the Hub")
    publish.add_argument("--private", action="store_true", help="create the repository private")
    publish.add_argument("--dry-run", action="store_true", help="lay the repository out under RUN/publish/ only")
    publish.set_defaults(func=cmd_publish)
    tui = sub.add_parser("tui", help="the terminal UI (also `workbench` with no arguments)")
    tui.add_argument("--web", action="store_true", help="serve it to a browser (textual-serve) instead")
    tui.add_argument("--host", default="127.0.0.1", help="--web: address to listen on (default: this machine only)")
    tui.add_argument("--port", type=int, default=8000, help="--web: port (default 8000)")
    secret = tui.add_mutually_exclusive_group()
    secret.add_argument(
        "--token-file", type=Path, metavar="FILE", help="--web: read the access token from FILE (mode 0600)"
    )
    secret.add_argument(
        "--token", help="--web: the access token (other local users see it in `ps`: prefer $WORKBENCH_WEB_TOKEN,"
        " else a random one, printed, or --token-file)"
    )  # fmt: skip
    tui.add_argument(
        "--allow-host", action="append", default=[], metavar="NAME", help="--web: another name browsers use for it"
    )
    tui.add_argument("--max-sessions", type=_positive, default=4, help="--web: app processes at once (default 4)")
    tui.set_defaults(func=cmd_tui)
    show = sub.add_parser("show", help="a run's stages, timings and artifacts")
    show.add_argument("run", type=_run_name)
    show.set_defaults(func=cmd_show)
    report = sub.add_parser("report", help="a run's comparison table, recommendation and report files")
    report.add_argument("run", type=_run_name)
    report.add_argument("--format", choices=["text", "json"], default="text", help="json: print the results only")
    report.add_argument("--out", type=Path, help="folder for the report files (default: runs/RUN/report)")
    report.add_argument(
        "--keep-percent", type=_percent, help="override report.keep_percent (files go to runs/RUN/report-keepX)"
    )
    report.set_defaults(func=cmd_report)
    compare_runs = sub.add_parser("compare", help="several runs side by side (which training survives quantization)")
    compare_runs.add_argument("runs", nargs="+", type=_run_name)
    compare_runs.add_argument("--format", choices=["md", "json"], default="md")
    compare_runs.set_defaults(func=cmd_compare)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.command is None:
        args.func = cmd_tui
    try:
        for run_id in _named_runs(args):  # a run folder that is (or holds) a link is refused before any use
            paths.run_folder(args.home, run_id)
        return args.func(args)
    except KeyboardInterrupt:
        _out("interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # `workbench show RUN | head`: the reader has gone; exit as a piped tool does
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 141
    except Exception as exc:  # noqa: BLE001 - problems the user can fix get a message; anything else raises
        return _explain(exc)


def _named_runs(args: argparse.Namespace) -> list[str]:
    named = [getattr(args, "run", None), getattr(args, "run_id", None), *(getattr(args, "runs", None) or [])]
    return [run_id for run_id in named if isinstance(run_id, str)]


def _explain(exc: Exception) -> int:
    """A WorkbenchError is one message and its exit status; anything else is a bug and keeps its traceback."""
    if isinstance(exc, WorkbenchError):
        _out(exc.message(), file=sys.stderr)
        return exc.exit_code
    raise exc


if __name__ == "__main__":
    sys.exit(main())
