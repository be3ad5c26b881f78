"""What reaches the terminal, and secrets: names and rows holding escape sequences printed by the command
line, the web UI's token kept out of `ps` and out of its cookie, server API keys kept out of the store."""

from __future__ import annotations

import ast
import asyncio
import json
import os
import re
import socket
import sqlite3
import stat
import sys
import threading
from dataclasses import asdict, replace
from pathlib import Path

import pytest
from test_report import SCORES, fill_store
from test_security import free_port, web_server

import workbench.cli
from workbench.cli import main
from workbench.core.records import Artifact, Server, Variant
from workbench.core.store import Store

CLI = [sys.executable, "-m", "workbench.cli"]
CONTROLS = re.compile(r"[\x00-\x08\x0b-\x1f\x7f-\x9f]")  # everything a terminal acts on, but newline and tab
ESC = "\x1b]0;owned\x07\x1b[2J\x1b[31m\x9b5m\x08\r"  # title write, clear screen, colour, C1 CSI, backspace, CR
KEY = "sk-test-" + "k" * 32


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


# 10. every string the command line prints goes through the terminal sanitizer


def test_the_command_line_prints_through_one_sanitizing_function() -> None:
    """By construction: in the cli package, `print` is called only inside `_out` (which sanitizes), nothing
    writes to sys.stdout / sys.stderr directly, and no helper that prints by itself (`print_*`) is called."""
    files = sorted(Path(workbench.cli.__file__).parent.glob("*.py"))
    trees = {path.name: ast.parse(path.read_text()) for path in files}
    allowed: set[ast.AST] = set()
    for node in (node for tree in trees.values() for node in ast.walk(tree)):
        if isinstance(node, ast.FunctionDef) and node.name == "_out":
            allowed |= set(ast.walk(node))
            body = ast.unparse(node)
            assert "safe.terminal_text(text)" in body
    assert allowed, "no `_out` in the cli package"
    bare = []
    for name, tree in trees.items():
        for node in ast.walk(tree):
            if not isinstance(node, ast.Call) or node in allowed:
                continue
            called = ast.unparse(node.func)
            method = node.func.attr if isinstance(node.func, ast.Attribute) else ""
            to_a_stream = method in ("write", "writelines", "buffer") and ("stdout" in called or "stderr" in called)
            if called in ("print", "os.write") or to_a_stream or method.startswith("print_"):
                bare.append(f"{name} line {node.lineno}: {ast.unparse(node)[:60]}")
    assert not bare, "printed around `_out`:\n" + "\n".join(bare)
    assert sum(path.read_text().count("_out(") for path in files) > 50  # the prints really go through it


def hostile_home(home: Path) -> None:
    """A store whose names and texts hold escape sequences: through the workbench's own writes where it takes
    them (recipe file name, errors, variants, artifacts), through sqlite3 where it would refuse them."""
    store = Store(home / "workbench.db")
    fill_store(store, "plain", SCORES, "lora")
    store.upsert_run("plain", "plain", {"name": "plain", "eval": {"tasks": ["heldout"]}}, f"recipes/{ESC}.yaml", 1)
    store.start_stage("plain", "merge", "k")
    store.finish_stage("plain", "merge", "failed", f"OSError: {ESC} disk full")
    store.replace_artifacts("plain", "train", [Artifact(f"adapter{ESC}", "adapter", f"/x/{ESC}/adapter", 2**20)])
    bad = Variant(f"m-{ESC}.gguf", "gguf", f"/x/{ESC}", 4, status="failed", error=f"crash {ESC}")
    store.replace_variants("plain", ["gguf"], [*store.variants("plain"), bad])
    store.add_event("plain", "train", "train_log", {"step": 1, "total_steps": 2, "loss": 1.0, "note": ESC})
    server = Server("plain-1", "plain", f"m-{ESC}", "llama.cpp", "127.0.0.1", 8, f"model{ESC}", 1, None, 0.0, ESC)
    store.add_server(server)
    store.close()
    with sqlite3.connect(home / "workbench.db") as db:
        db.execute(
            "INSERT INTO runs (id, name, recipe_path, recipe, status, created, updated, pid) VALUES (?,?,?,?,?,?,?,?)",
            (f"evil{ESC}", f"evil{ESC}", f"{ESC}.yaml", json.dumps({"name": ESC}), "failed", 1.0, 2.0, None),
        )
        db.execute(
            "INSERT INTO stages (run_id, name, status, error) VALUES (?, ?, ?, ?)",
            (f"evil{ESC}", "data", f"failed{ESC}", f"boom{ESC}"),
        )


