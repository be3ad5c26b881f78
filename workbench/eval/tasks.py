"""lm-eval tasks for a run: the held-out split as a task, and the task YAMLs of `evals/` made runnable
from anywhere (their data files resolved to absolute paths)."""

from __future__ import annotations

import copy
import difflib
import shutil
from pathlib import Path
from typing import Any

import yaml

from workbench import parity, yamlfile
from workbench.data.files import write_jsonl
from workbench.errors import InputError

BUILTIN_EVALS = Path(__file__).resolve().parents[2] / "evals"
HELDOUT = "heldout"


class TaskError(InputError, ValueError):
    pass


def json_task(data_file: Path | str, name: str = HELDOUT) -> dict[str, Any]:
    """An lm-eval task config reading a local JSON-lines file (relative: to the YAML) as its test split."""
    return {
        "task": name,
        "dataset_path": "json",
        "dataset_kwargs": {"data_files": {"test": str(data_file)}},
        "test_split": "test",
        "metadata": {"version": 1.0},
    }


def heldout_task(
    rows: list[dict[str, Any]], tokenizer: Any, out: Path, metric: str, max_gen_tokens: int | None
) -> dict[str, Any]:
    """Write the held-out split as an lm-eval task into `out` (data file beside the YAML, referenced
    relatively so the folder can move; `copy_task_folders` makes it runnable); returns the task config.

    Chat rows are rendered through the training tokenizer's chat template, so every backend is asked the
    exact prompt training used (serving parity checks that each variant's own template agrees). Text rows
    become a perplexity task; preference rows a choice between the chosen and rejected reply.
    """
    if not rows:
        raise TaskError("the held-out split is empty; set data.held_out to evaluate on it")
    data_file = out / f"{HELDOUT}.jsonl"
    kind = "text" if "text" in rows[0] else "preference" if "chosen" in rows[0] else "messages"
    if kind == "text":
        write_jsonl(data_file, [{"text": row["text"]} for row in rows])
        config = {
            **json_task(data_file.name),
            "output_type": "loglikelihood_rolling",
            "doc_to_text": "",
            "doc_to_target": "text",
            "metric_list": [{"metric": "word_perplexity"}, {"metric": "bits_per_byte"}],
        }
    elif kind == "preference":
        docs = [
            {
                "prompt": tokenizer.apply_chat_template(row["prompt"], add_generation_prompt=True, tokenize=False),
                "choices": [row["chosen"][-1]["content"], row["rejected"][-1]["content"]],
            }
            for row in rows
        ]
        write_jsonl(data_file, docs)
        config = {
            **json_task(data_file.name),
            "output_type": "multiple_choice",
            "doc_to_text": "prompt",
            "doc_to_choice": "choices",
            "doc_to_target": 0,
            "target_delimiter": "",
            "metric_list": [{"metric": "acc", "aggregation": "mean", "higher_is_better": True}],
        }
    else:
        docs = [
            {
                "prompt": tokenizer.apply_chat_template(
                    row["messages"][:-1], add_generation_prompt=True, tokenize=False
                ),
                "answer": row["messages"][-1]["content"],
            }
            for row in rows
        ]
        write_jsonl(data_file, docs)
        end = parity.training_end_of_turn(tokenizer, rows[0]["messages"])
        until = [tokenizer.decode([end])] if end is not None else []
        longest = max(len(tokenizer(doc["answer"], add_special_tokens=False)["input_ids"]) for doc in docs)
        config = {
            **json_task(data_file.name),
            "output_type": "generate_until",
            "doc_to_text": "prompt",
            "doc_to_target": "answer",
            "target_delimiter": "",
            "generation_kwargs": {
                "until": until,
                "max_gen_toks": max_gen_tokens or longest * 2 + 8,  # enough for any answer; cuts off rambling
                "do_sample": False,
            },
            "filter_list": [
                {"name": "strip", "filter": [{"function": "remove_whitespace"}, {"function": "take_first"}]}
            ],
            "metric_list": [{"metric": metric, "aggregation": "mean", "higher_is_better": True}],
        }
    (out / f"{HELDOUT}.yaml").write_text(yaml.safe_dump(config, sort_keys=False), encoding="utf-8")
    return config


def _resolve_data_files(config: dict[str, Any], folder: Path) -> None:
    kwargs = config.get("dataset_kwargs")
    files = kwargs.get("data_files") if isinstance(kwargs, dict) else None
    if files is None:
        return

    def absolute(value: Any) -> Any:
        if isinstance(value, str):
            path = Path(value)
            return str(path if path.is_absolute() else (folder / path).resolve())
        if isinstance(value, list):
            return [absolute(item) for item in value]
        if isinstance(value, dict):
            return {key: absolute(item) for key, item in value.items()}
        return value

    config["dataset_kwargs"]["data_files"] = absolute(files)


def registered_metrics() -> list[str] | None:
    """Metric names lm-eval registers (anything else would make it load a metric script by that name);
    None without lm-eval (the `stack` extra), where nothing can be evaluated anyway."""
    try:
        import lm_eval.api.metrics  # noqa: F401 - registers them
        from lm_eval.api.registry import metric_registry
    except ImportError:
        return None
    return sorted(metric_registry.keys())


def check_metric(name: str, where: str = "eval.metric") -> None:
    known = registered_metrics()
    if known is not None and name not in known:
        guess = difflib.get_close_matches(name, known, n=3)
        hint = f"did you mean {', '.join(guess)}?" if guess else f"known: {', '.join(known)}"
        raise TaskError(f"{where}: {name!r} is not a metric lm-eval registers; {hint}")


