"""Files outside the workbench's folders, attacked: a run folder that is a link (or holds one), a report
folder that only looks like a report, run names the runs home already uses, and an sbatch script that a
partition or a file name could add commands to. Each must be refused or harmless."""

from __future__ import annotations

import json
import os
import shlex
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import write_recipe

from workbench.cli import main
from workbench.core import paths
from workbench.core.errors import InputError
from workbench.core.recipe import RecipeError, load_recipe
from workbench.core.store import Store
from workbench.pipeline import launcher, slurm
from workbench.pipeline.runlock import RunLock
from workbench.pipeline.runner import run_recipe
from workbench.report import write


def snapshot(folder: Path) -> dict[str, bytes]:
    """Every file under `folder` (links not followed) and its content: what must survive an attack."""
    return {
        str(path.relative_to(folder)): b"" if path.is_dir() else path.read_bytes() for path in sorted(folder.rglob("*"))
    }


@pytest.fixture
def victim(tmp_path: Path) -> Path:
    """A user's folder outside the runs home, with a file a run would replace."""
    folder = tmp_path / "victim"
    (folder / "data").mkdir(parents=True)
    (folder / "data" / "important.txt").write_text("mine")
    (folder / "notes.txt").write_text("notes")
    return folder


# 4. a run folder that is a link, or holds one


