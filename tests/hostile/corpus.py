"""The hostile corpus: every attack of issue 28 and its variants, each a record of what a new user would type
(the real command line), the hostile inputs it meets (files under `files/`, or a generator in
`generators.py` where a file cannot be committed as is) and what counts as refused or contained.
`harness.py` runs them; `tests/test_hostile_corpus.py` and `benchmarks/security_figures.py` run all.

Where an attack's whole route is too slow for the suite (task code reaches the eval worker only after
training), the entry goes through the check the real route passes first, and says so in `where`."""

from __future__ import annotations

import ipaddress
import os
import urllib.error
import urllib.request
from pathlib import Path

from hostile import generators as make
from hostile.harness import Check, Command, Entry, Sandbox, cli, is_loopback

TASKS = {"eval": {"include": ["$WORK/tasks"], "tasks": []}}
VALIDATE = "`recipe validate`: the eval stage's task-folder check, run before any model loads"
SERVE = ("serve", "served", "--variant", "Q4_1", "--port", "$PORT")
STOP = cli("serve", "--stop", "served", expect="ok")
PATH = os.environ.get("PATH", "/usr/bin:/bin")
KEY = "hostile-key-7c1e0b9f4d2a"
TOKEN = "hostile-token-Qm3xV8pL2sK9wZ4r"


# ---------------------------------------------------------------------------------------------- checks


def listeners(port: int) -> list[str]:
    """Addresses listening on `port`, as the kernel says (/proc/net/tcp, tcp6), not as the server says."""
    found = []
    for name in ("tcp", "tcp6"):
        try:
            lines = Path(f"/proc/net/{name}").read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            fields = line.split()
            address, hex_port = fields[1].split(":")
            if fields[3] != "0A" or int(hex_port, 16) != port:  # 0A: LISTEN
                continue
            raw = bytes.fromhex(address)  # 32-bit words in host (little-endian) order
            found.append(str(ipaddress.ip_address(b"".join(raw[i : i + 4][::-1] for i in range(0, len(raw), 4)))))
    return found


def bound_to_loopback(sandbox: Sandbox) -> str | None:
    port = int(sandbox.values["PORT"])
    found = listeners(port)
    if not found:
        return f"nothing listens on port {port}"
    wide = [address for address in found if not is_loopback(address)]
    return f"port {port} is bound to {', '.join(wide)}" if wide else None


def status(url: str, key: str | None = None) -> int:
    request = urllib.request.Request(url, headers={"Authorization": f"Bearer {key}"} if key else {})
    try:
        with urllib.request.urlopen(request, timeout=10) as response:  # noqa: S310 - loopback only
            return int(response.status)
    except urllib.error.HTTPError as error:
        return int(error.code)
    except OSError as error:
        return -1 if "refused" in str(error) else -2


def key_required(sandbox: Sandbox) -> str | None:
    url = f"http://127.0.0.1:{sandbox.values['PORT']}/v1/models"
    seen = {"no key": status(url), "the environment's key": status(url, "attackers-key"), "ours": status(url, KEY)}
    wrong = {who: code for who, code in seen.items() if code != (200 if who == "ours" else 401)}
    return f"answers {seen} (401, 401, 200 expected)" if wrong else None


def key_not_at_rest(sandbox: Sandbox) -> str | None:
    problems = []
    for path in sorted(sandbox.runs.glob("workbench.db*")):
        if KEY.encode() in path.read_bytes():
            problems.append(f"the API key in plain text in {path.name}")
        if path.stat().st_mode & 0o077:
            problems.append(f"{path.name} is mode {path.stat().st_mode & 0o777:o}")
    if sandbox.runs.stat().st_mode & 0o077:
        problems.append(f"the runs home is mode {sandbox.runs.stat().st_mode & 0o777:o}")
    return "; ".join(problems) or None


def cookie_per_port(sandbox: Sandbox) -> str | None:
    import http.client
    import socket
    import time

    port = int(sandbox.values["PORT"])
    deadline = time.monotonic() + 60
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            break
        except OSError:
            if time.monotonic() > deadline:
                return "the web server did not start"
            time.sleep(0.2)
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    connection.request("GET", f"/?token={TOKEN}")
    cookie = connection.getresponse().getheader("Set-Cookie") or ""
    connection.close()
    name = cookie.split("=", 1)[0]
    return None if str(port) in name else f"the token cookie is named {name!r}: every server on 127.0.0.1 gets it"


