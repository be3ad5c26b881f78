"""llama.cpp's own converter scripts and tools (`llama-quantize`, `llama-imatrix`, `llama-perplexity`,
`llama-server`), from the llama-cpp-python source distribution that matches the installed version (no
installed package carries them). Fetched and built once at set-up, so runs work offline.

The tools are compiled from their own sources only and linked against the libraries the installed
llama-cpp-python built (libllama, libllama-common, libmtmd, libggml): the same kernels, built with the same
flags (AMX off), as the Python binding that evaluates and benchmarks the files. No second build of ggml.
"""

from __future__ import annotations

import datetime as dt
import importlib.util
import json
import os
import shlex
import shutil
import subprocess
import sys
import tarfile
import tempfile
import time
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path

from workbench.core.common import PYTHON, child_env
from workbench.core.devices import usable_cores
from workbench.core.errors import ResourceError
from workbench.core.fsutil import atomic_dir, atomic_write_text
from workbench.workers.child import vm_hwm_kb

CONVERTER = ("convert_hf_to_gguf.py", "convert_lora_to_gguf.py", "conversion/", "gguf-py/")
TOOLS = ("llama-quantize", "llama-imatrix", "llama-perplexity", "llama-server")
# what the tools compile from: their own folders, the headers of the libraries they link, and what the
# server adds (libmtmd's headers, the subprocess header, its web UI's table generated with no UI in it)
SOURCES = (
    "include/",
    "ggml/include/",
    "common/",
    "vendor/nlohmann/",
    "vendor/cpp-httplib/",
    "vendor/sheredom/",
    *(f"tools/{t[6:]}/" for t in TOOLS),
    "tools/mtmd/",
    "tools/ui/ui.cpp.in",
    "tools/ui/ui.h.in",
    "scripts/ui-assets.cmake",
)
MEMBERS = (*CONVERTER, *SOURCES)
CMAKE_LISTS = Path(__file__).with_name("llamacpp_tools.cmake")
BUILD_RECORD = "tools.json"


class ToolsMissing(ResourceError):
    pass


def llama_cpp_version() -> str:
    return metadata.version("llama_cpp_python")


def default_tools_dir() -> Path:
    return Path(sys.prefix) / "share" / "workbench" / f"llama.cpp-{llama_cpp_version()}"


def tools_dir() -> Path:
    override = os.environ.get("WORKBENCH_LLAMA_CPP_TOOLS")
    return Path(override) if override else default_tools_dir()


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


def fetched(dest: Path) -> bool:
    return all((dest / member).exists() for member in MEMBERS)


def fetch(dest: Path | None = None) -> Path:
    """Download the matching sdist with pip and keep the converter scripts and the tools' sources (a folder
    fetched by an earlier version, without the sources, is fetched again)."""
    dest = dest or tools_dir()
    if fetched(dest):
        return dest
    if (dest / "convert_hf_to_gguf.py").is_file():  # fetched before the tools were
        if dest != default_tools_dir():
            raise ToolsMissing(f"{dest} holds llama.cpp's converter but not its tools' sources; remove it")
        shutil.rmtree(dest)  # the workbench's own folder, fetched again whole
    with tempfile.TemporaryDirectory() as tmp:
        print(f"fetching llama.cpp's converter and tools from llama-cpp-python {llama_cpp_version()} sources ...")
        extract_vendored(download_sdist(Path(tmp)), dest, MEMBERS)
    return dest


def library_dir() -> Path:
    """Where the installed llama-cpp-python put llama.cpp's shared libraries for linking (its wheel's `lib/`
    beside the package; the copies in `llama_cpp/lib` are the same build)."""
    spec = importlib.util.find_spec("llama_cpp")
    if spec is None or spec.origin is None:
        raise ToolsMissing("llama-cpp-python is not installed")
    site = Path(spec.origin).parent.parent
    for folder in (site / "lib", site / "lib64"):  # CMake's GNUInstallDirs picks lib64 on some systems
        if any(folder.glob("libllama-common.*")):
            return folder
    raise ToolsMissing(f"llama-cpp-python installed no libllama-common under {site}; rebuild it: `make llama-cpp`")


def cmake() -> str:
    """The cmake the project installs (the `cmake` package in this environment), else one on PATH."""
    found = shutil.which("cmake", path=os.pathsep.join([str(Path(sys.executable).parent), os.environ.get("PATH", "")]))
    if not found:
        raise ToolsMissing("building llama.cpp's tools needs cmake (`pip install cmake`)")
    return found


