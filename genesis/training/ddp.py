"""Multi-GPU / multi-node training through PyTorch DDP, launched by ``torchrun``.

No launcher of our own: ``torchrun --nproc_per_node N -m genesis.cli.pretrain ...`` (or
``--nnodes``/``--rdzv-endpoint`` for several machines) sets RANK, WORLD_SIZE and LOCAL_RANK, and
:func:`setup_distributed` joins the process group (NCCL on CUDA, Gloo on CPU). Every rank trains
on its own shard of the cube keys; rank 0 alone writes files.
"""

from __future__ import annotations

import datetime
import os
from dataclasses import dataclass

import torch
import torch.distributed as dist


@dataclass(frozen=True)
class DistInfo:
    """Where this process stands in the job."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    initialized_here: bool = False

    @property
    def distributed(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def env_dist_info() -> DistInfo:
    """Rank information from the torchrun environment (a single process when absent)."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return DistInfo()
    return DistInfo(
        rank=int(os.environ.get("RANK", "0")),
        world_size=world,
        local_rank=int(os.environ.get("LOCAL_RANK", "0")),
    )


def setup_distributed(device: torch.device) -> DistInfo:
    """Join the process group when launched by torchrun; a no-op for a single process."""
    info = env_dist_info()
    if not info.distributed:
        return info
    if dist.is_initialized():
        return info
    backend = "nccl" if device.type == "cuda" else "gloo"
    if device.type == "cuda":
        torch.cuda.set_device(device)
    dist.init_process_group(backend=backend, timeout=datetime.timedelta(minutes=30))
    return DistInfo(info.rank, info.world_size, info.local_rank, initialized_here=True)


def cleanup_distributed(info: DistInfo, success: bool = True) -> None:
    """Leave the process group if :func:`setup_distributed` joined it.

    After a successful run every rank first meets at a barrier: a rank that tears its gloo/NCCL
    group down while another still talks to it aborts the job ("terminate called without an
    active exception") although training finished. After an error no barrier (the others may
    never arrive).
    """
    if info.initialized_here and dist.is_initialized():
        if success:
            dist.barrier()
        dist.destroy_process_group()


def barrier(info: DistInfo) -> None:
    if info.distributed and dist.is_initialized():
        dist.barrier()


def broadcast_float(value: float, info: DistInfo, device: torch.device) -> float:
    """Rank 0's ``value`` on every rank (so schedules and early stopping agree)."""
    if not info.distributed or not dist.is_initialized():
        return value
    tensor = torch.tensor([value], dtype=torch.float64, device=device)
    dist.broadcast(tensor, src=0)
    return float(tensor.item())


def all_reduce_mean(value: float, info: DistInfo, device: torch.device) -> float:
    """Mean of ``value`` over ranks (the logged training loss covers every shard)."""
    if not info.distributed or not dist.is_initialized():
        return value
    tensor = torch.tensor([value], dtype=torch.float64, device=device)
    dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
    return float(tensor.item()) / info.world_size


def wrap_model(model: torch.nn.Module, info: DistInfo, device: torch.device) -> torch.nn.Module:
    """DistributedDataParallel around ``model`` when distributed, else the model itself."""
    if not info.distributed:
        return model
    from torch.nn.parallel import DistributedDataParallel

    # Batch norm stays per-process (as in the reference's DataParallel training): converting to
    # SyncBatchNorm would replace the networks' own norm classes.
    if device.type == "cuda":
        return DistributedDataParallel(model, device_ids=[device.index])
    return DistributedDataParallel(model)


def unwrap_model(model: torch.nn.Module) -> torch.nn.Module:
    """The bare network inside a DDP wrapper (its state_dict has no ``module.`` prefix)."""
    if isinstance(model, torch.nn.parallel.DistributedDataParallel):
        return model.module
    return model


def weights_checksums(model: torch.nn.Module, info: DistInfo, device: torch.device) -> list[float]:
    """Every rank's sum of |parameters| and buffers (identical when DDP kept the ranks in sync)."""
    total = sum(float(t.detach().double().abs().sum()) for t in model.state_dict().values()
                if torch.is_tensor(t) and t.is_floating_point())
    if not info.distributed or not dist.is_initialized():
        return [total]
    mine = torch.tensor([total], dtype=torch.float64, device=device)
    gathered = [torch.zeros_like(mine) for _ in range(info.world_size)]
    dist.all_gather(gathered, mine)
    return [float(g.item()) for g in gathered]


def broadcast_buffers(model: torch.nn.Module, info: DistInfo) -> None:
    """Copy rank 0's buffers (batch-norm running statistics) to every rank.

    DDP syncs buffers at the start of each forward pass, so after an epoch's last step each rank
    holds the statistics of its own last batch; this makes the end-of-epoch state identical.
    """
    if not info.distributed or not dist.is_initialized():
        return
    for buffer in model.buffers():
        dist.broadcast(buffer.data, src=0)