def test_a_run_folder_that_is_a_link_is_refused_at_every_way_in(
    tmp_path: Path, victim: Path, qa_file: Path, tiny_model: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    recipe_path = write_recipe(tmp_path, tiny_model, qa_file)
    home = tmp_path / "runs"
    home.mkdir()
    (home / "dist").symlink_to(victim)
    before = snapshot(victim)

    assert main(["--home", str(home), "run", str(recipe_path), "--run-id", "dist", "--stages", "data"]) == 2
    assert "symbolic link" in capsys.readouterr().err
    recipe = load_recipe(recipe_path)
    with pytest.raises(paths.OutsideError):
        run_recipe(recipe, home, stages=["data"], run_id="dist")
    with pytest.raises(paths.OutsideError):
        launcher.launch(recipe_path, home, "dist")
    with pytest.raises(paths.OutsideError):
        RunLock.acquire(home, "dist")
    for command in (
        ["cancel", "dist"],
        ["report", "dist"],
        ["show", "dist"],
        ["serve", "dist"],
        ["chat", "dist", "hi"],
        ["compare", "dist"],
        ["publish", "dist", "--variant", "merged", "--repo", "a/b", "--dry-run"],
    ):
        assert main(["--home", str(home), *command]) == 2, command
        assert "symbolic link" in capsys.readouterr().err, command
    assert snapshot(victim) == before  # nothing deleted, replaced or added (.lock, .work, worker.log)


def test_a_link_inside_a_run_folder_is_refused(tmp_path: Path, victim: Path, qa_file: Path, tiny_model: Path) -> None:
    recipe_path = write_recipe(tmp_path, tiny_model, qa_file)
    home = tmp_path / "runs"
    links = ((".work", victim), ("worker.log", victim / "notes.txt"), (".lock", victim / "notes.txt"))
    for number, (name, target) in enumerate(links):
        run_dir = home / f"r{number}"
        run_dir.mkdir(parents=True)
        (run_dir / name).symlink_to(target)
        before = snapshot(victim)
        with pytest.raises(paths.OutsideError, match="symbolic link"):
            RunLock.acquire(home, run_dir.name)
        with pytest.raises(paths.OutsideError, match="symbolic link"):
            launcher.launch(recipe_path, home, run_dir.name)
        assert snapshot(victim) == before, name
    deep = home / "deep" / "eval" / "models"
    deep.mkdir(parents=True)
    (deep / "m").symlink_to(victim)
    with pytest.raises(paths.OutsideError, match="models/m"):
        paths.run_folder(home, "deep")
    tracked = home / "tracked" / "tracking" / "wandb"  # W&B links its latest run and its logs there
    tracked.mkdir(parents=True)
    (tracked / "latest-run").symlink_to(tracked)
    assert paths.run_folder(home, "tracked") == home / "tracked"
    (home / "tracked" / "tracking").rename(home / "tracked" / "elsewhere")
    with pytest.raises(paths.OutsideError, match="latest-run"):
        paths.run_folder(home, "tracked")


def test_a_runs_home_that_is_a_link_keeps_working(tmp_path: Path, qa_file: Path, tiny_model: Path) -> None:
    disk = tmp_path / "big-disk" / "runs"
    disk.mkdir(parents=True)
    home = tmp_path / "runs"
    home.symlink_to(disk)  # the runs home on a bigger disk
    recipe = load_recipe(write_recipe(tmp_path, tiny_model, qa_file))
    assert run_recipe(recipe, home, stages=["data"]) == "tiny"
    assert (disk / "tiny" / "data" / "train.jsonl").is_file() and not (disk / "tiny").is_symlink()
    assert run_recipe(recipe, home, stages=["data"], force=["data"]) == "tiny"  # replacing inside it works too
    assert paths.run_folder(home, "tiny") == home / "tiny"


# 5. report --out: only the mark makes a folder a report, and cleanup removes only what the mark lists


@pytest.fixture
def report_home(tmp_path: Path) -> Path:
    from test_report import SCORES, fill_store

    home = tmp_path / "home"
    home.mkdir()
    store = Store(home / "workbench.db")
    fill_store(store, "lora", SCORES, "lora")
    store.close()
    return home


def test_a_folder_of_report_named_files_without_the_mark_is_not_a_report(
    tmp_path: Path, report_home: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    users = tmp_path / "results"
    users.mkdir()
    (users / "results.json").write_text('{"mine": true}')
    (users / "report.md").write_text("# my notes")
    assert main(["--home", str(report_home), "report", "lora", "--out", str(users)]) == 2
    assert ".workbench-report" in capsys.readouterr().err
    assert (users / "results.json").read_text() == '{"mine": true}'
    assert (users / "report.md").read_text() == "# my notes"
    assert sorted(p.name for p in users.iterdir()) == ["report.md", "results.json"]


def test_cleanup_removes_only_the_figures_the_earlier_reports_mark_lists(tmp_path: Path, report_home: Path) -> None:
    folder = tmp_path / "out"
    folder.mkdir()
    (folder / write.MARK).write_text("")  # a mark from before marks listed files: it lists nothing
    (folder / "loss_curve.png").write_bytes(b"the user's own figure")
    (folder / "quality_vs_gpu_speed.png").write_bytes(b"also the user's")
    assert main(["--home", str(report_home), "report", "lora", "--out", str(folder)]) == 0
    assert (folder / "loss_curve.png").read_bytes() == b"the user's own figure"
    assert (folder / "quality_vs_gpu_speed.png").read_bytes() == b"also the user's"
    listed = json.loads((folder / write.MARK).read_text())
    assert "report.html" in listed and "quality_vs_size.png" in listed and "loss_curve.png" not in listed
    assert all((folder / name).is_file() for name in listed)

    # a figure this code wrote and listed, which the next report lacks, is removed
    (folder / "served_throughput.png").write_bytes(b"an earlier report's figure")
    (folder / write.MARK).write_text(json.dumps([*listed, "served_throughput.png", "../../victim.txt"]))
    (tmp_path / "victim.txt").write_text("mine")
    assert main(["--home", str(report_home), "report", "lora", "--out", str(folder)]) == 0
    assert not (folder / "served_throughput.png").exists()
    assert (folder / "loss_curve.png").is_file() and (tmp_path / "victim.txt").read_text() == "mine"


# 6. names the runs home already uses


@pytest.mark.parametrize(
    "name",
    [
        "workbench.db",
        "workbench.db-shm",
        "workbench.db-wal",
        "workbench.db-journal",
        "WORKBENCH.DB-SHM",
        "slurm",
        "Slurm",
        "sweeps",
        "pulls",
        "doctor",
        "node1",
        "NODE12",
    ],
)
def test_names_the_runs_home_uses_are_reserved(
    name: str, tmp_path: Path, qa_file: Path, tiny_model: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(paths.BadName, match="reserved"):
        paths.check_name(name)
    recipe = write_recipe(tmp_path, tiny_model, qa_file)
    home = tmp_path / "home"
    with pytest.raises(SystemExit) as exited:
        main(["--home", str(home), "run", str(recipe), "--run-id", name, "--stages", "data"])
    assert exited.value.code == 2 and "reserved" in capsys.readouterr().err
    with pytest.raises(RecipeError, match="reserved"):
        load_recipe(recipe, [f"name={name}"])
    with pytest.raises(paths.BadName):
        RunLock.acquire(home, name)
    assert not home.exists()


@pytest.mark.parametrize("name", ["node", "nodes", "node1a", "slurm2", "my-doctor", "workbench", "db-shm"])
def test_names_beside_the_reserved_ones_are_fine(name: str) -> None:
    assert paths.check_name(name) == name


# 8. the sbatch script: strict values, everything else quoted, python -P


@pytest.mark.parametrize(
    ("option", "value"),
    [
        ("--partition", "gpu\ntouch /tmp/X #"),
        ("--partition", "gpu;id"),
        ("--partition", "gpu cpu"),
        ("--account", "a$(id)"),
        ("--account", "proj,other"),
        ("--time", "1:00 #x"),
        ("--time", "12:00:00\nid"),
        ("--time", "tomorrow"),
    ],
)
def test_sbatch_values_that_are_not_slurms_are_refused(
    option: str, value: str, tmp_path: Path, qa_file: Path, tiny_model: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    recipe, script = write_recipe(tmp_path, tiny_model, qa_file), tmp_path / "job.sbatch"
    home = tmp_path / "home"
    assert main(["--home", str(home), "launch", "--slurm", str(recipe), "--out", str(script), option, value]) == 2
    assert f"{option} " in capsys.readouterr().err and not script.exists()


@pytest.mark.parametrize(
    ("partition", "time", "account"),
    [("gpu", "90", "proj_1"), ("gpu,debug", "1-12:00:00", "a.b-c"), ("p", "12:00:00", None), (None, "unlimited", None)],
)
def test_sbatch_values_slurm_takes_are_written(
    partition: str | None, time: str, account: str | None, tmp_path: Path, qa_file: Path, tiny_model: Path
) -> None:
    path = write_recipe(tmp_path, tiny_model, qa_file)
    text = slurm.sbatch_script(
        path, load_recipe(path), tmp_path / "home", [], partition=partition, time=time, account=account
    )
    directives = sbatch_directives(text)
    assert f"--time={time}" in directives
    assert (f"--partition={partition}" in directives) == bool(partition)
    assert (f"--account={account}" in directives) == bool(account)


def test_a_runs_home_that_cannot_go_into_a_directive_is_refused(
    tmp_path: Path, qa_file: Path, tiny_model: Path
) -> None:
    path = write_recipe(tmp_path, tiny_model, qa_file)
    for home in (tmp_path / "a\ntouch X #", tmp_path / "back\\slash"):
        with pytest.raises(InputError, match="#SBATCH"):
            slurm.sbatch_script(path, load_recipe(path), home, [])


def sbatch_directives(text: str) -> list[str]:
    """The options sbatch reads from the script, split as its parser does (quotes, `#` comments), each
    checked to be one `--option=value`; sbatch stops reading them at the first command."""
    lines = text.splitlines()
    first_command = next(i for i, line in enumerate(lines) if line.strip() and not line.lstrip().startswith("#"))
    directives = []
    for number, line in enumerate(lines):
        if line.startswith("#SBATCH"):
            assert number < first_command, f"#SBATCH after the first command, ignored by sbatch: {line!r}"
            (token,) = shlex.split(line.removeprefix("#SBATCH"), comments=True)
            assert token.startswith("--"), line
            directives.append(token)
    return directives


def test_the_sbatch_script_quotes_file_names_and_runs_python_with_a_safe_path(
    tmp_path: Path, qa_file: Path, tiny_model: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    planted = tmp_path / "planted"
    written = write_recipe(tmp_path, tiny_model, qa_file)
    hostile = written.with_name("r\ntouch injected #.yaml")  # a line break in the recipe's file name
    written.rename(hostile)
    submit = tmp_path / "submit $(touch x) 'q'"  # the folder sbatch is run from: the job starts there
    submit.mkdir()
    (submit / "json.py").write_text(f"open({str(planted)!r}, 'w').close()\n")
    monkeypatch.chdir(submit)
    home = tmp_path / "runs"
    text = slurm.sbatch_script(hostile, load_recipe(hostile), home, ["data.held_out=8"], stages=["data"])
    script = tmp_path / "job.sbatch"
    script.write_text(text)

    assert subprocess.run(["bash", "-n", str(script)], capture_output=True).returncode == 0
    directives = sbatch_directives(text)  # nothing more, none lost
    assert [d.split("=", 1)[0] for d in directives[:4]] == ["--job-name", "--nodes", "--ntasks-per-node", "--output"]
    assert directives[3] == f"--output={home}/slurm/tiny-%j.out" and len(directives) <= 5  # + GPUs per node
    # SLURM's two commands, standing in for one machine: srun runs the task once, as node 0
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "scontrol").write_text("#!/bin/sh\necho 127.0.0.1\n")
    (bin_dir / "srun").write_text('#!/bin/bash\nshift\nSLURM_NODEID=0 exec "$@"\n')
    for tool in ("scontrol", "srun"):
        (bin_dir / tool).chmod(0o755)
    env = {**os.environ, "PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}", "SLURM_JOB_NODELIST": "n1"}
    env.pop("PYTHONSAFEPATH", None)
    done = subprocess.run(["bash", str(script)], env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert (home / "tiny" / "data" / "train.jsonl").is_file()  # the hostile recipe path arrived as one argument
    assert not (submit / "injected").exists() and not (submit / "x").exists()  # no second command from a name
    assert not planted.exists()  # the json.py in the submitting folder was never imported
    assert f"{sys.executable} -P -m workbench.cli" in text
