"""`workbench publish`: one variant as a Hugging Face Hub repository — its files (the GGUF and its
Modelfile, or the checkpoint folder) and a model card — laid out under `<run>/publish/<variant>/`, then
uploaded with `huggingface_hub` for users with a token. `--dry-run` stops after laying it out."""

from __future__ import annotations

import os
import re
import shutil
from pathlib import Path

from workbench.core.errors import InputError, ResourceError, RunError
from workbench.core.fsutil import atomic_dir
from workbench.core.paths import run_folder
from workbench.core.store import Store
from workbench.pipeline import candidates as chat
from workbench.report import card, write

REPO = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*/[A-Za-z0-9][A-Za-z0-9._-]*$")


def check_repo(repo: str) -> str:
    if not REPO.match(repo) or ".." in repo or len(repo) > 96:
        raise InputError(f"--repo {repo!r}: expected OWNER/NAME (letters, digits, '.', '_', '-')")
    return repo


def link_or_copy(source: Path, dest: Path) -> None:
    """A hard link where the file system allows (no second copy of a large file), else a copy."""
    try:
        os.link(source, dest)
    except OSError:
        shutil.copy2(source, dest)


def lay_out(store: Store, home: Path, run_id: str, wanted: str, repo: str) -> Path:
    """The repository's files for one variant, in `<home>/<run>/publish/<variant>/` (replaced whole)."""
    check_repo(repo)
    found, _ = chat.for_run(store, run_id)
    candidate = chat.pick(found, [wanted])[0]
    variant = next((v for v in store.variants(run_id) if v.name == candidate.name), None)
    if variant is None:
        raise RunError(f"{candidate.label}: the base model is not this run's to publish; pick a variant")
    run_dir = run_folder(home, run_id)
    report = write.load(store, run_id, run_dir)
    source = Path(variant.path)
    with atomic_dir(run_dir / "publish" / variant.name, root=run_dir) as folder:
        if source.is_dir():
            for item in sorted(source.rglob("*")):
                if item.is_file() and item.name != "README.md":
                    (folder / item.relative_to(source)).parent.mkdir(parents=True, exist_ok=True)
                    link_or_copy(item, folder / item.relative_to(source))
        else:
            link_or_copy(source, folder / source.name)
            if variant.meta.get("lora"):  # an adapter variant: the base file and the adapter
                link_or_copy(Path(variant.meta["lora"]), folder / Path(variant.meta["lora"]).name)
            modelfile = (variant.meta.get("serving") or {}).get("modelfile")
            if modelfile and (source.parent / modelfile).is_file():
                link_or_copy(source.parent / modelfile, folder / modelfile)
        (folder / "README.md").write_text(card.model_card(report, variant, repo), encoding="utf-8")
    return run_dir / "publish" / variant.name


def upload(folder: Path, repo: str, private: bool) -> str:
    """Create the repository when it is missing and upload the folder; its URL. Needs a token (`HF_TOKEN` or
    `huggingface-cli login`) and the network."""
    from huggingface_hub import HfApi
    from huggingface_hub.errors import HfHubHTTPError, LocalTokenNotFoundError, OfflineModeIsEnabled

    api = HfApi()
    try:
        api.create_repo(repo, private=private, exist_ok=True)
        api.upload_folder(folder_path=folder, repo_id=repo, commit_message="Upload from workbench")
    except LocalTokenNotFoundError:
        raise ResourceError("no Hugging Face token: set HF_TOKEN or run `huggingface-cli login`") from None
    except OfflineModeIsEnabled:
        raise ResourceError("HF_HUB_OFFLINE is set: unset it to upload (or use --dry-run)") from None
    except HfHubHTTPError as exc:
        raise ResourceError(f"the Hub refused the upload to {repo}: {exc}") from None
    return f"https://huggingface.co/{repo}"
