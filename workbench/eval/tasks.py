"""lm-eval tasks for a run: the held-out split as a task, and the task YAMLs of `evals/` made runnable
from anywhere (their data files resolved to absolute paths)."""

from __future__ import annotations

import copy
import difflib
import glob
import shutil
from pathlib import Path
from typing import Any

import yaml

from workbench.core import parity, yamlfile
from workbench.core.errors import InputError
from workbench.data.files import write_jsonl

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

# What a task that is data may hand on. lm-eval passes `generation_kwargs` to transformers' `generate()`,
# where `custom_generate` with `trust_remote_code` imports and runs a Python file (and other modes fetch
# one from the Hub): only the sampling settings lm-eval documents pass, each with its kind of value.
GENERATION_KEYS = {
    "until": "stops",
    "max_gen_toks": "int",
    "max_new_tokens": "int",
    "do_sample": "bool",
    "temperature": "number",
    "top_p": "number",
    "top_k": "int",
    "min_p": "number",
    "typical_p": "number",
    "repetition_penalty": "number",
    "num_beams": "int",
}
# `dataset_path`, `dataset_name` and `dataset_kwargs` go to `datasets.load_dataset`: a Hub id or a folder
# there reaches the network or other files, `pandas` reads pickles, `sql` a database; and among the
# keyword arguments `revision`, `token`, `data_dir`, `cache_dir`, `storage_options`… reach further.
# Data is read from the task's own files through a file format, with that format's plain options.
DATASET_BUILDERS = ("arrow", "csv", "json", "parquet", "text")
DATASET_OPTIONS = (
    "field", "encoding", "encoding_errors", "sep", "delimiter", "header", "names", "column_names",
    "skiprows", "quotechar", "comment", "columns", "keep_linebreaks", "sample_by",
)  # fmt: skip
CODE_KEYS = ("custom_dataset", "class")  # Python objects, which only a `!function` tag can give
INSIDE = "untrusted task files read only files inside their folder (links followed)"


def _fits(value: Any, kind: str) -> bool:
    if kind == "stops":
        return isinstance(value, str) or (isinstance(value, list) and all(isinstance(v, str) for v in value))
    if kind == "bool" or isinstance(value, bool):
        return kind == "bool" and isinstance(value, bool)
    return isinstance(value, int) if kind == "int" else isinstance(value, int | float)


def _plain(value: Any) -> bool:
    scalar = (str, int, float, bool, type(None))
    return isinstance(value, scalar) or (isinstance(value, list) and all(isinstance(v, scalar) for v in value))


def _check_generation(config: dict[str, Any], source: Path) -> None:
    settings = config.get("generation_kwargs")
    if settings is None:
        return
    if not isinstance(settings, dict):
        raise TaskError(f"{source}: generation_kwargs: expected a mapping, got {settings!r:.80}; {ADVICE}")
    expected = {"stops": "a string or a list of strings", "int": "a whole number", "number": "a number"}
    for key, value in settings.items():
        kind = GENERATION_KEYS.get(key)
        if kind is None:
            raise TaskError(
                f"{source}: generation_kwargs.{key} is not a sampling setting a task file that is data may pass "
                f"to the model (allowed: {', '.join(GENERATION_KEYS)}); {ADVICE}"
            )
        if not _fits(value, kind):
            wanted = expected.get(kind, "true or false")
            raise TaskError(f"{source}: generation_kwargs.{key}: expected {wanted}, got {value!r:.80}; {ADVICE}")


def _check_dataset(config: dict[str, Any], source: Path) -> None:
    for key in CODE_KEYS:
        if key in config:
            raise TaskError(f"{source}: {key} names Python code to load the task; {ADVICE}")
    path, name, kwargs = config.get("dataset_path"), config.get("dataset_name"), config.get("dataset_kwargs")
    if path is not None and path not in DATASET_BUILDERS:
        raise TaskError(
            f"{source}: dataset_path {path!r:.80}: untrusted task files read their own data files through one "
            f"of the file formats {', '.join(DATASET_BUILDERS)}, not a Hub dataset, a folder or another "
            f"builder; {ADVICE}"
        )
    if name is not None and not isinstance(name, str):
        raise TaskError(f"{source}: dataset_name: expected a name, got {name!r:.80}; {ADVICE}")
    if kwargs is not None and not isinstance(kwargs, dict):
        raise TaskError(f"{source}: dataset_kwargs: expected a mapping, got {kwargs!r:.80}; {ADVICE}")
    for key, value in (kwargs or {}).items():
        if key != "data_files" and (key not in DATASET_OPTIONS or not _plain(value)):
            raise TaskError(
                f"{source}: dataset_kwargs.{key} is not a file-format option a task file that is data may pass "
                f"to datasets.load_dataset (allowed: data_files and {', '.join(DATASET_OPTIONS)}, with plain "
                f"values); {ADVICE}"
            )


def _check_data_files_given(config: dict[str, Any], source: Path) -> None:
    """After includes are merged: a task that names a file format names its files too."""
    kwargs = config.get("dataset_kwargs")
    if config.get("dataset_path") is not None and not (kwargs or {}).get("data_files"):
        raise TaskError(
            f"{source}: dataset_path {config['dataset_path']} needs dataset_kwargs.data_files (without them "
            f"datasets reads every file in the working folder); {ADVICE}"
        )
    for member in _members(config):
        _check_data_files_given(member, source)


def _members(config: dict[str, Any]) -> list[dict[str, Any]]:
    """The tasks written inside a group's `task:` list."""
    members = config.get("task")
    return [member for member in members if isinstance(member, dict)] if isinstance(members, list) else []