def build(dest: Path | None = None, cmake_args: str = "") -> Path:
    """Compile `TOOLS` into `dest/bin` (atomically: a failed build leaves no half folder) against the
    installed libraries, with `cmake_args` (the flags the Python binding was built with), and record how."""
    dest = dest or tools_dir()
    started = time.monotonic()
    libraries = library_dir()
    with tempfile.TemporaryDirectory() as tmp:
        project = Path(tmp) / "project"
        project.mkdir()
        shutil.copy(CMAKE_LISTS, project / "CMakeLists.txt")
        work = Path(tmp) / "build"
        configure = [cmake(), "-S", str(project), "-B", str(work), "-DCMAKE_BUILD_TYPE=Release",
                     f"-DLLAMA_SRC={dest}", f"-DLLAMA_LIB={libraries}", *shlex.split(cmake_args)]  # fmt: skip
        print(f"building {', '.join(TOOLS)} against {libraries} ...", flush=True)
        build_command = [cmake(), "--build", str(work), "-j", str(usable_cores())]
        for command in (configure, build_command):
            # quiet unless it fails (its warnings include the server's, that it has no web UI: by design)
            done = subprocess.run(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=child_env())
            if done.returncode != 0:
                print(done.stdout[-6000:], file=sys.stderr)
                raise ToolsMissing(f"building llama.cpp's tools failed ({shlex.join(command[:2])} ...); see above")
        with atomic_dir(dest / "bin", root=dest) as out:
            for tool in TOOLS:
                shutil.copy2(work / tool, out / tool)
            record = {
                "tools": list(TOOLS),
                "cmake_args": cmake_args,
                "libraries": str(libraries),
                "llama_cpp_python": llama_cpp_version(),
                "seconds": round(time.monotonic() - started, 1),
                "recorded": dt.datetime.now().isoformat(timespec="seconds"),
            }
            atomic_write_text(out / BUILD_RECORD, json.dumps(record, indent=2))
    return dest / "bin"


def built(dest: Path | None = None) -> dict[str, str] | None:
    """How the tools were built (`build`'s record), or None when they are not."""
    folder = (dest or tools_dir()) / "bin"
    if not all((folder / tool).is_file() for tool in TOOLS) or not (folder / BUILD_RECORD).is_file():
        return None
    record: dict[str, str] = json.loads((folder / BUILD_RECORD).read_text())
    return record


def setup(cmake_args: str = "") -> Path:
    """What `workbench setup` does: fetch the sources once, build the tools once."""
    dest = fetch()
    if built(dest) is None:
        build(dest, cmake_args)
    return dest


def binary(tool: str) -> Path:
    """The path of one of `TOOLS`; refused (with what to run) when set-up has not built it."""
    path = tools_dir() / "bin" / tool
    if not path.is_file():
        raise ToolsMissing(f"llama.cpp's {tool} is not built in {path.parent}; run `workbench setup`")
    return path


@dataclass(frozen=True)
class ToolRun:
    """One run of a llama.cpp tool: its wall time and peak memory (its own VmHWM, read as it ran)."""

    seconds: float
    peak_rss_mb: float | None


def run_tool(
    tool: str, args: list[str], *, timeout: float | None = None, quiet: bool = False, cwd: Path | None = None
) -> ToolRun:
    """Run one of `TOOLS` with its output on this process's (a worker's log; `quiet`: kept aside and only its
    end shown if it fails), polling its peak memory; raises with the tool's exit status when it fails."""
    command = [str(binary(tool)), *args]
    if not quiet:
        print("$ " + shlex.join(command), flush=True)
    started = time.monotonic()
    peak_kb: int | None = None
    with tempfile.TemporaryFile("w+") as kept:
        output = {"stdout": kept, "stderr": subprocess.STDOUT} if quiet else {}
        with subprocess.Popen(  # type: ignore[call-overload]
            command, stdin=subprocess.DEVNULL, env=child_env(), cwd=cwd, **output
        ) as process:
            status = Path(f"/proc/{process.pid}/status")
            while process.poll() is None:
                peak_kb = vm_hwm_kb(status) or peak_kb
                if timeout is not None and time.monotonic() - started > timeout:
                    process.kill()
                    raise TimeoutError(f"{tool} ran past {timeout:.0f} s")
                time.sleep(0.05)
        if process.returncode != 0:
            if quiet:
                kept.seek(0)
                print("$ " + shlex.join(command) + "\n" + "".join(kept.readlines()[-30:]), flush=True)
            raise RuntimeError(f"{tool} exited with status {process.returncode}")
    return ToolRun(round(time.monotonic() - started, 2), round(peak_kb / 1024, 1) if peak_kb else None)
