"""Process-group setup and the few collective operations the loop needs (single process, DDP, FSDP2).

``torchrun --nproc-per-node N meshlm train ...`` sets RANK/WORLD_SIZE/LOCAL_RANK; without them
the run is a single process and every collective is a no-op.
"""

from __future__ import annotations

import os
from collections import Counter
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass

import torch
import torch.distributed as tdist
from torch import nn


@dataclass
class Dist:
    """This process's place in the job and the collectives, all no-ops when ``world == 1``."""

    rank: int = 0
    world: int = 1
    local_rank: int = 0
    device: torch.device | None = None
    fsdp: bool = False

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def all_reduce(self, tensor: torch.Tensor, average: bool = False) -> None:
        if self.world > 1:
            tdist.all_reduce(tensor, op=tdist.ReduceOp.AVG if average else tdist.ReduceOp.SUM)

    def barrier(self) -> None:
        if self.world > 1:
            tdist.barrier()

    def close(self) -> None:
        if self.world > 1 and tdist.is_initialized():
            tdist.destroy_process_group()

    def no_sync(self, model: nn.Module):
        """Skip the gradient all-reduce for a micro-batch that is not the last of its step."""
        if self.world == 1:
            return nullcontext()
        if self.fsdp:
            return _fsdp_no_sync(model)
        return model.no_sync()

    def full_state(self, model: nn.Module, optimizer) -> tuple[dict, dict | None]:
        """Unsharded (model, optimizer) state dicts, keyed by parameter name in every mode.

        Name-keyed optimizer state is what makes a checkpoint portable between single-process,
        DDP and FSDP runs of any world size.
        """
        from torch.distributed.checkpoint.state_dict import (
            StateDictOptions,
            get_model_state_dict,
            get_optimizer_state_dict,
        )

        options = StateDictOptions(full_state_dict=True, cpu_offload=self.fsdp)
        model_state = get_model_state_dict(model, options=options)
        opt_state = get_optimizer_state_dict(model, optimizer, options=options) if optimizer is not None else None
        return model_state, opt_state

    def load_optimizer_state(self, model: nn.Module, optimizer, state: dict) -> None:
        """Load a name-keyed optimizer state written by :meth:`full_state` (any mode, any world size)."""
        from torch.distributed.checkpoint.state_dict import StateDictOptions, set_optimizer_state_dict

        set_optimizer_state_dict(model, optimizer, state, options=StateDictOptions(full_state_dict=True))


@contextmanager
def _fsdp_no_sync(model: nn.Module):
    model.set_requires_gradient_sync(False)
    try:
        yield
    finally:
        model.set_requires_gradient_sync(True)


def setup_distributed(fsdp: bool = False) -> Dist:
    """Join the torchrun process group if there is one (NCCL on GPUs, gloo on CPU)."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world == 1:
        return Dist(fsdp=False)
    rank, local_rank = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0"))
    if torch.cuda.is_available():
        device = torch.device("cuda", local_rank)
        torch.cuda.set_device(device)
        backend = "nccl"
    else:
        device, backend = torch.device("cpu"), "gloo"
    if not tdist.is_initialized():
        tdist.init_process_group(backend, rank=rank, world_size=world, device_id=device if backend == "nccl" else None)
    return Dist(rank=rank, world=world, local_rank=local_rank, device=device, fsdp=fsdp)


def _layers_run_once(layout) -> list[int]:
    """Unique layers that run once per forward pass (prelude, coda, unshared cores).

    Only these get their own FSDP2 unit. A shared core layer runs K times per pass; its
    per-module all-gather/reduce-scatter hooks would fire K times, so it stays in the root
    unit, which is gathered once for the whole forward and backward.
    """
    prelude, loops, coda = layout.schedule()
    uses = Counter([*prelude, *(i for loop in loops for i in loop), *coda])
    return [i for i, n in sorted(uses.items()) if n == 1]


def wrap_model(model: nn.Module, dist: Dist, compile: bool = False, find_unused_parameters: bool = False) -> nn.Module:
    """Compile (in place, so state-dict keys keep their names), then shard (FSDP2) or replicate (DDP).

    ``find_unused_parameters`` is for steps that leave some parameters out (random depth, truncated
    backprop): DDP then looks for them after every backward instead of failing on the next step.
    """
    if compile:
        model.compile()
    if dist.world == 1:
        return model
    if dist.fsdp:
        from torch.distributed.fsdp import fully_shard

        for index in _layers_run_once(model.config.parsed_layout):
            fully_shard(model.model.layers[index])
        fully_shard(model)  # the root group also holds the shared core layers
        return model
    from torch.nn.parallel import DistributedDataParallel

    device_ids = [dist.local_rank] if dist.device.type == "cuda" else None
    return DistributedDataParallel(model, device_ids=device_ids, find_unused_parameters=find_unused_parameters)
