"""llama.cpp's own `llama-bench`, built from the same vendored llama.cpp source the installed
llama-cpp-python was built from, so the workbench's llama.cpp numbers can be checked against it."""

from __future__ import annotations

import hashlib
import json
import os
import shlex
import shutil
import subprocess
import tempfile
from pathlib import Path
from typing import Any

from workbench.core.devices import usable_cores
from workbench.export import llamacpp_tools

CMAKE_FLAGS = [
    "-DCMAKE_BUILD_TYPE=Release",
    "-DLLAMA_CURL=OFF",
    "-DLLAMA_BUILD_TESTS=OFF",
    "-DLLAMA_BUILD_EXAMPLES=OFF",
    "-DLLAMA_BUILD_SERVER=OFF",
]


def build_dir(flavour: str = "installed", cmake_args: list[str] | None = None) -> Path:
    """Per flavour and per CMake arguments: a build with other flags is another folder."""
    digest = hashlib.sha256(shlex.join(cmake_args or []).encode()).hexdigest()[:8]
    name = f"llama.cpp-{llamacpp_tools.llama_cpp_version()}-build-{flavour}-{digest}"
    return llamacpp_tools.tools_dir().with_name(name)


def installed_cmake_args() -> list[str]:
    """The CMake arguments the installed llama-cpp-python was built with, as `make install` recorded them."""
    from workbench.doctor import llama_build

    return shlex.split((llama_build() or {}).get("cmake_args") or "")


def find_or_build(target: str = "llama-bench") -> Path:
    """$WORKBENCH_LLAMA_BENCH (for llama-bench); one of the tools `workbench setup` built (llama-perplexity);
    else `target` built with the installed llama-cpp-python's flags."""
    override = os.environ.get("WORKBENCH_LLAMA_BENCH") if target == "llama-bench" else None
    if override:
        return Path(override)
    if target in llamacpp_tools.TOOLS:
        return llamacpp_tools.binary(target)
    return build(installed_cmake_args(), target=target)


def build(cmake_args: list[str], flavour: str = "installed", target: str = "llama-bench") -> Path:
    """A llama.cpp tool (llama-bench, llama-perplexity) from the vendored sources with `cmake_args`, kept
    per flavour (an earlier build is reused). Needs cmake, a C++ compiler and the llama-cpp-python sdist
    from PyPI once; a few minutes on 2 cores."""
    binary = build_dir(flavour, cmake_args) / "bin" / target
    if binary.is_file():
        return binary
    if not shutil.which("cmake"):
        raise RuntimeError(f"building {target} needs cmake on PATH (or set WORKBENCH_LLAMA_BENCH)")
    source = llamacpp_tools.tools_dir().with_name(f"llama.cpp-{llamacpp_tools.llama_cpp_version()}-src")
    if not (source / "CMakeLists.txt").is_file():
        with tempfile.TemporaryDirectory() as tmp:
            print("fetching the llama.cpp sources of the installed llama-cpp-python ...", flush=True)
            llamacpp_tools.extract_vendored(llamacpp_tools.download_sdist(Path(tmp)), source)
    work = build_dir(flavour, cmake_args).with_name(build_dir(flavour, cmake_args).name + "-cmake")
    print(f"building {target} ({flavour}: {shlex.join(cmake_args) or 'defaults'}) ...", flush=True)
    configure = ["cmake", "-S", str(source), "-B", str(work), *CMAKE_FLAGS, *cmake_args]
    subprocess.run(configure, check=True, stdout=subprocess.DEVNULL)
    jobs = str(usable_cores())
    subprocess.run(["cmake", "--build", str(work), "--target", target, "-j", jobs], check=True)
    binary.parent.mkdir(parents=True, exist_ok=True)
    shutil.copy2(work / "bin" / target, binary)
    for library in (work / "bin").glob("*.so*"):  # shared builds keep their libraries beside the binary
        shutil.copy2(library, binary.parent / library.name)
    return binary


def run(
    binary: Path, model: str, threads: int, prompt_tokens: int, gen_tokens: int, repetitions: int
) -> dict[str, Any]:
    """llama-bench with the settings the workbench's llama.cpp benchmark uses (batch 512, no flash
    attention); returns {"pp_tps": ..., "tg_tps": ...} (averages over the repetitions, as it reports)."""
    command = [
        str(binary),
        "-m", model,
        "-t", str(threads),
        "-p", str(prompt_tokens),
        "-n", str(gen_tokens),
        "-r", str(repetitions),
        "-b", str(min(512, prompt_tokens)),
        "-ub", "512",
        "-fa", "0",
        "-ngl", "0",  # CPU against CPU even when llama.cpp was built with a GPU backend
        "-o", "json",
    ]  # fmt: skip
    output = subprocess.run(command, check=True, capture_output=True, text=True).stdout
    result = {}
    for test in json.loads(output):
        key = "pp_tps" if test["n_prompt"] and not test["n_gen"] else "tg_tps"
        result[key] = test["avg_ts"]
        result[key.replace("tps", "stddev")] = test["stddev_ts"]
    return result