def _check_as_data(config: dict[str, Any], source: Path) -> None:
    """What a task may say when it is data: no task that runs generated code (`unsafe_code`), only metrics
    lm-eval registers and never a metric script, sampling settings only for generation, its own files in
    a file format for data; the same for a group's settings (lm-eval applies them to every member) and
    every task written inside a group's `task:` list. (Tags never get this far: data is loaded without
    them.)"""
    if config.get("unsafe_code"):
        raise TaskError(f"{source}: unsafe_code runs code the model writes; {ADVICE}")
    _check_generation(config, source)
    _check_dataset(config, source)
    for entry in config.get("metric_list") or []:
        if not isinstance(entry, dict) or not isinstance(entry.get("metric"), str):
            raise TaskError(f"{source}: metric_list entries need a metric name, got {entry!r:.80}")
        if entry.get("hf_evaluate"):
            raise TaskError(f"{source}: hf_evaluate loads a metric script ({entry['metric']}); {ADVICE}")
        check_metric(entry["metric"], f"{source}: metric_list")
    for member in _members(config):
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


def _inside(path: Path, root: Path, what: str, source: Path) -> Path:
    """`path` resolved (links followed), refused unless it lies inside `root`."""
    resolved = path.resolve()
    if not resolved.is_relative_to(root):
        raise TaskError(f"{source}: {what} is {resolved}, outside the task folder {root}: {INSIDE}; {ADVICE}")
    return resolved


def _local_files(name: Any, source: Path, root: Path) -> list[str]:
    """One `data_files` entry of an untrusted task as the absolute paths of the files it names; a pattern
    is expanded here (hidden matches too) so that each file lm-eval reads has been checked."""
    if not isinstance(name, str):
        raise TaskError(f"{source}: dataset_kwargs.data_files: expected file names, got {name!r:.80}; {ADVICE}")
    if "://" in name or "::" in name:
        raise TaskError(f"{source}: data file {name} is a URL, outside the task folder {root}: {INSIDE}; {ADVICE}")
    pattern = source.parent / name
    if not any(char in name for char in "*?["):
        return [str(_inside(pattern, root, f"data file {name}", source))]
    matches = sorted(glob.glob(str(pattern), recursive=True, include_hidden=True))
    if not matches:
        raise TaskError(f"{source}: data file {name} matches no file in {pattern.parent}")
    checked = [_inside(Path(match), root, f"data file {name} ({match})", source) for match in matches]
    read = [str(path) for match, path in zip(matches, checked, strict=True) if _read_by_datasets(match, name, source)]
    if not read:
        raise TaskError(f"{source}: data file {name} matches only hidden files in {pattern.parent}")
    return read


def _read_by_datasets(match: str, name: str, source: Path) -> bool:
    """Whether `datasets` reads this match of the pattern `name`: it skips hidden (`.x`) and `__x` files and
    folders the pattern does not name (`.ipynb_checkpoints/`, `__MACOSX/`), which are checked all the same."""
    named = [part for part in Path(name).parts if part.startswith((".", "__")) and part not in (".", "..")]
    for part in Path(match).relative_to(source.parent).parts:
        if part in (".", "..") or not part.startswith((".", "__")):
            continue
        if not any(part == given or (given[:1] == part[:1] and glob.has_magic(given)) for given in named):
            return False
    return True


def _check_data_files(config: dict[str, Any], source: Path, root: Path) -> None:
    """The data files of an untrusted task (and of the tasks inside a group's list) made absolute, each
    inside the task folder: a path out of it would put another file's lines into samples/*.jsonl."""
    kwargs = config.get("dataset_kwargs")
    files = kwargs.get("data_files") if isinstance(kwargs, dict) else None
    if isinstance(kwargs, dict) and isinstance(files, dict):
        kwargs["data_files"] = {split: _checked(names, source, root) for split, names in files.items()}
    elif isinstance(kwargs, dict) and files is not None:
        kwargs["data_files"] = _checked(files, source, root)
    for member in _members(config):
        _check_data_files(member, source, root)


def _checked(names: Any, source: Path, root: Path) -> str | list[str]:
    """A name or a list of names (of one split) checked; one file stays one name."""
    paths = [
        path for name in (names if isinstance(names, list) else [names]) for path in _local_files(name, source, root)
    ]
    return paths[0] if isinstance(names, str) and len(paths) == 1 else paths


class Includes:
    """`include:` resolution for the task files of one untrusted folder (`root`): each file read and
    checked once (a diamond of includes is not read again and again), cycles and files outside the folder
    refused."""

    def __init__(self, root: Path) -> None:
        self.root = root.resolve()
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
        _check_data_files(config, source, self.root)
        includes = config.pop("include", None)
        if includes is None:
            return config
        merged: dict[str, Any] = {}
        for name in includes if isinstance(includes, list) else [includes]:
            path = Path(str(name))
            path = path if path.is_absolute() else source.parent / path
            if not path.is_file():
                raise TaskError(f"{source}: include {name}: no such file ({path})")
            _inside(path, self.root, f"include {name}", source)
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


def _untrusted_copy(source: Path, includes: Includes) -> dict[str, Any]:
    _inside(source, includes.root, source.name, source)
    config = includes.flatten(source)
    _check_data_files_given(config, source)
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
    for number, folder in enumerate(folders):
        if not folder.is_dir():
            raise TaskError(f"eval task folder not found: {folder}")
        includes = Includes(folder)
        for source in task_files(folder):
            # a first look with tags kept as data only decides whether this is a task at all: other
            # YAML (a template others include, a CI file) is neither copied nor handed to lm-eval
            first = yamlfile.load(_text(source), str(source), keep_tags=True)
            if not _is_task(first):
                continue
            config = _trusted_copy(source, first) if trusted else _untrusted_copy(source, includes)
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
