"""One rank of the doctor's process-group probe, under `accelerate launch`: join the group the way the
Trainer does (gloo on a CPU, NCCL on GPUs), all-reduce this rank's number and print what it saw as JSON."""

from __future__ import annotations

import json
import sys

import torch
import torch.distributed as dist
from accelerate import PartialState


def main() -> None:
    state = PartialState(cpu=sys.argv[1] == "cpu")
    value = torch.tensor([state.process_index + 1.0], device=state.device)
    dist.all_reduce(value)
    seen = {"rank": state.process_index, "world": state.num_processes, "backend": state.backend}
    print(json.dumps({**seen, "sum": value.item()}), flush=True)
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