def token_warned(sandbox: Sandbox) -> str | None:
    said = "".join(sandbox.log_text(p.name) for p in sorted(sandbox.logs.glob("*")))
    if "command line" in said.lower() or " ps" in said:
        return None
    return "`--token` on the command line (visible to every local user in `ps`) passed without a word"


def untouched(relative: str, content: bytes) -> Check:
    def check(sandbox: Sandbox) -> str | None:
        path = sandbox.other / relative
        if not path.exists():
            return f"{relative} of the user's was deleted"
        return None if path.read_bytes() == content else f"{relative} of the user's was overwritten"

    return Check(f"the user's {relative}", check)


def read_no_more_than_an_empty_file(sandbox: Sandbox) -> str | None:
    """The hostile file's command peaked no higher than the same command on an empty file (the first
    command): the limit was checked before the file was read."""
    control, hostile = sandbox.state["results"][:2]
    if hostile.peak_mb > control.peak_mb + 64:
        return f"peak {hostile.peak_mb:.0f} MiB, {control.peak_mb:.0f} MiB on an empty file: it read the file"
    return None


def script_parses(sandbox: Sandbox) -> str | None:
    """The written script parses (`bash -n`) and, read as shell words (quoted strings one word each,
    comments dropped), runs no command of the attacker's."""
    import shlex
    import subprocess

    for script in sorted(sandbox.runs.glob("slurm/*.sbatch")):
        checked = subprocess.run(["bash", "-n", str(script)], capture_output=True, text=True)
        if checked.returncode:
            return f"{script.name} does not parse: {checked.stderr.strip()[:200]}"
        try:
            words = list(shlex.shlex(script.read_text(), posix=False))
        except ValueError as exc:
            return f"{script.name}: {exc}"
        if "touch" in words:
            return f"{script.name} holds an injected command: {script.read_text()[:600]!r}"
    return None


def limited(name: str, limit: str, refusal: str) -> list[Command | Check]:
    """The data stage on a hostile file over a limit, after the same on an empty file of its format."""

    def data_stage(path: str, **options: object) -> Command:
        return cli(
            "run", "recipe.yaml", "--stages", "data", "--set", f"data.path=$WORK/{path}", "--set", limit, **options
        )

    empty = f"empty{Path(name).suffix}"
    return [
        data_stage(empty, expect="either"),
        data_stage(name, refusal=refusal),
        Check("memory", read_no_more_than_an_empty_file),
    ]


def sbatch(expect: str, timeout: float = 60) -> Command:
    """The written script, run by bash with stand-ins for srun and scontrol (what sbatch would run)."""
    env = {"PATH": f"$WORK/bin:{PATH}", "SLURM_JOB_NODELIST": "node0"}
    return Command(["bash", "$RUNS/slurm/hostile.sbatch"], expect, env=env, timeout=timeout, after_ok=True)


# ---------------------------------------------------------------------------------------------- corpus

ITEMS = {  # the items of the security review (issue 28), as the figures name them
    1: "task files that run or fetch code",
    2: "servers in a hostile environment",
    3: "task files that read the user's files",
    4: "run folders that are links",
    5: "`report --out` a folder of the user's",
    6: "reserved run names",
    7: "modules planted in the working folder",
    8: "sbatch script injection",
    9: "exhausting input, malformed stores",
    10: "escape sequences to the terminal",
    11: "secrets at rest and in `ps`",
}
REPORT_FILES = ["report.md", "report.html", "results.json", "comparison.csv", ".workbench-report"]
FIGURES = ["quality_vs_size.png", "quality_vs_cpu_speed.png", "quality_vs_gpu_speed.png", "served_throughput.png"]

