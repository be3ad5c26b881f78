"""Hostile inputs that cannot be committed as files: big and bomb-shaped data, names with newlines and
escape sequences, links into the user's HOME, run stores with hostile rows, stand-ins for SLURM's tools."""

from __future__ import annotations

import json
import os
import sqlite3
import stat
import subprocess
import time
from pathlib import Path

from hostile.harness import Sandbox

ESCAPES = "\x1b]52;c;ZXZpbA==\x07\x1b[2J\x1b]0;owned\x07\x9b31m"  # clipboard write, clear screen, title, C1 CSI


def big_jsonl(sandbox: Sandbox, megabytes: int = 100) -> None:
    row = json.dumps({"question": "What is 12 + 34? " + "x" * 200, "answer": "46"}) + "\n"
    chunk = row * (1024 * 1024 // len(row))
    with open(sandbox.work / "big.jsonl", "w") as handle:
        for _ in range(megabytes):
            handle.write(chunk)
    (sandbox.work / "empty.jsonl").write_text("")


def parquet_bomb(sandbox: Sandbox, rows: int = 2_000_000) -> None:
    """A few KB on disk that expand to 2 M rows (one dictionary-encoded value each)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    question = pa.DictionaryArray.from_arrays(pa.array([0] * rows, pa.int32()), pa.array(["What is 1 + 1?"]))
    answer = pa.DictionaryArray.from_arrays(pa.array([0] * rows, pa.int32()), pa.array(["2"]))
    pq.write_table(
        pa.table({"question": question, "answer": answer}), sandbox.work / "bomb.parquet", compression="zstd"
    )
    pq.write_table(
        pa.table({"question": pa.array([], pa.string()), "answer": pa.array([], pa.string())}),
        sandbox.work / "empty.parquet",
    )


def deep_json(sandbox: Sandbox, depth: int = 100_000) -> None:
    (sandbox.work / "deep.json").write_text('[{"messages": ' + "[" * depth + "]" * depth + "}]")


def wide_csv(sandbox: Sandbox, kib: int = 200) -> None:
    (sandbox.work / "wide.csv").write_text(f'question,answer\n"{"x" * kib * 1024}",1\n')


def deep_yaml(depth: int = 5000) -> str:
    return "[" * depth + "]" * depth


def deep_recipe(sandbox: Sandbox) -> None:
    (sandbox.work / "deep.yaml").write_text(f"name: deep\nbase_model: {deep_yaml()}\ndata: {{path: qa.json}}\n")


def deep_task(sandbox: Sandbox) -> None:
    (sandbox.work / "tasks").mkdir(exist_ok=True)
    (sandbox.work / "tasks" / "deep.yaml").write_text(f"task: deep\nmetadata: {deep_yaml()}\n")


def link_to_key(sandbox: Sandbox) -> None:
    """A data file inside the task folder that is a link to the user's private key."""
    (sandbox.work / "tasks" / "d.jsonl").symlink_to(sandbox.home / ".ssh" / "id_rsa")


def run_folder_link(sandbox: Sandbox) -> None:
    """`ln -s ~/victim runs/dist`."""
    sandbox.runs.mkdir(parents=True, exist_ok=True)
    (sandbox.runs / "dist").symlink_to(sandbox.home / "victim")


def stage_folder_link(sandbox: Sandbox) -> None:
    """A run folder of its own whose `data` stage folder is a link to the user's folder."""
    (sandbox.runs / "dist").mkdir(parents=True)
    (sandbox.runs / "dist" / "data").symlink_to(sandbox.home / "victim" / "data")


def finished_run(sandbox: Sandbox, run_id: str = "served", recipe_path: str | None = None) -> None:
    """A finished run with a merged model and a GGUF variant (a real GGUF: servers and chat load it)."""
    from workbench.core.records import Variant
    from workbench.core.store import Store

    store = Store(sandbox.runs / "workbench.db")
    try:
        recipe = {"name": run_id, "base_model": sandbox.values["MODEL"], "data": {"path": "qa.json"}}
        store.upsert_run(run_id, run_id, recipe, recipe_path or str(sandbox.work / "recipe.yaml"), os.getpid())
        merged = Variant(f"{run_id}-merged", "hf", sandbox.values["MODEL"], 32.0, meta={"reference": True})
        gguf = Path(sandbox.values["GGUF"])
        quantized = Variant(f"{run_id}-Q4_1.gguf", "gguf", str(gguf), 4.5, parent=merged.name, size=gguf.stat().st_size)
        store.replace_variants(run_id, ["hf", "gguf"], [merged, quantized])
        for stage in ("data", "train", "merge", "export"):
            store.start_stage(run_id, stage, "k")
            store.finish_stage(run_id, stage, "done")
        store.set_run_status(run_id, "done")
    finally:
        store.close()
    (sandbox.runs / run_id / "data").mkdir(parents=True, exist_ok=True)
    rows = [{"messages": [{"role": "user", "content": "What is 1 + 1?"}, {"role": "assistant", "content": "2"}]}]
    (sandbox.runs / run_id / "data" / "held_out.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))


def raw(sandbox: Sandbox, *statements: tuple[str, tuple[object, ...]]) -> None:
    """Rows written into the store behind the workbench's back (the store file is an input too)."""
    db = sqlite3.connect(sandbox.runs / "workbench.db")
    try:
        for sql, values in statements:
            db.execute(sql, values)
        db.commit()
    finally:
        db.close()


def malformed_store(sandbox: Sandbox) -> None:
    finished_run(sandbox)
    now = time.time()
    raw(
        sandbox,
        ("UPDATE variants SET data=? WHERE run_id='served' AND format='gguf'", ('{"name": "served-Q4_1.gguf", ',)),
        ("INSERT INTO artifacts VALUES ('served', 'data', 'split', 'file', '/x', 1, 'not json')", ()),
        (
            "INSERT INTO events (run_id, stage, ts, kind, data) VALUES ('served', 'train', ?, 'train_log', '[1,')",
            (now,),
        ),
        ("INSERT INTO servers VALUES ('served-1', 'served', 'served-Q4_1.gguf', 'running', '{\"id\": 1')", ()),
        ("INSERT INTO bench VALUES ('served', 'served-Q4_1.gguf', 'cpu', 'llama.cpp', 'done', 'NaN]')", ()),
    )


def escapes_in_names(sandbox: Sandbox) -> None:
    """A recipe whose file name holds escape sequences, run; a stage error that holds them too."""
    recipe = sandbox.work / f"recipe{ESCAPES}.yaml"
    recipe.write_text((sandbox.work / "recipe.yaml").read_text())
    finished_run(sandbox, recipe_path=str(recipe))
    raw(sandbox, ("UPDATE stages SET status='failed', error=? WHERE name='export'", (f"died {ESCAPES}",)))


def escapes_in_run_ids(sandbox: Sandbox) -> None:
    """Run ids and a server read from the store with escape sequences in them."""
    finished_run(sandbox)
    now = time.time()
    evil = f"evil{ESCAPES}"
    server = {
        "id": evil, "run_id": evil, "variant": evil, "backend": "llama.cpp", "host": "127.0.0.1", "port": 1,
        "model": evil, "pid": 0, "pid_started": None, "started": now, "log": evil, "status": "stopped",
    }  # fmt: skip
    raw(
        sandbox,
        ("INSERT INTO runs (id, name, recipe_path, recipe, status, created, updated, pid) VALUES (?, ?, ?, '{}', "
         "'failed', ?, ?, 0)", (evil, evil, evil, now, now)),
        ("INSERT INTO stages VALUES (?, ?, 'failed', 'k', ?, ?, ?)", (evil, f"data{ESCAPES}", now, now, evil)),
        ("INSERT INTO servers VALUES (?, ?, ?, 'stopped', ?)", (evil, evil, evil, json.dumps(server))),
    )  # fmt: skip


def report_named_files(sandbox: Sandbox) -> None:
    """The user's own results.json and report.md in a folder with no report mark."""
    finished_run(sandbox)
    mine = sandbox.other / "mine"
    mine.mkdir(parents=True)
    (mine / "results.json").write_text('{"my": "results"}\n')
    (mine / "report.md").write_text("# my own report\n")


def earlier_report(sandbox: Sandbox) -> None:
    """A report folder the workbench wrote, then a figure of the user's put in it under a report name."""
    finished_run(sandbox)
    command = ["-P", "-m", "workbench.cli", "--home", str(sandbox.runs), "report", "served"]
    folder = sandbox.other / "report"
    subprocess.run(
        [sandbox.values["PYTHON"], *command, "--out", str(folder)],
        cwd=sandbox.root, env=sandbox.environment({}), capture_output=True, check=True, timeout=120,
    )  # fmt: skip
    (folder / "loss_curve.png").write_bytes(b"\x89PNG my own figure")


STAND_IN_SRUN = """#!/bin/bash
# stand-in for SLURM's srun: the job's one task, as node 0, on this machine
export SLURM_NODEID=0
while [[ "$1" == --* ]]; do shift; done
exec "$@"
"""
NOOP_SRUN = "#!/bin/bash\n# stand-in for SLURM's srun that starts nothing: only the script's own lines run\nexit 0\n"


def slurm_stand_ins(sandbox: Sandbox, srun: str = NOOP_SRUN) -> None:
    folder = sandbox.work / "bin"
    folder.mkdir()
    for name, text in (("srun", srun), ("scontrol", "#!/bin/bash\necho 127.0.0.1\n")):
        (folder / name).write_text(text)
        (folder / name).chmod(stat.S_IRWXU)


def slurm_job(sandbox: Sandbox) -> None:
    slurm_stand_ins(sandbox, STAND_IN_SRUN)


def recipe_name_with_newline(sandbox: Sandbox) -> None:
    slurm_stand_ins(sandbox)
    named = sandbox.work / "r\ntouch pwned-by-recipe-name #.yaml"
    named.write_text((sandbox.work / "recipe.yaml").read_text())


def server_config(sandbox: Sandbox) -> None:
    """A CONFIG_FILE for llama-cpp-python's server that binds every interface and serves another model."""
    finished_run(sandbox)
    config = {
        "host": "0.0.0.0",
        "port": int(sandbox.values["PORT"]),
        "models": [{"model": sandbox.values["GGUF"], "model_alias": "attackers-model"}],
    }
    (sandbox.work / "server.json").write_text(json.dumps(config))


def base_outside(sandbox: Sandbox) -> None:
    """A task file of the attacker's choosing in the user's HOME, for an `include:` to reach."""
    (sandbox.home / "base.yaml").write_text("dataset_path: json\ndataset_kwargs: {data_files: {test: .ssh/id_rsa}}\n")


def linked_finished_run(sandbox: Sandbox) -> None:
    """A finished run `dist` in the store whose folder is then a link to ~/victim."""
    finished_run(sandbox, "dist")
    import shutil

    shutil.rmtree(sandbox.runs / "dist")
    (sandbox.runs / "dist").symlink_to(sandbox.home / "victim")


def readable_token_file(sandbox: Sandbox) -> None:
    token = sandbox.work / "token"
    token.write_text("hostile-token-Qm3xV8pL2sK9wZ4r\n")
    token.chmod(0o644)