@pytest.mark.parametrize(
    "command",
    [["runs"], ["show", "plain"], ["report", "plain"], ["serve"], ["show", f"x{ESC}"], ["show", "evil"]],
    ids=["runs", "show", "report", "serve", "argparse error", "no such run"],
)
def test_names_and_rows_with_escape_sequences_reach_the_terminal_inert(
    tmp_path: Path, capfd: pytest.CaptureFixture[str], command: list[str]
) -> None:
    hostile_home(tmp_path)
    try:
        status = main(["--home", str(tmp_path), *command])
    except SystemExit as exited:  # argparse refuses the name
        status = exited.code  # type: ignore[assignment]
    printed = capfd.readouterr()
    text = printed.out + printed.err
    assert status in (0, 1, 2) and text.strip()
    assert "\x1b" not in text and not CONTROLS.search(text), repr(CONTROLS.findall(text)[:5])
    if command == ["runs"]:
        assert "evil]0;owned" not in text and "evil" in text and "plain" in text  # the OSC dropped whole
    if command == ["show", "plain"]:
        assert "recipes/" in text and "disk full" in text and "adapter" in text and "crash" in text


@pytest.mark.parametrize("command", [["report", "plain", "--format", "json"], ["compare", "plain", "--format", "json"]])
def test_json_output_stays_json_and_escapes_what_it_carries(
    tmp_path: Path, capfd: pytest.CaptureFixture[str], command: list[str]
) -> None:
    hostile_home(tmp_path)
    assert main(["--home", str(tmp_path), *command]) == 0
    out = capfd.readouterr().out
    assert "\x1b" not in out and not CONTROLS.search(out)
    data = json.loads(out)  # still JSON, and the hostile name still in it (escaped by JSON, not dropped)
    assert ESC in json.dumps(data, ensure_ascii=False) or "\\u001b" in out


# 11. secrets: the web token out of `ps` and out of the cookie; API keys out of the store