ENTRIES: list[Entry] = [
    # 1. task files that run code or fetch it
    Entry(
        "task-generation-code",
        1,
        "a task's generation_kwargs name a custom_generate folder with trust_remote_code (code in the eval worker)",
        [cli("recipe", "validate", "recipe.yaml", refusal="custom_generate|trust_remote_code|generation_kwargs")],
        files="task-generation-code",
        recipe=TASKS,
        where=VALIDATE,
    ),
    Entry(
        "task-remote-dataset",
        1,
        "a task's dataset is a Hub repository with trust_remote_code and a revision",
        [cli("recipe", "validate", "recipe.yaml", refusal="dataset_path|trust_remote_code|revision")],
        files="task-remote-dataset",
        recipe=TASKS,
        where=VALIDATE,
    ),
    Entry(
        "task-dataset-script",
        1,
        "a task's dataset_path is a folder with a dataset loading script",
        [cli("recipe", "validate", "recipe.yaml", refusal="dataset_path")],
        files="task-dataset-script",
        recipe=TASKS,
        where=VALIDATE,
    ),
    Entry(
        "task-group-member-generation",
        1,
        "a group's member task, written inside the group's list, with custom_generate and trust_remote_code",
        [cli("recipe", "validate", "recipe.yaml", refusal="custom_generate|trust_remote_code|generation_kwargs")],
        files="task-group-member",
        recipe=TASKS,
        where=VALIDATE,
    ),
    # 2. servers started with a hostile environment
    Entry(
        "serve-hostile-environment",
        2,
        "HOST=0.0.0.0, PORT and API_KEY in the environment of `workbench serve`",
        [
            cli(*SERVE, "--api-key", KEY, expect="ok"),
            Check("bound address (the OS's word)", bound_to_loopback),
            Check("a request without our key", key_required),
            STOP,
        ],
        setup=make.finished_run,
        env={"HOST": "0.0.0.0", "PORT": "$PORT", "API_KEY": "attackers-key"},
    ),
    Entry(
        "serve-config-file",
        2,
        "CONFIG_FILE in the environment names a server config that binds 0.0.0.0 and serves another model",
        [cli(*SERVE, expect="either"), Check("bound address (the OS's word)", bound_to_loopback), STOP],
        setup=make.server_config,
        env={"CONFIG_FILE": "$WORK/server.json", "VLLM_HOST_IP": "0.0.0.0"},
    ),
    # 3. task files that read the user's files into world-readable outputs
    Entry(
        "task-data-file-absolute",
        3,
        "a task's data_files is an absolute path to ~/.ssh/id_rsa",
        [cli("recipe", "validate", "recipe.yaml", refusal="data_files|inside|task folder")],
        files="task-data-file-absolute",
        recipe=TASKS,
        where=VALIDATE,
    ),
    Entry(
        "task-data-file-parent",
        3,
        "a task's data_files climbs out of its folder with ../",
        [cli("recipe", "validate", "recipe.yaml", refusal="data_files|inside|task folder")],
        files="task-data-file-parent",
        recipe=TASKS,
        where=VALIDATE,
    ),
    Entry(
        "task-data-file-link",
        3,
        "a task's data file is a link to ~/.ssh/id_rsa",
        [cli("recipe", "validate", "recipe.yaml", refusal="data_files|inside|task folder|link")],
        files="task-data-file-link",
        recipe=TASKS,
        setup=make.link_to_key,
        where=VALIDATE,
    ),
    Entry(
        "task-include-outside",
        3,
        "a task file's include: reaches a file outside the task folder (which names ~/.ssh/id_rsa as data)",
        [cli("recipe", "validate", "recipe.yaml", refusal="include|inside|task folder")],
        files="task-include-outside",
        recipe=TASKS,
        setup=make.base_outside,
        where=VALIDATE,
    ),
    # 4. run folders that are links
    Entry(
        "run-folder-link",
        4,
        "`ln -s ~/victim runs/dist`, then `workbench run ... --run-id dist`",
        [cli("run", "recipe.yaml", "--run-id", "dist", "--stages", "data", refusal="link|outside|resolves")],
        setup=make.run_folder_link,
    ),
    Entry(
        "stage-folder-link",
        4,
        "a run's stage folder is a link to the user's folder",
        [cli("run", "recipe.yaml", "--run-id", "dist", "--stages", "data", refusal="link|outside|inside")],
        setup=make.stage_folder_link,
    ),
    Entry(
        "run-folder-link-report",
        4,
        "a finished run whose folder is then a link to ~/victim, reported (the report is written into the run)",
        [cli("report", "dist", refusal="link|outside|resolves")],
        setup=make.linked_finished_run,
    ),
    # 5. report --out
    Entry(
        "report-out-report-names",
        5,
        "`report --out` a folder of the user's holding only results.json and report.md",
        [
            cli("report", "served", "--out", "$OTHER/mine", refusal="--out|empty|did not write"),
            untouched("mine/results.json", b'{"my": "results"}\n'),
            untouched("mine/report.md", b"# my own report\n"),
        ],
        setup=make.report_named_files,
    ),
    Entry(
        "report-out-stale-figure",
        5,
        "a figure of the user's, under a report figure's name, in an earlier report folder",
        [
            cli("report", "served", "--out", "$OTHER/report", expect="either", refusal="--out|did not write"),
            untouched("report/loss_curve.png", b"\x89PNG my own figure"),
        ],
        setup=make.earlier_report,
        allowed=[f"$OTHER/report/{name}" for name in [*REPORT_FILES, *FIGURES]] + ["$OTHER/report"],
    ),
    Entry(
        "report-out-a-file",
        5,
        "`report --out` a file of the user's",
        [cli("report", "served", "--out", "$HOME/.bashrc", refusal="--out|file|folder")],
        setup=make.finished_run,
    ),
    # 6. names the workbench uses in the runs home
    *[
        Entry(
            f"reserved-name-{name}",
            6,
            f"`--run-id {name}`",
            [cli("run", "recipe.yaml", "--run-id", name, "--stages", "data", refusal="reserved|workbench uses")],
        )
        for name in ("workbench.db-shm", "Workbench.DB", "slurm", "sweeps", "node2")
    ],
    # 7. the folder a command runs in (every entry runs in a folder with a planted json.py and
    # typing_extensions.py; these reach the children that are not the command line itself)
    Entry(
        "planted-module-sbatch-job",
        7,
        "a json.py in the folder `launch --slurm` was run in, imported by the job's `python -m workbench.cli`",
        [cli("launch", "recipe.yaml", "--slurm", "--stages", "data", expect="ok"), sbatch(expect="ok", timeout=180)],
        setup=make.slurm_job,
        where="the generated sbatch script run with stand-ins for srun and scontrol",
    ),
    Entry(
        "planted-module-worker",
        7,
        "a json.py in the folder `workbench chat` is run in, for its model worker",
        [cli("chat", "served", "What is 1 + 1?", "--variant", "Q4_1", "--max-tokens", "1", expect="ok")],
        setup=make.finished_run,
    ),
    # 8. sbatch injection
    Entry(
        "sbatch-partition-newline",
        8,
        "`launch --slurm --partition $'gpu\\ntouch X #'`",
        [
            cli(
                "launch",
                "recipe.yaml",
                "--slurm",
                "--partition",
                "gpu\ntouch $MARKERS/$ENTRY-injected #",
                expect="either",
                refusal="partition",
            ),
            Check("the script", script_parses),
            sbatch(expect="either"),
        ],
        setup=make.slurm_stand_ins,
    ),
    Entry(
        "sbatch-recipe-name-newline",
        8,
        "a recipe file name with a newline, through the script's comment line",
        [
            cli(
                "launch",
                "$WORK/r\ntouch pwned-by-recipe-name #.yaml",
                "--slurm",
                expect="either",
                refusal="recipe|name|newline",
            ),
            Check("the script", script_parses),
            sbatch(expect="either"),
        ],
        setup=make.recipe_name_with_newline,
    ),
    Entry(
        "sbatch-time-account",
        8,
        "`--time` and `--account` values that carry a newline and a command",
        [
            cli(
                "launch",
                "recipe.yaml",
                "--slurm",
                "--time",
                "1:00:00\ntouch $MARKERS/$ENTRY-time #",
                "--account",
                "lab\ntouch $MARKERS/$ENTRY-account #",
                expect="either",
                refusal="time|account",
            ),
            Check("the script", script_parses),
            sbatch(expect="either"),
        ],
        setup=make.slurm_stand_ins,
    ),
    # 9. resource exhaustion and crashes on hostile input
    Entry(
        "data-100mb",
        9,
        "a 100 MB data file with data.max_file_mb at 64",
        limited("big.jsonl", "data.max_file_mb=64", r"(?=.*big\.jsonl)(?=.*max_file_mb)"),
        setup=make.big_jsonl,
    ),
    Entry(
        "data-parquet-bomb",
        9,
        "a Parquet file of a few KB holding 2 M dictionary-encoded rows, data.max_rows at 100000",
        limited("bomb.parquet", "data.max_rows=100000", r"(?=.*bomb\.parquet)(?=.*max_rows)"),
        setup=make.parquet_bomb,
    ),
    Entry(
        "data-deep-json",
        9,
        "a JSON data file nested 100 000 levels",
        [cli("data", "inspect", "$WORK/deep.json", "--model", "$MODEL", refusal=r"deep\.json")],
        setup=make.deep_json,
    ),
    Entry(
        "data-wide-csv",
        9,
        "a CSV data file with a 200 KiB field",
        [cli("data", "inspect", "$WORK/wide.csv", "--model", "$MODEL", expect="either", refusal=r"wide\.csv")],
        setup=make.wide_csv,
    ),
    Entry(
        "recipe-deep-yaml",
        9,
        "a recipe nested 5000 levels",
        [cli("recipe", "validate", "$WORK/deep.yaml", refusal="nest|deep")],
        setup=make.deep_recipe,
    ),
    Entry(
        "task-deep-yaml",
        9,
        "a task file nested 5000 levels",
        [cli("recipe", "validate", "recipe.yaml", refusal="nest|deep")],
        setup=make.deep_task,
        recipe=TASKS,
        where=VALIDATE,
    ),
    Entry(
        "recipe-infinite-numbers",
        9,
        "`--set data.held_out=.inf` (and 1e309, nan)",
        [
            cli("recipe", "validate", "recipe.yaml", "--set", f"data.held_out={value}", refusal="held_out")
            for value in (".inf", "1e309", ".nan")
        ],
    ),
    Entry(
        "store-malformed-json",
        9,
        "a run store whose JSON columns hold malformed JSON, read by show, report, serve and runs",
        [
            cli("show", "served", expect="either"),
            cli("report", "served", expect="either"),
            cli("serve", expect="either"),
            cli("runs", expect="either"),
        ],
        setup=make.malformed_store,
    ),
    # 10. escape sequences on the way to the terminal
    Entry(
        "terminal-recipe-name",
        10,
        "a recipe file name and a stage error holding escape sequences, shown by `workbench show`",
        [cli("show", "served", expect="ok", clean_output=True)],
        setup=make.escapes_in_names,
    ),
    Entry(
        "terminal-run-ids",
        10,
        "run ids, stage names and a server read from the store holding escape sequences",
        [cli("runs", expect="ok", clean_output=True), cli("serve", expect="either", clean_output=True)],
        setup=make.escapes_in_run_ids,
    ),
    # 11. secrets
    Entry(
        "web-token-on-command-line",
        11,
        "`tui --web --token T`: the token in every local user's `ps`, its cookie sent to any 127.0.0.1 server",
        [
            cli("tui", "--web", "--port", "$PORT", "--token", TOKEN, expect="ok", background=True),
            Check("the token cookie", cookie_per_port),
            Check("a warning about the command line", token_warned),
        ],
    ),
    Entry(
        "web-token-file-readable",
        11,
        "`tui --web --token-file F` where F is readable by every local user",
        [cli("tui", "--web", "--port", "$PORT", "--token-file", "$WORK/token", refusal=r"mode 0?6\d\d|0600")],
        setup=make.readable_token_file,
    ),
    Entry(
        "server-key-at-rest",
        11,
        "`serve --api-key K`: the key in the store, the store and runs home readable by others",
        [cli(*SERVE, "--api-key", KEY, expect="ok"), Check("the key at rest", key_not_at_rest), STOP],
        setup=make.finished_run,
    ),
]
