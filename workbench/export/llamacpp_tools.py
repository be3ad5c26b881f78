"""llama.cpp's own converter scripts, taken from the llama-cpp-python source distribution that matches
the installed version (no installed package carries them). Fetched once at set-up, so runs work offline.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tarfile
import tempfile
from importlib import metadata
from pathlib import Path

from workbench.core.common import PYTHON, child_env
from workbench.core.errors import ResourceError
from workbench.core.fsutil import atomic_dir

MEMBERS = ("convert_hf_to_gguf.py", "convert_lora_to_gguf.py", "conversion/", "gguf-py/")


class ToolsMissing(ResourceError):
    pass


def llama_cpp_version() -> str:
    return metadata.version("llama_cpp_python")


def tools_dir() -> Path:
    override = os.environ.get("WORKBENCH_LLAMA_CPP_TOOLS")
    if override:
        return Path(override)
    return Path(sys.prefix) / "share" / "workbench" / f"llama.cpp-{llama_cpp_version()}"


def converter() -> Path:
    script = tools_dir() / "convert_hf_to_gguf.py"
    if not script.is_file():
        raise ToolsMissing(f"llama.cpp converter not found in {tools_dir()}; run `workbench setup` (needs PyPI once)")
    return script


def converter_env() -> dict[str, str]:
    """The vendored gguf-py first on the path: the converter is written against it."""
    folder = tools_dir()
    path = os.pathsep.join([str(folder / "gguf-py"), str(folder), os.environ.get("PYTHONPATH", "")])
    return child_env(PYTHONPATH=path.rstrip(os.pathsep), NO_LOCAL_GGUF="")


def download_sdist(folder: Path) -> Path:
    """The llama-cpp-python source distribution matching the installed version (pip, PyPI or a mirror)."""
    version = llama_cpp_version()
    subprocess.run(
        [
            *PYTHON,
            "-m",
            "pip",
            "download",
            "--quiet",
            "--no-deps",
            "--no-binary",
            ":all:",
            f"llama-cpp-python=={version}",
            "-d",
            str(folder),
        ],
        check=True,
        env=child_env(),
    )
    return next(Path(folder).glob("llama_cpp_python-*.tar.gz"))


def extract_vendored(sdist: Path, dest: Path, members: tuple[str, ...] | None = None) -> None:
    """Its `vendor/llama.cpp` tree (or only `members` of it) into `dest`, atomically."""
    prefix = f"{sdist.name.removesuffix('.tar.gz')}/vendor/llama.cpp/"
    if dest.is_dir() and any(dest.iterdir()):  # atomic_dir never leaves a partial one: this is not ours
        raise ToolsMissing(f"{dest} exists and holds other files; move it away or choose another folder")
    with tarfile.open(sdist) as archive, atomic_dir(dest, root=dest.parent) as out:
        for member in archive.getmembers():
            if not member.name.startswith(prefix):
                continue
            relative = member.name[len(prefix) :]
            if relative and (members is None or relative.startswith(members)):
                member.name = relative
                archive.extract(member, out, filter="data")


def fetch(dest: Path | None = None) -> Path:
    """Download the matching sdist with pip and keep only the converter scripts."""
    dest = dest or tools_dir()
    if (dest / "convert_hf_to_gguf.py").is_file():
        return dest
    with tempfile.TemporaryDirectory() as tmp:
        print(
            f"fetching llama.cpp converter scripts from llama-cpp-python {llama_cpp_version()} sources ...", flush=True
        )
        extract_vendored(download_sdist(Path(tmp)), dest, MEMBERS)
    return dest
