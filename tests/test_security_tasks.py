"""Task files named in eval.include are data: nothing in them reaches code (transformers' `generate()`,
`datasets.load_dataset`) or files outside their folder, unless the recipe trusts the folder."""

from __future__ import annotations

import os
import re
from pathlib import Path

import pytest
import yaml
from test_security import task_folder

from workbench import workers
from workbench.core.paths import BUILTIN_EVALS
from workbench.eval import tasks
from workbench.eval.worker import EvalJob

DATA = "dataset_path: json\ndataset_kwargs: {{data_files: {{test: {data}}}}}\ntest_split: test\n"
GENERATE = "output_type: generate_until\ndoc_to_text: q\ndoc_to_target: a\nmetric_list: [{metric: exact_match}]\n"


def task(name: str = "t", data: str = "d.jsonl", extra: str = "") -> str:
    return f"task: {name}\n" + DATA.format(data=data) + extra


def copied(out: Path, relative: str = "t.yaml") -> dict:
    return yaml.safe_load((out / "0" / relative).read_text())


# 1. generation_kwargs go to transformers' generate(): sampling settings only


def evil_generate(root: Path, marker: Path) -> Path:
    """A task whose generation settings make transformers import `<gen>/custom_generate/generate.py`."""
    gen = root / "gen"
    (gen / "custom_generate").mkdir(parents=True)
    (gen / "custom_generate" / "generate.py").write_text(
        f"from pathlib import Path\n\ndef generate(model, **kwargs):\n    Path({str(marker)!r}).write_text('ran')\n"
        "    return kwargs['input_ids']\n"
    )
    settings = f"generation_kwargs: {{until: ['\\n'], max_gen_toks: 2, custom_generate: {str(gen)!r}, "
    extra = GENERATE + settings + "trust_remote_code: true}\n"
    return task_folder(root, {"t.yaml": task("evil", extra=extra), "d.jsonl": '{"q": "1+1", "a": "2"}\n'})


def test_custom_generate_in_an_untrusted_task_is_refused_and_really_runs_code_when_trusted(
    tmp_path: Path, tiny_model: Path
) -> None:
    marker = tmp_path / "ran"
    folder = evil_generate(tmp_path, marker)
    with pytest.raises(tasks.TaskError, match=r"t.yaml: generation_kwargs.custom_generate is not .*trust_task_code"):
        tasks.copy_task_folders([folder], tmp_path / "untrusted")

    # the same folder, trusted, in the eval.model worker with lm-eval's hf model: the file runs
    out = tmp_path / "trusted"
    assert tasks.copy_task_folders([folder], out, trusted=True) == ["evil"]
    job = EvalJob(
        name="base",
        format="hf",
        path=str(tiny_model),
        out=tmp_path / "eval",
        tasks=["evil"],
        include=out,
        include_defaults=False,
        limit=1,
        num_fewshot=None,
        seed=1,
        batch_size=1,
        max_length=64,
        bootstrap_iters=0,
        device="cpu",
    )
    workers.run("eval.model", job, name="base", log=tmp_path / "eval.log", timeout=300)
    assert marker.read_text() == "ran", (tmp_path / "eval.log").read_text()[-2000:]


@pytest.mark.parametrize(
    ("settings", "refusal"),
    [
        ("{until: ['\\n'], trust_remote_code: true}", "generation_kwargs.trust_remote_code is not"),
        ("{custom_generate: attacker/repo}", "generation_kwargs.custom_generate is not"),
        ("{penalty_alpha: 0.6, top_k: 4}", "generation_kwargs.penalty_alpha is not"),  # a mode loaded from the Hub
        ("{assistant_model: attacker/draft}", "generation_kwargs.assistant_model is not"),
        ("{cache_implementation: offloaded}", "generation_kwargs.cache_implementation is not"),
        ("{temperature: {a: 1}}", r"generation_kwargs.temperature: expected a number"),
        ("{until: [1, 2]}", r"generation_kwargs.until: expected a string or a list of strings"),
        ("{do_sample: 'yes'}", r"generation_kwargs.do_sample: expected true or false"),
        ("[until]", "generation_kwargs: expected a mapping"),
    ],
)
def test_generation_settings_of_untrusted_tasks_are_an_allow_list(tmp_path: Path, settings: str, refusal: str) -> None:
    folder = task_folder(tmp_path, {"t.yaml": task(extra=GENERATE + f"generation_kwargs: {settings}\n")})
    with pytest.raises(tasks.TaskError, match=f"t.yaml: {refusal}") as refused:
        tasks.copy_task_folders([folder], tmp_path / "out")
    assert "eval.trust_task_code: true" in str(refused.value)


