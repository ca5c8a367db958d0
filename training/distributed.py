"""The process group of a torchrun launch, or a single process."""

from __future__ import annotations

import os

import torch
import torch.distributed as dist


class Distributed:
    """torchrun's environment (WORLD_SIZE, RANK, LOCAL_RANK), or a single process."""

    def __init__(self, device: str):
        self.world = int(os.environ.get("WORLD_SIZE", 1))
        self.rank = int(os.environ.get("RANK", 0))
        local_rank = int(os.environ.get("LOCAL_RANK", 0))
        cuda = device == "cuda" or (device == "auto" and torch.cuda.is_available())
        if device == "cuda" and not torch.cuda.is_available():
            raise SystemExit("error: --device cuda but no CUDA device is available")
        self.device = torch.device(f"cuda:{local_rank}" if cuda else "cpu")
        if cuda:
            torch.cuda.set_device(self.device)
        if self.world > 1:
            dist.init_process_group("nccl" if cuda else "gloo", device_id=self.device if cuda else None)

    @property
    def main(self) -> bool:
        return self.rank == 0

    def sum(self, values: torch.Tensor) -> torch.Tensor:
        """Sum over processes (a collective: every rank must call it)."""
        if self.world > 1:
            dist.all_reduce(values)
        return values

    def wait(self):
        """Hold every rank here until rank 0 has validated and written its checkpoints."""
        if self.world > 1:
            dist.barrier()

    def close(self):
        if self.world > 1:
            dist.destroy_process_group()
