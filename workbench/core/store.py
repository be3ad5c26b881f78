"""The run store: one SQLite file with runs, stages, events, artifacts, variants, metrics and bench results.

Every process (CLI, trainer callbacks, the TUI) opens its own connection; WAL mode lets readers tail a
run while a worker writes to it. The file carries its schema version (`PRAGMA user_version`); older
stores are migrated forward when opened, newer ones refused.

A run's status says what its worker last wrote. Readers see it through `live_status`: a run marked
running whose worker process is gone (or whose pid now belongs to another process) is `crashed`, and so
is the stage it was in.
"""

from __future__ import annotations

import contextlib
import json
import os
import sqlite3
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, fields, replace
from pathlib import Path
from typing import Any

import psutil

from workbench.core import paths
from workbench.core.common import STAGE_ORDER, make_home, tail, type_adapter
from workbench.core.errors import ResourceError
from workbench.core.records import (
    Artifact,
    BenchResult,
    ItemScores,
    Metric,
    RunRecord,
    Server,
    StageRecord,
    TrainLog,
    Variant,
)

# version 1: the tables below (stores made before versioning read as 0 and are version 1)
BASELINE = """
CREATE TABLE IF NOT EXISTS runs (
    id TEXT PRIMARY KEY,
    name TEXT NOT NULL,
    recipe_path TEXT,
    recipe TEXT NOT NULL,
    status TEXT NOT NULL,
    created REAL NOT NULL,
    updated REAL NOT NULL,
    pid INTEGER
);
CREATE TABLE IF NOT EXISTS stages (
    run_id TEXT NOT NULL REFERENCES runs(id),
    name TEXT NOT NULL,
    status TEXT NOT NULL,
    cache_key TEXT,
    started REAL,
    finished REAL,
    error TEXT,
    PRIMARY KEY (run_id, name)
);
CREATE TABLE IF NOT EXISTS events (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    run_id TEXT NOT NULL,
    stage TEXT NOT NULL,
    ts REAL NOT NULL,
    kind TEXT NOT NULL,
    data TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS events_by_run ON events(run_id, stage, id);
CREATE TABLE IF NOT EXISTS artifacts (
    run_id TEXT NOT NULL,
    stage TEXT NOT NULL,
    name TEXT NOT NULL,
    kind TEXT NOT NULL,
    path TEXT NOT NULL,
    size INTEGER NOT NULL,
    meta TEXT NOT NULL,
    PRIMARY KEY (run_id, name)
);
CREATE TABLE IF NOT EXISTS variants (
    run_id TEXT NOT NULL,
    name TEXT NOT NULL,
    format TEXT NOT NULL,
    status TEXT NOT NULL,
    data TEXT NOT NULL,
    PRIMARY KEY (run_id, name)
);
CREATE TABLE IF NOT EXISTS metrics (
    run_id TEXT NOT NULL,
    model TEXT NOT NULL,
    role TEXT NOT NULL,
    task TEXT NOT NULL,
    metric TEXT NOT NULL,
    value REAL,
    stderr REAL,
    PRIMARY KEY (run_id, model, task, metric)
);
CREATE TABLE IF NOT EXISTS bench (
    run_id TEXT NOT NULL,
    variant TEXT NOT NULL,
    device TEXT NOT NULL,
    backend TEXT NOT NULL,
    status TEXT NOT NULL,
    data TEXT NOT NULL,
    PRIMARY KEY (run_id, variant, device, backend)
);
"""
# version -> steps (SQL, or a function of the store and its connection) that bring a store of the version
# before it up to it
MIGRATIONS: dict[int, list[str | Callable[[Store, sqlite3.Connection], None]]] = {
    2: ["ALTER TABLE runs ADD COLUMN pid_started REAL"],  # the worker's start time: a reused pid is not it
    3: [
        """CREATE TABLE IF NOT EXISTS servers (
            id TEXT PRIMARY KEY,
            run_id TEXT NOT NULL,
            variant TEXT NOT NULL,
            status TEXT NOT NULL,
            data TEXT NOT NULL
        )"""
    ],
    4: [
        "ALTER TABLE metrics ADD COLUMN higher_is_better INTEGER",
        """CREATE TABLE IF NOT EXISTS items (
            run_id TEXT NOT NULL,
            model TEXT NOT NULL,
            task TEXT NOT NULL,
            metric TEXT NOT NULL,
            item INTEGER NOT NULL,
            value REAL NOT NULL,
            PRIMARY KEY (run_id, model, task, metric, item)
        )""",
    ],
    5: [lambda store, db: store.keys_out(db)],  # server API keys leave the store for files of their own
}
SCHEMA_VERSION = max(MIGRATIONS)
KEYS_OUT = 5  # the first version without API keys in it