def test_plain_sampling_settings_pass_and_reach_groups_and_includes(tmp_path: Path) -> None:
    settings = (
        "generation_kwargs: {until: ['\\n', '</s>'], max_gen_toks: 16, do_sample: true, temperature: 0.7, "
        "top_p: 0.9, top_k: 40, min_p: 0.05, repetition_penalty: 1.1, num_beams: 1, max_new_tokens: 16}\n"
    )
    folder = task_folder(tmp_path, {"t.yaml": task(extra=GENERATE + settings), "d.jsonl": ""})
    assert tasks.copy_task_folders([folder], tmp_path / "out") == ["t"]
    assert copied(tmp_path / "out")["generation_kwargs"]["top_k"] == 40

    evil = "generation_kwargs: {custom_generate: /x, trust_remote_code: true}\n"
    for name, files in {
        "group-level": {"g.yaml": "group: g\ntask: [t]\n" + evil},  # lm-eval applies it to every member
        "member": {"g.yaml": "group: g\ntask:\n  - task: hellaswag\n    generation_kwargs: {custom_generate: /x}\n"},
        "included": {"t.yaml": "include: _base.yaml\ntask: t\n", "_base.yaml": DATA.format(data="d.jsonl") + evil},
    }.items():
        with pytest.raises(tasks.TaskError, match="generation_kwargs.custom_generate"):
            tasks.copy_task_folders([task_folder(tmp_path, files, name)], tmp_path / f"out-{name}")


# 1. dataset_path, dataset_name, dataset_kwargs go to datasets.load_dataset: local files in a file format


@pytest.mark.parametrize(
    ("config", "refusal"),
    [
        ("task: t\ndataset_path: attacker/dataset\n", "dataset_path 'attacker/dataset': untrusted"),
        ("task: t\ndataset_path: /home/u/.ssh\n", "dataset_path '/home/u/.ssh'"),
        ("task: t\ndataset_path: .\n", r"dataset_path '\.'"),
        ("task: t\ndataset_path: pandas\ndataset_kwargs: {data_files: d.pkl}\n", "dataset_path 'pandas'"),  # pickles
        ("task: t\ndataset_path: sql\n", "dataset_path 'sql'"),
        ("task: t\ndataset_path: json\n", "needs dataset_kwargs.data_files"),  # else: every file in the cwd
        ("task: t\ndataset_path: text\ndataset_kwargs: {data_files: {}}\n", "needs dataset_kwargs.data_files"),
        (task(extra="dataset_name: [a]\n"), "dataset_name: expected a name"),
        ("task: t\ndataset_path: json\ndataset_kwargs: [a]\n", "dataset_kwargs: expected a mapping"),
        (task(extra="custom_dataset: x\n"), "custom_dataset names Python code"),
        (task(extra="class: x\n"), "class names Python code"),
        (
            "group: g\ntask:\n  - task: hellaswag\n    dataset_path: attacker/dataset\n",
            "dataset_path 'attacker/dataset'",
        ),
    ]
    + [
        (f"task: t\ndataset_path: json\ndataset_kwargs: {{data_files: d.jsonl, {key}: {value}}}\n", key)
        for key, value in [
            ("trust_remote_code", "true"),
            ("revision", "main"),
            ("token", "hf_x"),
            ("data_dir", "/home/u"),
            ("cache_dir", "/tmp/elsewhere"),
            ("storage_options", "{anon: true}"),
            ("download_mode", "force_redownload"),
            ("num_proc", "64"),
            ("streaming", "true"),
            ("features", "{a: string}"),
            ("field", "{a: b}"),  # an allowed option, but not a plain value
        ]
    ],
)
def test_dataset_settings_of_untrusted_tasks_name_only_local_files_in_a_file_format(
    tmp_path: Path, config: str, refusal: str
) -> None:
    folder = task_folder(tmp_path, {"t.yaml": config, "d.jsonl": ""})
    with pytest.raises(tasks.TaskError, match=f"t.yaml: .*{refusal}") as refused:
        tasks.copy_task_folders([folder], tmp_path / "out")
    assert "eval.trust_task_code: true" in str(refused.value)


