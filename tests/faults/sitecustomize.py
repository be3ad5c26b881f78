"""Loaded at start-up by every Python process that has this folder on PYTHONPATH (tests only): makes
llama.cpp fail inside a child process the way it fails on other machines, e.g. the SIGSEGV of ggml's AMX
kernels on virtualised Xeons (llama.cpp #20824), which the machines running the tests may not have.

WORKBENCH_FAULT is a comma-separated list of WHERE:MATCH:HOW[:JOB] —
  WHERE  decode (llama_decode on a model whose file name contains MATCH), quantize (a quantization whose
         output file name contains MATCH: the worker that would start `llama-quantize` fails that way, or with
         enospc the quantizer writes to /dev/full), write (Python writing a file whose name contains MATCH) or store
         (this process's MATCH-th write to a run store, counting from 1)
  HOW    segv (a real segmentation fault), hang (sleeps an hour), raise (MemoryError), kill (SIGKILL to
         this process, before the write) or enospc (the disk is full: quantize and write go to /dev/full,
         whose every write fails with ENOSPC; a store write and every later one fail as SQLite fails then)
  JOB    only in processes whose command line contains it (a worker's job file: "-check.job", "/eval/")

WORKBENCH_STORE_WRITES=FILE: every process appends one line per run-store write to FILE (its pid, the
write's number and its statement's first words), so a test can count the writes of an uninterrupted run.
"""

from __future__ import annotations

import os
import sys

FAULTS = [
    (spec.split(":") + [""])[:4]
    for spec in os.environ.get("WORKBENCH_FAULT", "").split(",")
    if spec and (spec.split(":") + [""])[3] in " ".join(sys.argv)
]


DISK_FULL = "/dev/full"  # a real file whose every write fails with ENOSPC, as on a full disk


def fail(how: str) -> None:
    import ctypes
    import signal
    import time

    if how == "segv":
        ctypes.string_at(0)
    if how == "hang":
        time.sleep(3600)
    if how == "kill":
        os.kill(os.getpid(), signal.SIGKILL)
    raise MemoryError("simulated out of memory")


def handle(pointer: object) -> int:
    """A llama.cpp pointer as ctypes returns it (an int) or passes it (a c_void_p)."""
    return pointer if isinstance(pointer, int) else getattr(pointer, "value", None) or 0


def install() -> None:
    import llama_cpp
    import llama_cpp.llama_cpp as native

    loaded: dict[int, str] = {}  # model handle -> its file
    load, decode = native.llama_model_load_from_file, native.llama_decode
    contexts: dict[int, str] = {}
    new_context = native.llama_init_from_model

    def load_model(path, params):  # noqa: ANN001, ANN202
        model = load(path, params)
        if model:
            loaded[handle(model)] = path.decode()
        return model

    def init_context(model, params):  # noqa: ANN001, ANN202
        context = new_context(model, params)
        if context:
            contexts[handle(context)] = loaded.get(handle(model), "")
        return context

    def decode_batch(context, batch):  # noqa: ANN001, ANN202
        path = contexts.get(handle(context), "")
        for where, match, how, _ in FAULTS:
            if where == "decode" and match.lower() in os.path.basename(path).lower():
                fail(how)
        return decode(context, batch)

    for module in (native, llama_cpp):
        module.llama_model_load_from_file = load_model
        module.llama_init_from_model = init_context
        module.llama_decode = decode_batch


def install_quantize_faults() -> None:
    """`llama-quantize SRC DST TYPE THREADS` started by this process, for a DST whose name contains MATCH."""
    import subprocess

    start = subprocess.Popen.__init__

    def start_program(self, args, *more, **options):  # noqa: ANN001, ANN002, ANN003, ANN202
        if isinstance(args, list) and args and os.path.basename(str(args[0])) == "llama-quantize":
            destination = os.path.basename(str(args[-3])).lower()
            for where, match, how, _ in FAULTS:
                if where == "quantize" and match.lower() in destination:
                    if how != "enospc":
                        fail(how)
                    args = [*args[:-3], DISK_FULL, *args[-2:]]
        start(self, args, *more, **options)

    subprocess.Popen.__init__ = start_program


STORE_WRITES = ("INSERT", "UPDATE", "DELETE", "REPLACE", "CREATE", "ALTER", "DROP", "COMMIT")


def is_store_write(sql: str) -> bool:
    words = sql.split()
    first = words[0].upper() if words else ""
    return first in STORE_WRITES or (first == "PRAGMA" and "user_version=" in sql.replace(" ", ""))


def install_store_faults() -> None:
    """Count this process's writes to run stores (files named workbench.db) and act at the chosen one."""
    import sqlite3

    connect, tally = sqlite3.connect, os.environ.get("WORKBENCH_STORE_WRITES")
    writes = 0

    def before(sql: str) -> None:
        nonlocal writes
        if not is_store_write(sql):
            return
        writes += 1
        if tally:
            with open(tally, "a", encoding="utf-8") as out:
                out.write(f"{os.getpid()} {writes} {' '.join(sql.split()[:3])}\n")
        for where, match, how, _ in FAULTS:
            if where == "store" and how == "kill" and writes == int(match):
                fail(how)
            if where == "store" and how == "enospc" and writes >= int(match):
                full = sqlite3.OperationalError("database or disk is full")
                full.sqlite_errorcode, full.sqlite_errorname = sqlite3.SQLITE_FULL, "SQLITE_FULL"
                raise full

    class Counted(sqlite3.Connection):
        def execute(self, sql, *args):  # noqa: ANN001, ANN002, ANN202
            before(sql)
            return super().execute(sql, *args)

        def executemany(self, sql, *args):  # noqa: ANN001, ANN002, ANN202
            before(sql)
            return super().executemany(sql, *args)

    def counted(base: type[sqlite3.Connection]) -> type[sqlite3.Connection]:
        """`base` (the store's own connection class) over Counted: the check runs where SQLite would fail,
        under whatever `base` does with SQLite's errors."""
        return Counted if base is sqlite3.Connection else type("CountedStore", (base, Counted), {})

    def connect_store(database, *args, **kwargs):  # noqa: ANN001, ANN002, ANN003, ANN202
        if os.path.basename(str(database)) == "workbench.db":
            kwargs["factory"] = counted(kwargs.get("factory", sqlite3.Connection))
        return connect(database, *args, **kwargs)

    sqlite3.connect = connect_store


def install_write_faults() -> None:
    """Files whose name contains MATCH, opened by Python for writing, go to /dev/full instead."""
    import builtins
    import io

    python_open = builtins.open

    def open_file(file, mode="r", *args, **kwargs):  # noqa: ANN001, ANN002, ANN003, ANN202
        if isinstance(file, (str, bytes, os.PathLike)) and any(c in mode for c in "wax+"):
            name = os.path.basename(os.fsdecode(file)).lower()
            if any(w == "write" and h == "enospc" and m.lower() in name for w, m, h, _ in FAULTS):
                file, mode = DISK_FULL, mode.replace("x", "w")
        return python_open(file, mode, *args, **kwargs)

    builtins.open = io.open = open_file


if any(where == "decode" for where, *_ in FAULTS):
    install()
if any(where == "quantize" for where, *_ in FAULTS):
    install_quantize_faults()
if any(where == "store" for where, *_ in FAULTS) or os.environ.get("WORKBENCH_STORE_WRITES"):
    install_store_faults()
if any(where == "write" for where, *_ in FAULTS):
    install_write_faults()