class StoreError(ResourceError):
    pass


def _record_error(path: Path, table: str, where: str, column: str, problem: str) -> StoreError:
    return StoreError(
        f"{path}: table {table}, {where}, column {column}: {problem}; the store was changed outside the"
        " workbench (delete that row, or the run)"
    )


def decode(path: Path, table: str, where: str, column: str, text: Any, kind: type | None = None) -> Any:
    """A JSON column's value: a JSON object, or a `kind` record made from one (its fields' types checked,
    unknown keys left out). The one way the store reads JSON: a value that does not parse or has the wrong
    shape is a StoreError naming the table, the row (`where`) and the column."""
    try:
        data = json.loads(text)
    except (TypeError, ValueError, RecursionError) as exc:
        reason = f" ({exc})" if isinstance(exc, ValueError) else ""
        raise _record_error(path, table, where, column, f"not valid JSON{reason}") from None
    if not isinstance(data, dict):
        raise _record_error(path, table, where, column, f"expected a JSON object, got {type(data).__name__}")
    return data if kind is None else _validated(path, table, where, column, data, kind)


def _validated(path: Path, table: str, where: str, column: str, data: dict[str, Any], kind: type) -> Any:
    """A `kind` record made from a JSON column's object; its fields' types checked (`decode`)."""
    from pydantic import ValidationError

    try:
        return type_adapter(kind).validate_python(data)
    except ValidationError as exc:
        first = exc.errors()[0]
        field = ".".join(str(part) for part in first["loc"]) or "(value)"
        raise _record_error(path, table, where, column, f"{field}: {first['msg'].lower()}") from None
    except RecursionError:
        raise _record_error(path, table, where, column, "nested too deep") from None


class _Connection(sqlite3.Connection):
    """A store connection that names a full disk: SQLite says "database or disk is full" (SQLITE_FULL) and
    nothing more, which reached the user as a traceback."""

    def __init__(self, database: str | Path, *args: Any, **kwargs: Any):
        super().__init__(database, *args, **kwargs)
        self.store_path = Path(database)

    def execute(self, sql: str, parameters: Any = (), /) -> sqlite3.Cursor:
        with self._disk_full_named():
            return super().execute(sql, parameters)

    def executemany(self, sql: str, parameters: Any, /) -> sqlite3.Cursor:
        with self._disk_full_named():
            return super().executemany(sql, parameters)

    @contextmanager
    def _disk_full_named(self) -> Iterator[None]:
        try:
            yield
        except sqlite3.OperationalError as exc:
            if exc.sqlite_errorcode != sqlite3.SQLITE_FULL:
                raise
            raise StoreError(
                f"cannot write the run store {self.store_path}: no space left on device (SQLite: {exc}); free "
                "space on that disk, then run again: finished stages are kept, the stage that stopped is redone"
            ) from exc


