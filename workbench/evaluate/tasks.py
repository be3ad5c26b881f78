"""lm-eval tasks for a run: the held-out split as a task, and the task YAMLs of `evals/` made runnable
from anywhere (their data files resolved to absolute paths)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import yaml

from workbench import parity
from workbench.errors import InputError

BUILTIN_EVALS = Path(__file__).resolve().parents[2] / "evals"
HELDOUT = "heldout"


class TaskError(InputError, ValueError):
    pass


def _write_jsonl(path: Path, rows: list[dict[str, Any]]) -> None:
    path.write_text("".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows), encoding="utf-8")


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
        _write_jsonl(data_file, [{"text": row["text"]} for row in rows])
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
        _write_jsonl(data_file, docs)
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
        _write_jsonl(data_file, docs)
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
    files = (config.get("dataset_kwargs") or {}).get("data_files")
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


def copy_task_folders(folders: list[Path], out: Path) -> list[str]:
    """Copy every task YAML under `folders` into `out` with data files made absolute; returns task names.

    YAMLs must load with `yaml.safe_load`: lm-eval's `!function` tag imports Python code, which a
    recipe must not be able to run.
    """
    names = []
    for number, folder in enumerate(folders):
        if not folder.is_dir():
            raise TaskError(f"eval task folder not found: {folder}")
        for source in sorted(folder.rglob("*.yaml")):
            try:
                config = yaml.safe_load(source.read_text(encoding="utf-8"))
            except yaml.YAMLError as exc:
                raise TaskError(
                    f"{source}: not plain YAML ({getattr(exc, 'problem', exc)}); tags such as !function "
                    "run code and are not allowed in task files"
                ) from None
            if not isinstance(config, dict) or not ("task" in config or "group" in config):
                continue
            _resolve_data_files(config, source.parent)
            relative = source.relative_to(folder)
            target = out / f"{number}" / relative
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_text(yaml.safe_dump(config, sort_keys=False), encoding="utf-8")
            names.append(str(config.get("group") or config["task"]))
    return names