@pytest.fixture
def no_web_server(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """`tui --web` up to the point it would serve; the token it would require, recorded."""
    from workbench.tui import web

    tokens: list[str] = []
    monkeypatch.setattr(web.GuardedServer, "serve", lambda self, *a, **k: tokens.append(self.guard.token))
    monkeypatch.delenv(web.TOKEN_ENV, raising=False)
    return tokens


def test_a_token_on_the_command_line_warns_and_a_token_file_must_be_private(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, no_web_server: list[str]
) -> None:
    token = "a-token-of-mine-" + "0123456789"
    web = ["--home", str(tmp_path), "tui", "--web", "--port", "8123"]
    assert main([*web, "--token", token]) == 0
    err = capsys.readouterr().err
    assert "every local user can read (`ps`)" in err and "WORKBENCH_WEB_TOKEN" in err and "--token-file" in err

    secret = tmp_path / "token"
    secret.write_text(token + "\n")
    secret.chmod(0o644)
    assert main([*web, "--token-file", str(secret)]) == 2
    err = capsys.readouterr().err
    assert f"--token-file {secret}: mode 0644 lets other users read the token" in err and "chmod 600" in err
    secret.chmod(0o640)
    assert main([*web, "--token-file", str(secret)]) == 2 and "mode 0640" in capsys.readouterr().err
    secret.chmod(0o600)
    assert main([*web, "--token-file", str(secret)]) == 0
    assert "warning" not in capsys.readouterr().err
    monkeypatch.setenv("WORKBENCH_WEB_TOKEN", token)
    assert main(web) == 0 and "warning" not in capsys.readouterr().err
    assert main([*web, "--token-file", str(tmp_path / "missing")]) == 2
    assert "No such file" in capsys.readouterr().err
    assert no_web_server == [token, token, token]
    with pytest.raises(SystemExit):  # one or the other
        main([*web, "--token", token, "--token-file", str(secret)])


class CookieCatcher:
    """Another server on 127.0.0.1 (another port): records the Cookie header a browser sends it."""

    def __init__(self) -> None:
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.cookies: list[str] = []
        threading.Thread(target=self.answer, daemon=True).start()

    def answer(self) -> None:
        connection, _ = self.listener.accept()
        with connection:
            request = b""
            while b"\r\n\r\n" not in request:
                request += connection.recv(4096)
            head = request.decode("latin-1").split("\r\n")
            self.cookies += [line.split(":", 1)[1].strip() for line in head if line.lower().startswith("cookie:")]
            connection.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")


def test_the_web_token_stays_out_of_ps_and_out_of_the_cookie_other_ports_receive(tmp_path: Path) -> None:
    import aiohttp
    import psutil

    token = "web-token-from-a-file-" + "0123456789abcdef"
    secret = tmp_path / "token"
    secret.write_text(token)
    secret.chmod(0o600)
    port = free_port()
    env = {k: v for k, v in os.environ.items() if k != "WORKBENCH_WEB_TOKEN"}
    command = [*CLI, "--home", str(tmp_path), "tui", "--web", "--port", str(port), "--token-file", str(secret)]
    url = f"http://127.0.0.1:{port}/"
    other = CookieCatcher()

    async def browse() -> dict[str, object]:
        seen: dict[str, object] = {}
        async with aiohttp.ClientSession(cookie_jar=aiohttp.CookieJar(unsafe=True)) as browser:
            for _ in range(300):
                try:
                    async with browser.get(f"{url}?token={token}", allow_redirects=False) as page:
                        seen["first visit"] = page.status
                        seen["cookies"] = {name: morsel.value for name, morsel in page.cookies.items()}
                        break
                except aiohttp.ClientConnectionError:
                    await asyncio.sleep(0.1)
            async with browser.get(url) as page:
                seen["with the cookie"] = page.status
            async with browser.get(url, headers={"Authorization": f"token {token}"}) as page:
                seen["with the token"] = page.status
            async with browser.get(f"http://127.0.0.1:{other.port}/"):
                pass
        return seen

    with web_server(command, env) as server:
        seen = asyncio.run(browse())
        command_line = psutil.Process(server.pid).cmdline()
    assert not any(token in part for part in command_line) and str(secret) in command_line
    assert seen["first visit"] == 302 and seen["with the cookie"] == 200 and seen["with the token"] == 200
    cookies = seen["cookies"]
    assert list(cookies) == [f"workbench-session-{port}"]  # type: ignore[call-overload]
    assert not any(token in value for value in cookies.values())  # type: ignore[attr-defined]
    # a browser does send this server's cookie to another port of 127.0.0.1; what it gets is not the token
    assert other.cookies and f"workbench-session-{port}=" in other.cookies[0] and token not in other.cookies[0]


def test_a_session_cookie_opens_only_the_server_that_set_it() -> None:
    from aiohttp.test_utils import make_mocked_request

    from workbench.tui.web import Guard

    one, two = Guard(token="t" * 32, cookie="c"), Guard(token="t" * 32, cookie="c")  # the same token
    assert one.session != two.session and "t" * 32 not in one.session
    with_cookie = make_mocked_request("GET", "/", headers={"Cookie": f"c={one.session}"})
    assert one.admits(with_cookie) and not two.admits(with_cookie)
    assert not one.admits(make_mocked_request("GET", "/", headers={"Cookie": f"c={'t' * 32}"}))
    assert one.admits(make_mocked_request("GET", "/", headers={"Authorization": f"token {'t' * 32}"}))
    assert not one.admits(make_mocked_request("GET", "/"))


def key_server(run_id: str = "srv", status: str = "running") -> Server:
    return Server(f"{run_id}-1", run_id, "m.gguf", "llama.cpp", "0.0.0.0", 8, "m", 1, None, 0.0, "l", KEY, None, status)


def store_bytes(home: Path) -> bytes:
    return b"".join(p.read_bytes() for p in home.glob("workbench.db*"))


def test_server_keys_live_in_owner_only_files_and_the_store_is_its_owners(tmp_path: Path) -> None:
    home = tmp_path / "home"
    old_umask = os.umask(0o022)  # the usual one: files world-readable unless made otherwise
    try:
        store = Store(home / "workbench.db")
        store.add_server(key_server())
        sides = sorted(p.name for p in home.glob("workbench.db*"))
        modes = {name: mode(home / name) for name in sides}
    finally:
        os.umask(old_umask)
    assert mode(home) == 0o700 and sides == ["workbench.db", "workbench.db-shm", "workbench.db-wal"]
    assert set(modes.values()) == {0o600}, modes
    assert KEY.encode() not in store_bytes(home)
    rows = [json.loads(data) for (data,) in sqlite3.connect(home / "workbench.db").execute("SELECT data FROM servers")]
    assert rows and all(row["api_key"] is None for row in rows)
    key_file = home / "srv" / "serve" / "srv-1.key"
    assert mode(key_file) == 0o600 and key_file.read_text() == KEY
    assert Store(home / "workbench.db").server("srv-1").api_key == KEY  # what serve --check and the TUI use
    store.add_server(replace(key_server(), status="stopped"))
    assert not key_file.exists() and store.server("srv-1").api_key is None


def test_an_older_store_gives_its_plain_text_keys_up_when_opened(tmp_path: Path) -> None:
    home = tmp_path / "home"
    Store(home / "workbench.db").close()
    with sqlite3.connect(home / "workbench.db") as db:  # what version 4 wrote: the key in the row
        for server in (key_server("old"), key_server("gone", status="stopped")):
            db.execute(
                "INSERT INTO servers (id, run_id, variant, status, data) VALUES (?, ?, ?, ?, ?)",
                (server.id, server.run_id, server.variant, server.status, json.dumps(asdict(server))),
            )
        db.execute("PRAGMA user_version=4")
    db.close()
    for path in [home, *home.glob("workbench.db*")]:
        path.chmod(0o755 if path.is_dir() else 0o664)  # shared with a group, and open to everybody
    assert KEY.encode() in store_bytes(home)

    store = Store(home / "workbench.db")
    assert store.version() == 5 and KEY.encode() not in store_bytes(home)
    assert {p.name: mode(p) for p in home.glob("workbench.db*")} == dict.fromkeys(
        [p.name for p in home.glob("workbench.db*")], 0o660
    )  # closed to others, the group keeps its access
    assert store.server("old-1").api_key == KEY and mode(home / "old" / "serve" / "old-1.key") == 0o600
    assert store.server("gone-1").api_key is None and not (home / "gone").exists()  # a stopped one's key dropped
    assert mode(home) == 0o755  # an existing home keeps its mode


def test_a_store_row_cannot_place_a_key_file_outside_the_home(tmp_path: Path) -> None:
    from workbench.core.paths import BadName

    store = Store(tmp_path / "home" / "workbench.db")
    with pytest.raises(BadName):
        store.add_server(replace(key_server(), run_id="../outside", id="x-1"))
    assert not (tmp_path / "outside").exists() and store.servers() == []