def process_started(pid: int) -> float | None:
    """When a process started, as an identity for it: on Linux its start in clock ticks since boot (a
    wall-clock step does not move it), elsewhere psutil's create time. None when there is no such process."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
        return float(stat.rsplit(")", 1)[1].split()[19])  # field 22, starttime; the name may hold spaces
    except (OSError, IndexError, ValueError):
        pass
    try:
        return psutil.Process(pid).create_time()
    except psutil.Error:
        return None


def is_alive(pid: int | None, started: float | None) -> bool:
    """Whether the process that had `pid` and started at `started` still runs (not another one that got
    its pid later). Without a start time (a store from before version 2) the pid alone decides."""
    if not pid:
        return False
    try:
        if psutil.Process(pid).status() == psutil.STATUS_ZOMBIE:
            return False
    except psutil.Error:
        return False
    return started is None or process_started(pid) == started


def write_key(path: Path, key: str) -> None:
    """`key` alone in `path`, readable and writable by its owner only (a link in its place is refused)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, 0o600)
    with open(fd, "w", encoding="utf-8") as out:
        os.fchmod(fd, 0o600)  # a file that was there before keeps its mode through O_CREAT
        out.write(key)


class Store:
    def __init__(self, path: Path):
        self.path = Path(path)
        make_home(self.path.parent)
        # created for its owner only; SQLite gives its -wal and -shm files the database's mode
        os.close(os.open(self.path, os.O_RDONLY | os.O_CREAT, 0o600))
        self.db = sqlite3.connect(self.path, timeout=30, isolation_level=None, factory=_Connection)
        self.db.row_factory = sqlite3.Row
        self.db.execute("PRAGMA journal_mode=WAL")
        self.db.execute("PRAGMA busy_timeout=30000")
        self._migrate()

    def _migrate(self) -> None:
        if self.version() == SCHEMA_VERSION:
            return
        with self.transaction() as db:  # one process migrates; the others wait and find it done
            version = self.version()
            if version > SCHEMA_VERSION:
                raise StoreError(
                    f"{self.path} was written by a newer workbench (store version {version}; this one reads up to "
                    f"{SCHEMA_VERSION}): upgrade the workbench, or give another --home"
                )
            for statement in [part for part in BASELINE.split(";") if part.strip()] if version == 0 else []:
                db.execute(statement)
            for target in range(max(version, 1) + 1, SCHEMA_VERSION + 1):
                for step in MIGRATIONS[target]:
                    if isinstance(step, str):
                        db.execute(step)
                    else:
                        step(self, db)
            db.execute(f"PRAGMA user_version={SCHEMA_VERSION}")
        if 0 < version < KEYS_OUT:
            self.seal()

    def keys_out(self, db: sqlite3.Connection) -> None:
        """Version 5: each running server's API key moves from its row to its key file; a stopped server's
        key is dropped (it opens nothing any more)."""
        db.execute("PRAGMA secure_delete=ON")  # the old rows' bytes are overwritten, not left as free space
        for row in db.execute("SELECT id, data FROM servers").fetchall():
            try:
                data = json.loads(row["data"])
                key, run_id = data.get("api_key"), data["run_id"]
            except (ValueError, KeyError, TypeError, AttributeError):
                continue
            if not key:
                continue
            if data.get("status") == "running":
                with contextlib.suppress(paths.BadName, paths.OutsideError, OSError):
                    write_key(paths.inside(self.key_path(run_id, row["id"]), self.path.parent), key)
            db.execute("UPDATE servers SET data=? WHERE id=?", (json.dumps({**data, "api_key": None}), row["id"]))

    def seal(self) -> None:
        """After the keys left an older store: the write-ahead log that still held them emptied, and the store
        and its side files, when this user owns them, closed to other users (they were created with the
        umask's mode, usually world-readable); a group that shares them keeps its access."""
        self.db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        for file in (self.path, *(self.path.with_name(self.path.name + end) for end in ("-wal", "-shm"))):
            with contextlib.suppress(OSError):
                status = file.stat()
                if status.st_uid == os.geteuid():
                    file.chmod(status.st_mode & 0o770)

    def version(self) -> int:
        return self.db.execute("PRAGMA user_version").fetchone()[0]

    def close(self) -> None:
        self.db.close()

    @contextmanager
    def transaction(self) -> Iterator[sqlite3.Connection]:
        self.db.execute("BEGIN IMMEDIATE")
        try:
            yield self.db
        except BaseException:
            self.db.execute("ROLLBACK")
            raise
        self.db.execute("COMMIT")

    # runs -----------------------------------------------------------------------------------
    def upsert_run(self, run_id: str, name: str, recipe: dict[str, Any], recipe_path: str | None, pid: int) -> None:
        """Mark the run running in process `pid` (its start time is recorded with it)."""
        now = time.time()
        self.db.execute(
            """INSERT INTO runs (id, name, recipe_path, recipe, status, created, updated, pid, pid_started)
               VALUES (?, ?, ?, ?, 'running', ?, ?, ?, ?)
               ON CONFLICT(id) DO UPDATE SET recipe=excluded.recipe, recipe_path=excluded.recipe_path,
                   status='running', updated=excluded.updated, pid=excluded.pid, pid_started=excluded.pid_started""",
            (run_id, name, recipe_path, json.dumps(recipe), now, now, pid, process_started(pid)),
        )

    def set_run_status(self, run_id: str, status: str) -> None:
        self.db.execute("UPDATE runs SET status=?, updated=? WHERE id=?", (status, time.time(), run_id))

    @staticmethod
    def live_status(run: RunRecord) -> str:
        """A run's status, with 'running' corrected to 'crashed' when its worker process is gone (or its pid
        now belongs to another process)."""
        if run.status != "running":
            return run.status
        return "running" if is_alive(run.pid, run.pid_started) else "crashed"

    def worker_log(self, run_id: str) -> Path:
        """The run worker's own output (stage messages, worker output, a native crash's traceback)."""
        return self.path.parent / run_id / "worker.log"

    def log_tail(self, run_id: str, lines: int = 10) -> list[str]:
        return [line for line in tail(self.worker_log(run_id), 4 * lines) if line.strip()][-lines:]

    def runs(self) -> list[RunRecord]:
        return [_run(row) for row in self.db.execute("SELECT * FROM runs ORDER BY created DESC").fetchall()]

    def run(self, run_id: str) -> RunRecord | None:
        row = self.db.execute("SELECT * FROM runs WHERE id=?", (run_id,)).fetchone()
        return _run(row) if row else None

    # stages ---------------------------------------------------------------------------------
    def stage(self, run_id: str, name: str) -> StageRecord | None:
        row = self.db.execute("SELECT * FROM stages WHERE run_id=? AND name=?", (run_id, name)).fetchone()
        return StageRecord(**{k: row[k] for k in StageRecord.__dataclass_fields__}) if row else None

    def stages(self, run_id: str) -> list[StageRecord]:
        """In pipeline order (a stage redone later still shows in its place). A stage left running by a
        worker that is gone reads `crashed`."""
        rows = self.db.execute("SELECT * FROM stages WHERE run_id=? ORDER BY started", (run_id,)).fetchall()
        records = [StageRecord(**{k: r[k] for k in StageRecord.__dataclass_fields__}) for r in rows]
        run = self.run(run_id)
        if run is not None and any(r.status == "running" for r in records) and self.live_status(run) != "running":
            gone = f"its worker (pid {run.pid}) ended without finishing it; the next run redoes it"
            records = [replace(r, status="crashed", error=gone) if r.status == "running" else r for r in records]
        order = {name: index for index, name in enumerate(STAGE_ORDER)}
        return sorted(records, key=lambda record: order.get(record.name, len(order)))

    def start_stage(self, run_id: str, name: str, cache_key: str) -> None:
        self.db.execute(
            """INSERT INTO stages (run_id, name, status, cache_key, started, finished, error)
               VALUES (?, ?, 'running', ?, ?, NULL, NULL)
               ON CONFLICT(run_id, name) DO UPDATE SET status='running', cache_key=excluded.cache_key,
                   started=excluded.started, finished=NULL, error=NULL""",
            (run_id, name, cache_key, time.time()),
        )

    def finish_stage(self, run_id: str, name: str, status: str, error: str | None = None) -> None:
        self.db.execute(
            "UPDATE stages SET status=?, finished=?, error=? WHERE run_id=? AND name=?",
            (status, time.time(), error, run_id, name),
        )

    # events ---------------------------------------------------------------------------------
    def add_event(self, run_id: str, stage: str, kind: str, data: dict[str, Any]) -> None:
        self.db.execute(
            "INSERT INTO events (run_id, stage, ts, kind, data) VALUES (?, ?, ?, ?, ?)",
            (run_id, stage, time.time(), kind, json.dumps(data)),
        )

    def events(
        self, run_id: str, stage: str | None = None, kind: str | None = None, after: int = 0
    ) -> list[dict[str, Any]]:
        query = "SELECT * FROM events WHERE run_id=? AND id>?"
        params: list[Any] = [run_id, after]
        if stage:
            query += " AND stage=?"
            params.append(stage)
        if kind:
            query += " AND kind=?"
            params.append(kind)
        return [self._event(row) for row in self.db.execute(query + " ORDER BY id", params).fetchall()]

    def last_event(self, run_id: str, stage: str, kind: str) -> dict[str, Any] | None:
        """The newest event of a kind (e.g. the last training log), without reading the others."""
        query = "SELECT * FROM events WHERE run_id=? AND stage=? AND kind=? ORDER BY id DESC LIMIT 1"
        row = self.db.execute(query, (run_id, stage, kind)).fetchone()
        return self._event(row) if row else None

    def train_logs(self, run_id: str, stage: str | None = None, after: int = 0) -> list[TrainLog]:
        """The training logs (of one stage, or of every training stage) after event id `after`, oldest first."""
        query = "SELECT * FROM events WHERE run_id=? AND id>? AND kind='train_log'"
        params: list[Any] = [run_id, after]
        if stage:
            query += " AND stage=?"
            params.append(stage)
        return [self._train_log(row) for row in self.db.execute(query + " ORDER BY id", params).fetchall()]

    def last_train_log(self, run_id: str, stage: str) -> TrainLog | None:
        """A stage's newest training log, without reading the others."""
        query = "SELECT * FROM events WHERE run_id=? AND stage=? AND kind='train_log' ORDER BY id DESC LIMIT 1"
        row = self.db.execute(query, (run_id, stage)).fetchone()
        return self._train_log(row) if row else None

    # artifacts ------------------------------------------------------------------------------
    def replace_artifacts(self, run_id: str, stage: str, artifacts: list[Artifact]) -> None:
        with self.transaction() as db:
            db.execute("DELETE FROM artifacts WHERE run_id=? AND stage=?", (run_id, stage))
            for item in artifacts:
                db.execute(
                    "INSERT OR REPLACE INTO artifacts (run_id, stage, name, kind, path, size, meta)"
                    " VALUES (?, ?, ?, ?, ?, ?, ?)",
                    (run_id, stage, item.name, item.kind, item.path, item.size, json.dumps(item.meta)),
                )

    def artifacts(self, run_id: str) -> list[Artifact]:
        rows = self.db.execute("SELECT * FROM artifacts WHERE run_id=? ORDER BY rowid", (run_id,)).fetchall()
        return [self._artifact(r) for r in rows]

    def _artifact(self, row: sqlite3.Row) -> Artifact:
        meta = self._decode(row, "artifacts", f"artifact {row['name']!r}", "meta")
        return Artifact(row["name"], row["kind"], row["path"], row["size"], meta, row["stage"])

    # variants -------------------------------------------------------------------------------
    def replace_variants(self, run_id: str, formats: list[str], variants: list[Variant]) -> None:
        """Replace the run's variants of the given formats (one exporter's output) in one transaction."""
        with self.transaction() as db:
            marks = ",".join("?" * len(formats))
            db.execute(f"DELETE FROM variants WHERE run_id=? AND format IN ({marks})", (run_id, *formats))
            for item in variants:
                db.execute(
                    "INSERT OR REPLACE INTO variants (run_id, name, format, status, data) VALUES (?, ?, ?, ?, ?)",
                    (run_id, item.name, item.format, item.status, json.dumps(item.to_dict())),
                )

    def variants(self, run_id: str) -> list[Variant]:
        rows = self.db.execute("SELECT * FROM variants WHERE run_id=? ORDER BY rowid", (run_id,)).fetchall()
        return [self._decode(r, "variants", f"variant {r['name']!r}", "data", Variant) for r in rows]

    # metrics --------------------------------------------------------------------------------
    def replace_metrics(self, run_id: str, rows: list[Metric], items: list[ItemScores] | None = None) -> None:
        """Replace the run's evaluation results (and their per-item values) in one transaction."""
        with self.transaction() as db:
            db.execute("DELETE FROM metrics WHERE run_id=?", (run_id,))
            db.execute("DELETE FROM items WHERE run_id=?", (run_id,))
            db.executemany(
                "INSERT OR REPLACE INTO metrics (run_id, model, role, task, metric, value, stderr, higher_is_better)"
                " VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                [(run_id, m.model, m.role, m.task, m.metric, m.value, m.stderr, m.higher_is_better) for m in rows],
            )
            db.executemany(
                "INSERT OR REPLACE INTO items (run_id, model, task, metric, item, value) VALUES (?, ?, ?, ?, ?, ?)",
                [
                    (run_id, scores.model, scores.task, scores.metric, item, value)
                    for scores in items or []
                    for item, value in scores.values.items()
                ],
            )

    def metrics(self, run_id: str) -> list[Metric]:
        rows = self.db.execute("SELECT * FROM metrics WHERE run_id=? ORDER BY rowid", (run_id,)).fetchall()
        return [
            Metric(
                r["model"],
                r["role"],
                r["task"],
                r["metric"],
                r["value"],
                r["stderr"],
                None if r["higher_is_better"] is None else bool(r["higher_is_better"]),
            )
            for r in rows
        ]

    def items(self, run_id: str) -> list[ItemScores]:
        found: dict[tuple[str, str, str], ItemScores] = {}
        for r in self.db.execute("SELECT * FROM items WHERE run_id=? ORDER BY rowid", (run_id,)):
            key = (r["model"], r["task"], r["metric"])
            found.setdefault(key, ItemScores(*key, {})).values[r["item"]] = r["value"]
        return list(found.values())

    # bench ----------------------------------------------------------------------------------
    def replace_bench(self, run_id: str, results: list[BenchResult]) -> None:
        """Replace the run's benchmark results: one per variant, device and backend."""
        with self.transaction() as db:
            db.execute("DELETE FROM bench WHERE run_id=?", (run_id,))
            db.executemany(
                "INSERT OR REPLACE INTO bench (run_id, variant, device, backend, status, data)"
                " VALUES (?, ?, ?, ?, ?, ?)",
                [(run_id, r.variant, r.device, r.backend, r.status, json.dumps(r.to_dict())) for r in results],
            )

    def bench(self, run_id: str) -> list[BenchResult]:
        rows = self.db.execute("SELECT * FROM bench WHERE run_id=? ORDER BY rowid", (run_id,)).fetchall()
        return [self._bench_result(r) for r in rows]

    def _bench_result(self, row: sqlite3.Row) -> BenchResult:
        where = f"variant {row['variant']!r} on {row['device']} ({row['backend']})"
        result: BenchResult = self._decode(row, "bench", where, "data", BenchResult)
        known = {f.name for f in fields(BenchResult)}
        result.extra = {k: v for k, v in json.loads(row["data"]).items() if k not in known}
        return result

    # servers --------------------------------------------------------------------------------
    def key_path(self, run_id: str, server_id: str) -> Path:
        """Where a server's API key is kept: `<home>/<run>/serve/<server>.key`, mode 0600."""
        number = server_id.removeprefix(f"{paths.check_name(run_id)}-")
        if not (number.isascii() and number.isdigit()):  # a server's id is `<run>-<n>` (servers.reserve)
            raise paths.BadName(f"server id {server_id!r}: expected {run_id}-<number>")
        return self.path.parent / run_id / "serve" / f"{server_id}.key"

    def add_server(self, server: Server) -> None:
        """Record a server. Its API key goes to its key file, never into the store (which the workbench
        shares with whoever may read the runs home); a server recorded stopped keeps no key."""
        key_file = paths.inside(self.key_path(server.run_id, server.id), self.path.parent)
        if server.api_key and server.status == "running":
            write_key(key_file, server.api_key)
        else:
            key_file.unlink(missing_ok=True)
        data = json.dumps({**asdict(server), "api_key": None})
        self.db.execute(
            "INSERT OR REPLACE INTO servers (id, run_id, variant, status, data) VALUES (?, ?, ?, ?, ?)",
            (server.id, server.run_id, server.variant, server.status, data),
        )

    def _with_key(self, server: Server) -> Server:
        try:
            key = self.key_path(server.run_id, server.id).read_text(encoding="utf-8").strip()
        except (paths.BadName, OSError, UnicodeDecodeError):
            return server
        return replace(server, api_key=key or None)

    def servers(self, run_id: str | None = None) -> list[Server]:
        """Servers (of one run, or all), newest first; one whose process is gone reads `stopped`."""
        where, params = ("WHERE run_id=?", [run_id]) if run_id is not None else ("", [])
        rows = self.db.execute(f"SELECT id, data FROM servers {where} ORDER BY rowid DESC", params)
        found = [decode(self.path, "servers", f"server {r['id']!r}", "data", r["data"], Server) for r in rows]
        found = [self._with_key(server) for server in found]
        return [
            s if s.status != "running" or is_alive(s.pid, s.pid_started) else replace(s, status="stopped")
            for s in found
        ]

    def server(self, server_id: str) -> Server | None:
        return next((s for s in self.servers() if s.id == server_id), None)

    def set_variant_meta(self, run_id: str, name: str, key: str, value: Any) -> None:
        """Record one finding on a stored variant (e.g. its served-parity check)."""
        with self.transaction() as db:
            row = db.execute("SELECT data FROM variants WHERE run_id=? AND name=?", (run_id, name)).fetchone()
            if row is None:
                raise KeyError(f"{run_id}: no variant {name!r}")
            data = decode(self.path, "variants", f"run {run_id!r}, variant {name!r}", "data", row["data"])
            data.setdefault("meta", {})[key] = value
            db.execute("UPDATE variants SET data=? WHERE run_id=? AND name=?", (json.dumps(data), run_id, name))

    # JSON columns ---------------------------------------------------------------------------
    def _decode(self, row: sqlite3.Row, table: str, where: str, column: str, kind: type | None = None) -> Any:
        """A JSON column of one of a run's rows (`decode`)."""
        return decode(self.path, table, f"run {row['run_id']!r}, {where}", column, row[column], kind)

    def _event(self, row: sqlite3.Row) -> dict[str, Any]:
        where = f"run {row['run_id']!r}, stage {row['stage']!r}, event {row['id']}"
        data = decode(self.path, "events", where, "data", row["data"])
        return {"id": row["id"], "stage": row["stage"], "ts": row["ts"], "kind": row["kind"], **data}

    def _train_log(self, row: sqlite3.Row) -> TrainLog:
        """A train_log event as a TrainLog: its known keys checked, the others kept in `extra`."""
        where = f"run {row['run_id']!r}, stage {row['stage']!r}, event {row['id']}"
        data = decode(self.path, "events", where, "data", row["data"])
        known = {key: value for key, value in data.items() if key in TrainLog.STORED}
        known["metrics"] = known.get("metrics") or {}  # logs from before the objectives' metrics
        extra = {key: value for key, value in data.items() if key not in TrainLog.STORED}
        values = {**known, "extra": extra, "stage": row["stage"], "id": row["id"]}
        return _validated(self.path, "events", where, "data", values, TrainLog)

    def recipe(self, run: RunRecord) -> dict[str, Any]:
        """The recipe a run was started with, as it was stored."""
        return decode(self.path, "runs", f"run {run.id!r}", "recipe", run.recipe_json)


def _run(row: sqlite3.Row) -> RunRecord:
    return RunRecord(
        row["id"], row["name"], row["recipe_path"], row["recipe"], row["status"], row["created"], row["updated"],
        row["pid"], row["pid_started"],
    )  # fmt: skip