def test_file_format_options_and_every_file_format_pass(tmp_path: Path) -> None:
    files = {
        "a.yaml": task("a", extra="dataset_name: mine\n").replace("{test: d.jsonl}", "{test: d.jsonl}, field: rows"),
        "b.yaml": "task: b\ndataset_path: csv\ndataset_kwargs: {data_files: d.csv, sep: ';', column_names: [q, a]}\n",
        "c.yaml": "task: c\ndataset_path: text\ndataset_kwargs: {data_files: [d.txt], sample_by: paragraph}\n",
        "d.yaml": "task: d\ndataset_path: parquet\ndataset_kwargs: {data_files: d.parquet, columns: [q]}\n",
        "e.yaml": "task: e\ndataset_path: arrow\ndataset_kwargs: {data_files: {test: [d.arrow]}}\n",
    }
    folder = task_folder(tmp_path, files)
    assert tasks.copy_task_folders([folder], tmp_path / "out") == ["a", "b", "c", "d", "e"]
    assert copied(tmp_path / "out", "b.yaml")["dataset_kwargs"]["sep"] == ";"


# 3. data files and includes of untrusted tasks lie inside the task folder (resolved, links followed)


@pytest.fixture
def secret(tmp_path: Path) -> Path:
    outside = tmp_path / "home" / ".ssh"
    outside.mkdir(parents=True)
    (outside / "id_rsa").write_text('{"q": "-----BEGIN OPENSSH PRIVATE KEY-----", "a": "x"}\n')
    return outside / "id_rsa"


def test_data_files_outside_the_task_folder_are_refused(tmp_path: Path, secret: Path) -> None:
    cases = {
        "absolute": {"t.yaml": task(data=str(secret))},
        "dotdot": {"t.yaml": task(data="../home/.ssh/id_rsa")},
        "list": {"t.yaml": task(data=f"[d.jsonl, {secret}]"), "d.jsonl": ""},
        "split list": {"t.yaml": task().replace("{test: d.jsonl}", f"{{test: [d.jsonl, {secret}]}}")},
        "included": {"t.yaml": "include: _base.yaml\ntask: t\n", "_base.yaml": DATA.format(data=str(secret))},
        "member": {"t.yaml": f"group: g\ntask:\n  - task: m\n    dataset_kwargs: {{data_files: {secret}}}\n"},
        "url": {"t.yaml": task(data="'zip://id_rsa::/home/u/keys.zip'")},
    }
    for name, files in cases.items():
        folder = task_folder(tmp_path, files, name)
        with pytest.raises(tasks.TaskError, match=r"(t|_base).yaml: data file .* outside the task folder") as refused:
            tasks.copy_task_folders([folder], tmp_path / f"out-{name}")
        assert "read only files inside their folder" in str(refused.value), name
        assert not (tmp_path / f"out-{name}").exists() or not list((tmp_path / f"out-{name}").rglob("*.yaml"))


def test_links_out_of_the_task_folder_are_followed_and_refused(tmp_path: Path, secret: Path) -> None:
    linked = task_folder(tmp_path, {"t.yaml": task()}, "linked")
    (linked / "d.jsonl").symlink_to(secret)
    folder_link = task_folder(tmp_path, {"t.yaml": task(data="keys/id_rsa")}, "folder-link")
    (folder_link / "keys").symlink_to(secret.parent)
    pattern = task_folder(tmp_path, {"t.yaml": task(data="'*'"), "a.jsonl": ""}, "pattern")
    (pattern / ".hidden").symlink_to(secret)  # a pattern's matches are checked one by one, hidden ones too
    for folder in (linked, folder_link, pattern):
        with pytest.raises(tasks.TaskError, match=f"data file .* is {re.escape(str(secret))}, outside the task folder"):
            tasks.copy_task_folders([folder], tmp_path / f"out-{folder.name}")

    nothing = task_folder(tmp_path, {"t.yaml": task(data="'*.parquet'")}, "no-match")
    with pytest.raises(tasks.TaskError, match=r"data file \*.parquet matches no file"):
        tasks.copy_task_folders([nothing], tmp_path / "out-none")


def test_data_files_inside_the_folder_pass_as_resolved_paths(tmp_path: Path) -> None:
    folder = task_folder(
        tmp_path,
        {"sub/t.yaml": task(data="'../data/*.jsonl'"), "data/a.jsonl": "", "data/b.jsonl": "", "one.jsonl": ""},
    )
    (folder / "data" / "c.jsonl").symlink_to(folder / "one.jsonl")  # a link that stays inside
    linked_home = tmp_path / "linked-home"
    linked_home.symlink_to(folder)  # eval.include may itself be a link
    assert tasks.copy_task_folders([linked_home], tmp_path / "out") == ["t"]
    files = copied(tmp_path / "out", "sub/t.yaml")["dataset_kwargs"]["data_files"]["test"]
    assert files == [str(folder / "data" / "a.jsonl"), str(folder / "data" / "b.jsonl"), str(folder / "one.jsonl")]


