"""One rank of a stage run on several processes: started by `accelerate launch` (see
`stages.train.run_on_ranks`) as `python -m workbench.pipeline.stages.ranks JOB`. It rebuilds the stage's context from
the job file, sends its output to <run>/logs/<stage>/rank<K>.log and runs the stage here with `ctx.rank`
set: rank 0 records to the run store and saves, every rank trains. Each machine's first process leaves the
outcome (artifacts, or that the stage stopped on request) in the job's folder for the stage's process."""

from __future__ import annotations

import dataclasses
import json
import os
import socket
import sys
from pathlib import Path

from torch.distributed.elastic.multiprocessing.errors import record

from workbench.core.fsutil import atomic_write_text
from workbench.core.recipe import parse_recipe
from workbench.core.store import Store
from workbench.pipeline.stages import STAGES
from workbench.pipeline.stages.base import StageContext, StageInterrupted
from workbench.train import distributed


@record  # an exception's traceback reaches the launcher's failure summary
def main() -> None:
    job_file = Path(sys.argv[1])
    job = json.loads(job_file.read_text())
    rank, world = distributed.rank_info()
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    logs = Path(job["logs"])
    distributed.log_to(logs / f"rank{rank}.log")
    host = socket.gethostname()
    about = {"rank": rank, "local_rank": local_rank, "world_size": world, "pid": os.getpid(), "host": host}
    atomic_write_text(logs / f"rank{rank}.json", json.dumps(about))
    print(f"rank {rank} of {world} (local rank {local_rank}, pid {os.getpid()} on {host})", flush=True)
    source = Path(job["source"]) if job["source"] else None
    recipe = parse_recipe(job["recipe"], job["source"] or "<recipe>", source)
    ctx = StageContext(
        job["run_id"],
        Path(job["run_dir"]),
        recipe,
        Store(Path(job["store"])),
        job["stage"],
        Path(job["out"]),
        Path(job["work"]),
        {name: Path(path) for name, path in job["inputs"].items()},
        rank=rank,
    )
    try:
        artifacts = STAGES[job["stage"]].run(ctx)
        outcome: dict = {"artifacts": [dataclasses.asdict(item) for item in artifacts]}
    except StageInterrupted as exc:
        outcome = {"interrupted": str(exc)}
    finally:
        ctx.store.close()
    if local_rank == 0:
        atomic_write_text(job_file.parent / "result.json", json.dumps(outcome))
    finish()


def finish() -> None:
    """Leave without the interpreter's teardown: collective libraries' threads have aborted it there
    ("terminate called without an active exception"), failing a rank whose work was done."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)


if __name__ == "__main__":
    main()
