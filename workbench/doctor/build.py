"""`python -m workbench.doctor.build "CMAKE_ARGS"`, run by `make install` after pip: record how the installed
llama-cpp-python was built (the flags asked for, and the features llama.cpp says it was compiled with) for
`workbench doctor`, and exit 1 when the library contradicts the flags — AMX compiled in although they turn
it off, as when pip reuses a wheel it cached from an earlier build — so the Makefile rebuilds it."""

from __future__ import annotations

import datetime as dt
import json
import sys
from importlib import metadata

from workbench import workers
from workbench.core.fsutil import atomic_write_text
from workbench.doctor import BUILD_RECORD
from workbench.doctor.probes import ProbeJob, ProbeResult

AMX_OFF = "-mno-amx-int8"


def contradiction(cmake_args: str, system_info: str) -> str | None:
    """What the installed library has that the flags turn off, if anything."""
    if AMX_OFF in cmake_args and "AMX_INT8" in system_info:
        return (
            "the installed llama-cpp-python has AMX kernels although the flags turn them off "
            "(a wheel pip had cached from another build?)"
        )
    return None


def main(argv: list[str]) -> int:
    cmake_args = argv[0] if argv else ""
    outcome = workers.run("doctor.probe", ProbeJob("llama.cpp info"), name="llama.cpp", timeout=120)
    if not outcome.ok:
        print(f"could not load the installed llama.cpp: {outcome.error}", file=sys.stderr)
        return 1
    info = outcome.value_as(ProbeResult).system_info or ""
    BUILD_RECORD.parent.mkdir(parents=True, exist_ok=True)
    record = {
        "cmake_args": cmake_args,
        "llama_cpp_python": metadata.version("llama_cpp_python"),
        "system_info": info,
        "recorded": dt.datetime.now().isoformat(timespec="seconds"),
    }
    atomic_write_text(BUILD_RECORD, json.dumps(record, indent=2))
    if AMX_OFF in cmake_args and "AMX_INT8" in info:
        print(
            "the installed llama-cpp-python has AMX kernels although the flags turn them off (a wheel pip had "
            "cached from another build?)",
            file=sys.stderr,
        )
        return 1
    print(f"llama.cpp: built with CMAKE_ARGS={cmake_args!r}\n  {info}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
