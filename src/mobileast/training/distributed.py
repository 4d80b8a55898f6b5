"""Where a training process runs and what the processes of a torchrun launch exchange.

CUDA when available, else the CPU. Under `torchrun --nproc_per_node N` the processes form
a group (nccl on GPU, gloo on CPU); every process takes its share of each batch, the step
logs are averaged over all of them, BatchNorm buffers are copied from rank 0 at the end of
every epoch so all ranks hold the same state, and only rank 0 writes files and logs.
"""
from __future__ import annotations

import os
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Iterator, Mapping, Sequence

import torch
import torch.distributed as dist
from torch import nn


@dataclass(frozen=True)
class Runtime:
    """Where this process trains: its device, rank and the number of processes."""

    device: torch.device
    rank: int = 0
    world_size: int = 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


@contextmanager
def runtime(seed: int = 0) -> Iterator[Runtime]:
    """The training runtime: CUDA if available, the process group under torchrun.

    Seeds torch with `seed` so the model built next is initialised deterministically
    (DistributedDataParallel then copies rank 0's initial weights to all ranks).
    """
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    cuda = torch.cuda.is_available()
    if world_size > 1:
        local_rank = int(os.environ["LOCAL_RANK"])
        if cuda:
            torch.cuda.set_device(local_rank)
        dist.init_process_group("nccl" if cuda else "gloo")
        device = torch.device("cuda", local_rank) if cuda else torch.device("cpu")
        current = Runtime(device, dist.get_rank(), world_size)
    else:
        current = Runtime(torch.device("cuda" if cuda else "cpu"))
    torch.manual_seed(seed)
    try:
        yield current
    finally:
        if world_size > 1:
            dist.destroy_process_group()


def with_sync_bn(model: nn.Module, sync_bn: bool, rt: Runtime) -> nn.Module:
    """The model with SyncBatchNorm layers (same parameters, buffers and state_dict keys) when
    `sync_bn` is asked for in a multi-process run; PyTorch's SyncBatchNorm needs CUDA."""
    if not sync_bn or rt.world_size == 1:
        return model
    if rt.device.type != "cuda":
        raise ValueError("sync_bn needs CUDA devices (PyTorch's SyncBatchNorm does not run on the CPU); "
                         "set it to false for CPU runs")
    return nn.SyncBatchNorm.convert_sync_batchnorm(model)


def mean_over_ranks(device_sums: Mapping[str, torch.Tensor], host_sums: Mapping[str, float], steps: int,
                    rt: Runtime) -> dict[str, float]:
    """Per-step means of the step logs (float64 sums on the device or the host) over the
    epoch and all processes."""
    sums = {**{k: torch.tensor(v, dtype=torch.float64, device=rt.device) for k, v in host_sums.items()},
            **device_sums}
    keys = sorted(sums)
    totals = torch.stack([sums[k] for k in keys])
    if rt.world_size > 1:
        dist.all_reduce(totals)
    return {k: v / (steps * rt.world_size) for k, v in zip(keys, totals.tolist())}


def sync_buffers(model: nn.Module, rt: Runtime) -> None:
    """Copy rank 0's buffers (BatchNorm statistics) to all ranks; parameters already agree."""
    if rt.world_size > 1:
        for buffer in model.buffers():
            dist.broadcast(buffer, src=0)


def gather_batches(logits: torch.Tensor, batch_size: int, rt: Runtime) -> torch.Tensor:
    """The logits of all ranks in global batch order, when rank r predicted the global
    batches r, r + world_size, ... (`batch_size` rows each, the last one maybe fewer)."""
    if rt.world_size == 1:
        return logits
    parts: list = [None] * rt.world_size
    dist.all_gather_object(parts, logits)
    return _interleave([p.split(batch_size) for p in parts])


def _interleave(shards: Sequence[Sequence[torch.Tensor]]) -> torch.Tensor:
    """Batches of rank r hold global batches r, r + world, ...: back in global order."""
    ordered = [shards[i % len(shards)][i // len(shards)] for i in range(sum(len(s) for s in shards))]
    return torch.cat(ordered)
