"""Each attack of the security review, performed: run names that are paths, report folders, task files
that run code, a web UI reached by others, modules planted in the working folder, untrusted text in
reports and terminals, YAML alias bombs. Each must be refused or harmless."""

from __future__ import annotations

import asyncio
import contextlib
import csv
import dataclasses
import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml
from conftest import write_recipe

from workbench import workers
from workbench.cli import main
from workbench.core import fsutil, paths, safe
from workbench.core.store import Store
from workbench.eval import tasks
from workbench.eval.worker import EvalJob
from workbench.report import write
from workbench.workers.selftest import SelfTestJob

CLI = [sys.executable, "-m", "workbench.cli"]


# 1. run names are names, and nothing outside the workbench's folders is deleted or replaced


def test_a_run_name_that_is_a_path_is_refused_and_the_users_folder_survives(
    tmp_path: Path, qa_file: Path, tiny_model: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    demo = tmp_path / "demo" / "data"
    demo.mkdir(parents=True)
    (demo / "keep").write_text("mine")
    recipe = write_recipe(tmp_path, tiny_model, qa_file)
    home = tmp_path / "home"
    for name in [str(tmp_path / "demo"), "../demo", "a/b", ".", "..", "-x", "", "a" * 101, "ä", "demo\n"]:
        with pytest.raises(SystemExit) as exited:
            main(["--home", str(home), "run", str(recipe), f"--run-id={name}", "--stages", "data"])
        assert exited.value.code == 2 and "letters, digits" in capsys.readouterr().err, name
    assert (demo / "keep").read_text() == "mine" and not home.exists()


def test_every_way_into_a_run_checks_its_name(tmp_path: Path, qa_file: Path, tiny_model: Path) -> None:
    from workbench.core.recipe import RecipeError, load_recipe
    from workbench.pipeline import launcher
    from workbench.pipeline.runlock import RunLock
    from workbench.pipeline.runner import run_recipe

    recipe = load_recipe(write_recipe(tmp_path, tiny_model, qa_file))
    with pytest.raises(paths.BadName):
        run_recipe(recipe, tmp_path / "home", stages=["data"], run_id="../demo")
    with pytest.raises(paths.BadName):
        launcher.launch(recipe.source, tmp_path / "home", "..")
    with pytest.raises(paths.BadName):
        RunLock.acquire(tmp_path / "home", "x/../../y")
    with pytest.raises(RecipeError, match="name"):
        load_recipe(recipe.source, ["name=../../demo"])
    with pytest.raises(SystemExit) as exited:
        main(["--home", str(tmp_path), "report", "../demo"])
    assert exited.value.code == 2


def test_replacing_or_deleting_through_a_link_out_of_the_run_is_refused(tmp_path: Path) -> None:
    outside = tmp_path / "users" / "data"
    outside.mkdir(parents=True)
    (outside / "keep").write_text("mine")
    run_dir = tmp_path / "runs" / "r"
    run_dir.mkdir(parents=True)
    (run_dir / "data").symlink_to(outside)
    with pytest.raises(paths.OutsideError), fsutil.atomic_dir(run_dir / "data", root=run_dir):
        pass
    with pytest.raises(paths.OutsideError):
        paths.remove(run_dir / "data" / "keep", run_dir)
    with pytest.raises(paths.OutsideError):
        paths.remove(run_dir, run_dir)  # the root itself is not "inside"
    assert (outside / "keep").read_text() == "mine"
    paths.remove(run_dir / "data", run_dir)  # the link itself may go; what it points to stays
    assert not (run_dir / "data").is_symlink() and (outside / "keep").read_text() == "mine"


# 2. report --out writes the report's own files only


def test_report_out_never_removes_or_moves_what_the_workbench_did_not_write(tmp_path: Path) -> None:
    from test_report import SCORES, fill_store

    fill_store(Store(tmp_path / "workbench.db"), "lora", SCORES, "lora")
    users = tmp_path / "mine"
    users.mkdir()
    (users / "report.html").write_text("my own report")  # what used to make the folder "a report"
    (users / "notes.txt").write_text("notes")
    assert main(["--home", str(tmp_path), "report", "lora", "--out", str(users)]) == 2
    assert (users / "report.html").read_text() == "my own report" and (users / "notes.txt").read_text() == "notes"

    single = tmp_path / "file.txt"
    single.write_text("a file")
    assert main(["--home", str(tmp_path), "report", "lora", "--out", str(single)]) == 2
    assert single.read_text() == "a file" and [p.name for p in tmp_path.glob("file.txt*")] == ["file.txt"]

    fresh = tmp_path / "fresh"
    assert main(["--home", str(tmp_path), "report", "lora", "--out", str(fresh)]) == 0
    (fresh / "mine.txt").write_text("added later")
    assert main(["--home", str(tmp_path), "report", "lora", "--out", str(fresh)]) == 0  # its own report: again
    assert (fresh / "mine.txt").read_text() == "added later" and (fresh / "report.html").is_file()


# 3. task files are data unless the recipe trusts them


def task_folder(tmp_path: Path, files: dict[str, str], name: str = "tasks") -> Path:
    folder = tmp_path / name
    for name, text in files.items():
        (folder / name).parent.mkdir(parents=True, exist_ok=True)
        (folder / name).write_text(text)
    return folder


PLAIN = "task: {name}\ndataset_path: json\ndataset_kwargs: {{data_files: {{test: d.jsonl}}}}\ntest_split: test\n"


@pytest.mark.parametrize(
    ("files", "refusal"),
    [
        ({"t.yaml": PLAIN.format(name="a") + "process_docs: !function utils.process\n"}, "t.yaml: line 5.*'!function'"),
        ({"t.yml": PLAIN.format(name="a") + "process_docs: !function utils.process\n"}, "'!function'"),
        (
            {"t.yaml": "include: _template\ntask: a\n", "_template": "process_docs: !function u.p\n"},
            "_template: .*!func",
        ),
        ({"t.yaml": "include: ../outside.yaml\ntask: a\n"}, "include ../outside.yaml is .*, outside the task folder"),
        ({"t.yaml": PLAIN.format(name="a") + "metadata: {? !function /x/evil.fn : 1}\n"}, "'!function'"),  # a key
        ({"t.yaml": PLAIN.format(name="a") + "x: !!set {? !function /x/evil.fn}\n"}, "'!function'"),  # in a set
        ({"t.yaml": "group: g\ntask:\n  - task: m\n    metric_list: [{metric: bleu, hf_evaluate: true}]\n"}, "hf_ev"),
        ({"t.yaml": "group: g\ntask:\n  - task: m\n    metric_list: [{metric: attacker/metric}]\n"}, "registers"),
        ({"t.yaml": "group: g\ntask:\n  - task: m\n    unsafe_code: true\n"}, "unsafe_code"),
        ({"t.yaml": PLAIN.format(name="a") + "unsafe_code: true\n"}, "unsafe_code"),
        ({"t.yaml": PLAIN.format(name="a") + "metric_list: [{metric: ./evil.py}]\n"}, "not a metric lm-eval registers"),
        ({"t.yaml": PLAIN.format(name="a") + "metric_list: [{metric: bleu, hf_evaluate: true}]\n"}, "hf_evaluate"),
        ({"t.yaml": "include: t.yaml\ntask: a\n"}, "include cycle"),
    ],
)
def test_task_files_that_would_run_code_are_refused_unless_trusted(
    tmp_path: Path, files: dict[str, str], refusal: str
) -> None:
    (tmp_path / "outside.yaml").write_text("process_docs: !function utils.process\n")
    folder = task_folder(tmp_path, files)
    with pytest.raises(tasks.TaskError, match=refusal) as refused:
        tasks.copy_task_folders([folder], tmp_path / "out")
    assert "cycle" in refusal or "eval.trust_task_code: true" in str(refused.value) or "registers" in refusal


def test_yaml_that_is_not_a_task_is_left_alone(tmp_path: Path) -> None:
    folder = task_folder(
        tmp_path,
        {
            "t.yaml": PLAIN.format(name="t"),
            "empty.yaml": "",
            "list.yml": "- a\n- b\n",
            ".github/ci.yml": "job: !reference [a, b]\n",  # another tool's tags, in a hidden folder
            "notes.yaml": "owner: !reference me\n",  # tags in a file that is no task: never handed to lm-eval
        },
    )
    assert tasks.copy_task_folders([folder], tmp_path / "out") == ["t"]
    assert [p.name for p in (tmp_path / "out").rglob("*.yaml")] == ["t.yaml"]


def test_includes_are_merged_and_checked_and_trusted_folders_keep_their_code(tmp_path: Path) -> None:
    folder = task_folder(
        tmp_path,
        {
            "sub/t.yaml": "include: ../_base\ntask: mine\ndoc_to_text: q\n",
            "_base": PLAIN.format(name="base") + "doc_to_text: base\nmetric_list: [{metric: exact_match}]\n",
        },
    )
    assert tasks.copy_task_folders([folder], tmp_path / "out") == ["mine"]
    merged = yaml.safe_load((tmp_path / "out" / "0" / "sub" / "t.yaml").read_text())
    assert merged["doc_to_text"] == "q" and merged["metric_list"] == [{"metric": "exact_match"}]
    assert "include" not in merged and merged["dataset_kwargs"]["data_files"]["test"] == str(folder / "d.jsonl")

    tagged = PLAIN.format(name="c") + "process_docs: !function utils.process\n"
    code = task_folder(tmp_path, {"c.yaml": tagged, "utils.py": "def process(docs):\n    return docs\n"}, "code")
    assert tasks.copy_task_folders([code], tmp_path / "trusted", trusted=True) == ["c"]
    from lm_eval.tasks._yaml_loader import load_yaml

    copied = load_yaml(tmp_path / "trusted" / "0" / "c.yaml", resolve_func=True)  # as lm-eval will read it
    assert copied["process_docs"](["doc"]) == ["doc"]
    assert (tmp_path / "trusted" / "0" / "utils.py").read_text() == (code / "utils.py").read_text()


def test_eval_metric_must_be_one_lm_eval_registers(tmp_path: Path, qa_file: Path, tiny_model: Path) -> None:
    with pytest.raises(tasks.TaskError, match="did you mean exact_match"):
        tasks.check_metric("exact_mach")
    tasks.check_metric("exact_match")
    recipe = write_recipe(tmp_path, tiny_model, qa_file, eval={"metric": "evil/metric.py"})
    assert main(["recipe", "validate", str(recipe)]) == 2


def test_a_template_that_reaches_for_python_internals_fails_in_the_sandbox(
    tmp_path: Path, tiny_ggufs: dict[str, Path]
) -> None:
    marker = tmp_path / "ran"
    payload = "{{ cycler.__init__.__globals__.os.popen('touch " + str(marker) + "').read() }}Q: {{q}}"
    folder = task_folder(
        tmp_path,
        {
            "evil.yaml": PLAIN.format(name="evil")
            + f"doc_to_text: {json.dumps(payload)}\ndoc_to_target: a\noutput_type: generate_until\n"
            "generation_kwargs: {until: ['\\n'], max_gen_toks: 2}\nmetric_list: [{metric: exact_match}]\n",
            "d.jsonl": '{"q": "1+1", "a": "2"}\n{"q": "2+2", "a": "4"}\n',
        },
    )
    task_dir = tmp_path / "copied"
    assert tasks.copy_task_folders([folder], task_dir) == ["evil"]  # plain data: passes the file checks
    job = EvalJob(
        name="q4",
        format="gguf",
        path=str(tiny_ggufs["q4_0"]),
        out=tmp_path / "eval",
        tasks=["evil"],
        include=task_dir,
        include_defaults=False,
        limit=2,
        num_fewshot=None,
        seed=1,
        batch_size=1,
        max_length=128,
        bootstrap_iters=0,
        device="cpu",
    )
    outcome = workers.run("eval.model", job, name="q4", log=tmp_path / "eval.log", timeout=300)
    assert not outcome.ok and "SecurityError" in (tmp_path / "eval.log").read_text()
    assert not marker.exists()


# 4. the web UI: token, Host allow-list, Origin, sessions


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@contextlib.contextmanager
def web_server(command: list[str], env: dict[str, str] | None = None) -> Iterator[subprocess.Popen[str]]:
    """`workbench tui --web` as its own process, stopped as Ctrl-C stops it."""
    server = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)
    try:
        yield server
    finally:
        server.send_signal(signal.SIGINT)
        try:
            server.communicate(timeout=30)
        except subprocess.TimeoutExpired:
            server.kill()
            raise