ADVICE = "set eval.trust_task_code: true in the recipe if you trust this folder's code"


def _check_as_data(config: dict[str, Any], source: Path) -> None:
    """What a task may say when it is data: no task that runs generated code (`unsafe_code`), only metrics
    lm-eval registers and never a metric script; the same for every task written inside a group's
    `task:` list. (Tags never get this far: data is loaded without them.)"""
    if config.get("unsafe_code"):
        raise TaskError(f"{source}: unsafe_code runs code the model writes; {ADVICE}")
    for entry in config.get("metric_list") or []:
        if not isinstance(entry, dict) or not isinstance(entry.get("metric"), str):
            raise TaskError(f"{source}: metric_list entries need a metric name, got {entry!r:.80}")
        if entry.get("hf_evaluate"):
            raise TaskError(f"{source}: hf_evaluate loads a metric script ({entry['metric']}); {ADVICE}")
        check_metric(entry["metric"], f"{source}: metric_list")
    members = config.get("task")
    for member in members if isinstance(members, list) else []:
        if isinstance(member, dict):
            if "include" in member:
                raise TaskError(f"{source}: include inside a group's task list; give that task a file of its own")
            _check_as_data(member, source)


def _text(source: Path) -> str:
    try:
        return source.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise TaskError(f"{source}: cannot read ({exc})") from None


def _mapping(config: Any, source: Path) -> dict[str, Any]:
    if not isinstance(config, dict):
        raise TaskError(f"{source}: expected a mapping of task settings, got {type(config).__name__}")
    return config


def _read_as_data(source: Path) -> dict[str, Any]:
    """A task file as plain data: any tag, anywhere (values, keys, sets), is refused."""
    try:
        config = _mapping(yamlfile.load(_text(source), str(source)), source)
    except yamlfile.TagError as exc:
        raise TaskError(f"{exc}: tags run Python code from the task folder; {ADVICE}") from None
    _check_as_data(config, source)
    return config


class Includes:
    """`include:` resolution for one copy: each file read and checked once (a diamond of includes is not
    read again and again), cycles refused."""

    def __init__(self) -> None:
        self.done: dict[Path, dict[str, Any]] = {}

    def flatten(self, source: Path, seen: tuple[Path, ...] = ()) -> dict[str, Any]:
        """A task file with its includes merged in as lm-eval merges them (included first, own keys win),
        every included file checked as data: nothing reaches lm-eval's own loader unread."""
        source = source.resolve()
        if source in seen:
            raise TaskError(f"{seen[-1]}: include cycle through {source}")
        if source not in self.done:
            self.done[source] = self._merge(source, seen)
        return copy.deepcopy(self.done[source])

    def _merge(self, source: Path, seen: tuple[Path, ...]) -> dict[str, Any]:
        config = _read_as_data(source)
        _resolve_data_files(config, source.parent)
        includes = config.pop("include", None)
        if includes is None:
            return config
        merged: dict[str, Any] = {}
        for name in includes if isinstance(includes, list) else [includes]:
            path = Path(str(name))
            path = path if path.is_absolute() else source.parent / path
            if not path.is_file():
                raise TaskError(f"{source}: include {name}: no such file ({path})")
            included = self.flatten(path, (*seen, source))
            included.pop("task_list", None)
            merged.update(included)
        merged.update(config)
        return merged


def _trusted_copy(source: Path, config: dict[str, Any]) -> dict[str, Any]:
    """A trusted task file as it is (tags kept for lm-eval's loader), its includes and data files made
    absolute so the copy still finds them."""
    _resolve_data_files(config, source.parent)
    includes = config.get("include")
    if includes is not None:
        names = includes if isinstance(includes, list) else [includes]
        absolute = [str((source.parent / str(name)).resolve()) for name in names]
        config["include"] = absolute if isinstance(includes, list) else absolute[0]
    return config


def _is_task(config: Any) -> bool:
    return isinstance(config, dict) and ("task" in config or "group" in config)


def task_files(folder: Path) -> list[Path]:
    """`.yaml` and `.yml` files under `folder`, outside hidden folders (`.github/`, `.git/`)."""
    found = [p for p in folder.rglob("*") if p.suffix in (".yaml", ".yml") and p.is_file()]
    return sorted(p for p in found if not any(part.startswith(".") for part in p.relative_to(folder).parts[:-1]))


def copy_task_folders(folders: list[Path], out: Path, trusted: bool = False) -> list[str]:
    """Copy every task YAML under `folders` into `out` (data files made absolute); returns task names.

    Task folders are data unless `trusted` (the recipe's `eval.trust_task_code`): then `!function`,
    `unsafe_code` and metric scripts are allowed and the folders' Python files are copied along.
    """
    names = []
    includes = Includes()
    for number, folder in enumerate(folders):
        if not folder.is_dir():
            raise TaskError(f"eval task folder not found: {folder}")
        for source in task_files(folder):
            # a first look with tags kept as data only decides whether this is a task at all: other
            # YAML (a template others include, a CI file) is neither copied nor handed to lm-eval
            first = yamlfile.load(_text(source), str(source), keep_tags=True)
            if not _is_task(first):
                continue
            config = _trusted_copy(source, first) if trusted else includes.flatten(source)
            relative = source.relative_to(folder).with_suffix(".yaml")
            target = out / f"{number}" / relative
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_text(yamlfile.dump(config, str(source)), encoding="utf-8")
            names.append(str(config.get("group") or config["task"]))
        if trusted:
            for code in folder.rglob("*.py"):
                target = out / f"{number}" / code.relative_to(folder)
                target.parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(code, target)
    return names
