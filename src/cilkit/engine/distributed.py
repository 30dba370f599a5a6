"""torchrun integration: rank and world size from the environment, process group set-up."""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as torch_dist


@dataclass
class Distributed:
    """This process's place in a torchrun job (rank 0 of 1 when not launched by torchrun)."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    _owns_group: bool = False
    _nccl: bool = False

    @classmethod
    def from_env(cls) -> Distributed:
        """Read ``RANK``, ``WORLD_SIZE`` and ``LOCAL_RANK`` as set by torchrun."""
        world = int(os.environ.get("WORLD_SIZE", "1"))
        if world <= 1:
            return cls()
        return cls(
            rank=int(os.environ.get("RANK", "0")),
            world_size=world,
            local_rank=int(os.environ.get("LOCAL_RANK", "0")),
        )

    def init(self, device: torch.device) -> None:
        """Join the process group: NCCL on GPUs, gloo on the CPU."""
        if self.world_size == 1 or torch_dist.is_initialized():
            return
        if device.type == "cuda":
            torch.cuda.set_device(device)
        torch_dist.init_process_group(backend="nccl" if device.type == "cuda" else "gloo")
        self._owns_group = True
        self._nccl = device.type == "cuda"

    def sync_module(self, module: torch.nn.Module) -> None:
        """Give every process rank 0's parameters and buffers (BatchNorm statistics differ after
        training on different shards), so exemplar selection and class means agree."""
        if self.world_size == 1 or not torch_dist.is_initialized():
            return
        with torch.no_grad():
            for tensor in list(module.parameters()) + list(module.buffers()):
                torch_dist.broadcast(tensor.data, src=0)

    def average_gradients(self, params: list[torch.nn.Parameter]) -> None:
        """Average the gradients of ``params`` over the processes: the one data-parallel path
        of main training and stages. A parameter without a gradient on this process (a loss
        term that did not occur in its shard) counts as a zero gradient, so every process
        reduces the same tensors."""
        if self.world_size == 1 or not params:
            return
        has = torch.tensor([p.grad is not None for p in params], device=params[0].device)
        torch_dist.all_reduce(has, op=torch_dist.ReduceOp.MAX)  # a gradient on any process
        params = [p for p, any_grad in zip(params, has.tolist(), strict=True) if any_grad]
        for p in params:
            if p.grad is None:
                p.grad = torch.zeros_like(p)
        if not params:
            return
        flat = torch.cat([p.grad.reshape(-1) for p in params])
        torch_dist.all_reduce(flat)
        flat /= self.world_size
        offset = 0
        for p in params:
            p.grad.copy_(flat[offset : offset + p.numel()].view_as(p.grad))
            offset += p.numel()

    def gather_object(self, obj: object) -> list[object] | None:
        """Every process's ``obj`` (picklable, CPU tensors only) in rank order on rank 0; None on
        the other ranks. With one process: ``[obj]``."""
        if self.world_size == 1 or not torch_dist.is_initialized():
            return [obj]
        out: list[object] | None = [None] * self.world_size if self.rank == 0 else None
        torch_dist.gather_object(obj, out, dst=0)
        return out

    def any(self, flag: bool) -> bool:
        """Whether ``flag`` is true on any process (every process gets the same answer)."""
        if self.world_size == 1 or not torch_dist.is_initialized():
            return flag
        device = torch.device("cuda", torch.cuda.current_device()) if self._nccl else None
        value = torch.tensor([int(flag)], device=device)
        torch_dist.all_reduce(value, op=torch_dist.ReduceOp.MAX)
        return bool(value.item())

    def barrier(self) -> None:
        if self.world_size > 1 and torch_dist.is_initialized():
            torch_dist.barrier()

    def close(self) -> None:
        if self._owns_group and torch_dist.is_initialized():
            torch_dist.destroy_process_group()
            self._owns_group = False