def test_web_server_wants_the_token_a_known_host_and_its_own_origin(tmp_path: Path) -> None:
    import aiohttp
    from test_tui import finished_run

    finished_run(tmp_path)
    port = free_port()
    command = [*CLI, "--home", str(tmp_path), "tui", "--web", "--port", str(port), "--max-sessions", "1"]
    url = f"http://127.0.0.1:{port}/"

    async def probe() -> dict[str, object]:
        seen: dict[str, object] = {}
        async with aiohttp.ClientSession() as anonymous:
            for _ in range(300):
                try:
                    async with anonymous.get(url) as page:
                        seen["no token"] = page.status
                        break
                except aiohttp.ClientConnectionError:
                    await asyncio.sleep(0.1)
        line = ""
        while "token=" not in line:
            line = server.stdout.readline()  # type: ignore[union-attr]
        token = line.split("token=")[1].split()[0]
        async with aiohttp.ClientSession() as first, first.get(f"{url}?token={token}", allow_redirects=False) as page:
            cookie = {name: morsel.value for name, morsel in page.cookies.items()}  # the session's, not the token
        seen["cookie names"] = list(cookie)
        async with aiohttp.ClientSession(cookie_jar=aiohttp.CookieJar(unsafe=True)) as browser:
            async with browser.get(url, headers={"Authorization": "token wrong-token-wrong-token"}) as page:
                seen["wrong token"] = page.status
            for what, value in (("wrong cookie", "x" * 43), ("token as cookie", token)):  # neither is the session
                async with browser.get(url, cookies={f"workbench-session-{port}": value}) as page:
                    seen[what] = page.status
            forged = {"Host": f"evil.example:{port}", "Origin": f"http://evil.example:{port}"}
            async with browser.get(url, headers=forged, cookies=cookie) as page:
                seen["forged host"] = page.status  # DNS rebinding, even with the token
            async with browser.get(url, headers={"Origin": "http://evil.example"}, cookies=cookie) as page:
                seen["other origin"] = page.status
            for host in (f"127.0.0.2:{port}", f"[::1]:{port}", f"localhost:{port}", f"LOCALHOST.:{port}"):
                async with browser.get(url, headers={"Host": host}, cookies=cookie) as page:
                    seen[host] = page.status
            async with browser.get(f"{url}?token={token}", allow_redirects=False) as page:
                seen["first visit"] = (page.status, page.headers.get("Location"), "HttpOnly" in str(page.cookies))
            async with browser.get(url, headers={"Host": f"localhost:{port + 1}"}) as page:  # the cookie now
                html = await page.text()
                seen["page"] = page.status
                seen["websocket url"] = f"ws://localhost:{port + 1}/ws" in html  # as a tunnel's browser sees it
            screen = ""
            async with browser.ws_connect(f"ws://127.0.0.1:{port}/ws?width=80&height=24") as ws:
                async with browser.get(f"{url}ws") as second:
                    seen["second session"] = second.status
                deadline = time.monotonic() + 60
                while "done-run" not in screen and time.monotonic() < deadline:
                    try:
                        message = await ws.receive(timeout=5)
                    except TimeoutError:
                        continue
                    if message.type in (aiohttp.WSMsgType.BINARY, aiohttp.WSMsgType.TEXT):
                        data = message.data
                        screen += data.decode("utf-8", "replace") if isinstance(data, bytes) else data
            seen["screen"] = "done-run" in screen
        return seen

    with web_server(command) as server:
        seen = asyncio.run(probe())
    assert seen["no token"] == 401 and seen["wrong token"] == 401 and seen["wrong cookie"] == 401
    assert seen["cookie names"] == [f"workbench-session-{port}"] and seen["token as cookie"] == 401
    assert seen["forged host"] == 403 and seen["other origin"] == 403
    assert all(seen[h] == 200 for h in (f"127.0.0.2:{port}", f"[::1]:{port}", f"localhost:{port}"))
    assert seen[f"LOCALHOST.:{port}"] == 200
    assert seen["first visit"] == (302, "/", True)
    assert seen["page"] == 200 and seen["websocket url"] is True
    assert seen["second session"] == 503 and seen["screen"] is True