def test_a_pattern_passes_on_only_the_files_datasets_reads(tmp_path: Path) -> None:
    files = {
        "t.yaml": task(data="'data/**/*.jsonl'"),
        "data/a.jsonl": "",
        "data/.ipynb_checkpoints/a-checkpoint.jsonl": "",
    }
    files |= {"data/__MACOSX/data/._a.jsonl": "", "h.yaml": task("h", data="'data/.ipynb_checkpoints/*.jsonl'")}
    folder = task_folder(tmp_path, files)
    assert sorted(tasks.copy_task_folders([folder], tmp_path / "out")) == ["h", "t"]
    assert copied(tmp_path / "out")["dataset_kwargs"]["data_files"]["test"] == str(folder / "data" / "a.jsonl")
    named = copied(tmp_path / "out", "h.yaml")["dataset_kwargs"]["data_files"]["test"]  # a pattern naming it reads it
    assert named == str(folder / "data" / ".ipynb_checkpoints" / "a-checkpoint.jsonl")


def test_includes_outside_the_task_folder_are_refused(tmp_path: Path, secret: Path) -> None:
    (tmp_path / "elsewhere.yaml").write_text(DATA.format(data="d.jsonl"))
    for name, files in {
        "dotdot": {"t.yaml": "include: ../elsewhere.yaml\ntask: t\n"},
        "absolute": {"t.yaml": f"include: {tmp_path / 'elsewhere.yaml'}\ntask: t\n"},
        "nested": {"t.yaml": "include: _a.yaml\ntask: t\n", "_a.yaml": "include: ../elsewhere.yaml\n"},
    }.items():
        folder = task_folder(tmp_path, files, name)
        with pytest.raises(tasks.TaskError, match=r"include \S*elsewhere.yaml is .* outside the task folder"):
            tasks.copy_task_folders([folder], tmp_path / f"out-{name}")

    linked = task_folder(tmp_path, {"t.yaml": "include: _base.yaml\ntask: t\n"}, "linked")
    (linked / "_base.yaml").symlink_to(tmp_path / "elsewhere.yaml")
    with pytest.raises(
        tasks.TaskError, match=f"include _base.yaml is {re.escape(str(tmp_path / 'elsewhere.yaml'))}, outside"
    ):
        tasks.copy_task_folders([linked], tmp_path / "out-linked")

    task_link = tmp_path / "task-link"
    task_link.mkdir()
    (task_link / "t.yaml").symlink_to(tmp_path / "elsewhere.yaml")  # a task file that is a link out
    (tmp_path / "elsewhere.yaml").write_text(task(data="d.jsonl"))
    with pytest.raises(tasks.TaskError, match="t.yaml is .*elsewhere.yaml, outside the task folder"):
        tasks.copy_task_folders([task_link], tmp_path / "out-task-link")


def test_trusted_folders_keep_their_settings(tmp_path: Path, secret: Path) -> None:
    extra = GENERATE + "generation_kwargs: {custom_generate: /x, trust_remote_code: true}\n"
    files = {
        "t.yaml": f"task: t\ndataset_path: json\ndataset_kwargs: {{data_files: {secret}, revision: main}}\n" + extra,
        "u.yaml": "include: ../elsewhere.yaml\ntask: u\n",
    }
    (tmp_path / "elsewhere.yaml").write_text(DATA.format(data="d.jsonl"))
    folder = task_folder(tmp_path, files)
    assert tasks.copy_task_folders([folder], tmp_path / "out", trusted=True) == ["t", "u"]
    config = copied(tmp_path / "out")
    assert config["generation_kwargs"]["custom_generate"] == "/x"
    assert config["dataset_kwargs"] == {"data_files": str(secret), "revision": "main"}
    assert os.path.isabs(copied(tmp_path / "out", "u.yaml")["include"])


def test_the_workbench_own_tasks_pass_as_data(tmp_path: Path, tiny_model: Path) -> None:
    from transformers import AutoTokenizer

    rows = [{"messages": [{"role": "user", "content": "2 + 2?"}, {"role": "assistant", "content": "4"}]}]
    run_tasks = tmp_path / "tasks"
    run_tasks.mkdir()
    tasks.heldout_task(rows, AutoTokenizer.from_pretrained(tiny_model), run_tasks, "exact_match", None)
    names = tasks.copy_task_folders([run_tasks, BUILTIN_EVALS], tmp_path / "out")
    assert {"heldout", "general", "general_mc", "stdlib_docs"} <= set(names)
    assert copied(tmp_path / "out", "heldout.yaml")["dataset_kwargs"]["data_files"]["test"] == str(
        run_tasks.resolve() / "heldout.jsonl"
    )