def test_web_server_beyond_loopback_refuses_a_weak_token() -> None:
    for token in ("", "a" * 16, "abcabcabcabcabca"):
        result = subprocess.run(
            [*CLI, "tui", "--web", "--host", "0.0.0.0", "--port", str(free_port()), "--token", token],
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert result.returncode == 2 and "at least 16 characters, 8 of them different" in result.stderr


def test_web_guard_rules() -> None:
    from workbench.tui.web import Guard, is_loopback

    guard = Guard(token="t" * 32, cookie="c", hosts={"box.lan"})
    assert all(guard.host_ok(h) for h in ("127.0.0.1:8000", "127.9.9.9", "[::1]:80", "localhost", "box.lan:8000"))
    assert not any(guard.host_ok(h) for h in ("evil.example:8000", "127.0.0.1.evil.example", "", "[::2]:8000"))
    assert guard.origin_ok(None, "box.lan:8000") and guard.origin_ok("https://box.lan:8000", "box.lan:8000")
    assert not guard.origin_ok("http://evil.example", "box.lan:8000")
    assert guard.token_ok("t" * 32) and not guard.token_ok("t" * 31) and not guard.token_ok(None)
    assert is_loopback("0:0:0:0:0:0:0:1") and not is_loopback("0.0.0.0")


# 5. child processes never import from the folder they start in


def test_a_module_planted_in_the_working_folder_is_not_imported_by_children(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    marker = tmp_path / "planted-ran"
    (tmp_path / "json.py").write_text(f"open({str(marker)!r}, 'w').close()\nraise SystemExit(7)\n")
    monkeypatch.chdir(tmp_path)
    unguarded = subprocess.run([sys.executable, "-m", "workbench.cli", "runs"], capture_output=True)
    assert unguarded.returncode == 7 and marker.exists()  # the attack works on a plain `python -m`
    marker.unlink()

    from workbench.pipeline import launcher

    cli = subprocess.run([*launcher.CLI, "--home", str(tmp_path / "h"), "runs"], capture_output=True, text=True)
    outcome = workers.run("workers.selftest", SelfTestJob(), name="t", log=tmp_path / "w.log", timeout=60)
    assert cli.returncode == 0 and "no runs yet" in cli.stdout and outcome.ok
    assert not marker.exists()


# 6. untrusted text in reports, spreadsheets, terminals and JSON


def test_report_cells_are_inert_in_spreadsheets_markdown_and_json(tmp_path: Path) -> None:
    from test_report import SCORES, VARIANTS, fill_store

    store = Store(tmp_path / "workbench.db")
    fill_store(store, "lora", SCORES, "lora")
    hostile = [dataclasses.replace(v) for v in VARIANTS]
    hostile[1].name = '=HYPERLINK("http://evil")|x<img src=x onerror=alert(1)>'
    store.replace_variants("lora", ["hf", "gguf", "nf4", "gptq", "awq"], hostile)
    from test_report import CPU_BENCH, bench

    store.replace_bench("lora", [*CPU_BENCH[:2], bench(hostile[2].name, "cpu", float("nan"))])
    dest = write.write(write.load(store, "lora", tmp_path / "lora"), tmp_path / "out")

    cells = [cell for row in csv.reader((dest / "comparison.csv").open()) for cell in row]
    assert not any(cell.startswith(("=", "+", "@")) for cell in cells)
    assert any(cell.startswith("'=HYPERLINK") for cell in cells)
    table = [line for line in (dest / "report.md").read_text().splitlines() if line.startswith("|")]
    assert len({len(re.findall(r"(?<!\\)\|", line)) for line in table}) == 1  # no cell left its column
    assert not re.search(r"(?<!\\)<img", (dest / "report.md").read_text())  # shown, not an element
    json.loads((dest / "results.json").read_text(), parse_constant=lambda c: pytest.fail(f"{c} in JSON"))


def test_terminal_output_drops_control_sequences(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    store = Store(tmp_path / "workbench.db")
    store.upsert_run("r", "r", {"name": "r"}, None, os.getpid())
    store.start_stage("r", "eval", "k")
    store.finish_stage("r", "eval", "failed", "model said \x1b]52;c;ZXZpbA==\x07\x1b[2Jgone\x9b31m")
    store.set_run_status("r", "failed")
    assert main(["--home", str(tmp_path), "show", "r"]) == 0
    out = capsys.readouterr().out
    assert "model said gone" in out and not any(ch in out for ch in "\x1b\x07\x9b")
    assert safe.terminal_text("a\tb\nc\x00\x08d") == "a\tb\ncd"
    from workbench.core.common import tail
    from workbench.tui.tables import cell
    from workbench.tui.text import plain

    (tmp_path / "w.log").write_text("step 1\rstep 2\x1b[31m red\x1b]0;title\x07\n")
    assert tail(tmp_path / "w.log")[-1] == "step 2 red"  # the Run screen's log tab and `workbench show`
    assert cell("Q8\x1b[2J[b]") == "Q8\\[b]" and plain("ok\x1b]52;c;eA==\x07").plain == "ok"  # TUI text


# 7. recipes: alias bombs and huge values


def test_a_yaml_alias_bomb_is_refused_quickly_with_a_short_message(tmp_path: Path) -> None:
    lines = ['a0: &a0 ["lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol"]']
    lines += [f"a{i}: &a{i} [{', '.join([f'*a{i - 1}'] * 9)}]" for i in range(1, 10)]
    bomb = tmp_path / "bomb.yaml"
    bomb.write_text("\n".join(lines) + "\nname: x\nbase_model: *a9\ndata: {path: x}\n")
    loop = tmp_path / "loop.yaml"
    loop.write_text("name: &n [*n]\n")
    huge = tmp_path / "huge.yaml"
    huge.write_text("name: x\nbase_model: [" + ", ".join(["1"] * 5000) + "]\ndata: {path: x}\n")
    for path, said in ((bomb, "expands to more than"), (loop, "nested more than"), (huge, "got a list of 5000")):
        started = time.monotonic()
        result = subprocess.run([*CLI, "recipe", "validate", str(path)], capture_output=True, text=True, timeout=120)
        assert result.returncode == 2 and said in result.stderr and len(result.stderr) < 500
        assert time.monotonic() - started < 30
