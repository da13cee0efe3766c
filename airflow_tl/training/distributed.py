"""Data-parallel training's view of the other processes: who this rank is, and what it shares with them.

``World`` is what the epoch loop sees. On one process (``SOLO``) every operation is the identity, so the loop
has one code path. Under ``torch.distributed`` (``World.joined``, in a process started by
``airflow_tl.training.launch``) each rank trains on its slice of every global batch and
``DistributedDataParallel`` averages the gradients.

Why the gradients equal one process's: rank r takes positions r, r+W, r+2W... of each global batch of the
seeded order, sums its loss and scales it by W / (images in the global batch); DDP's average over W ranks is
then the mean loss over the whole batch, as one process computes it, even when a batch does not divide evenly
(a rank may get no image of the last batch: it steps with an empty one, which keeps the collectives in
lockstep). BatchNorm layers being trained normalise over the global batch too (``sync_batchnorm``: torch's
``SyncBatchNorm`` on CUDA, ``GlobalBatchNorm`` on the CPU). What differs is the order sums are added in, so the
weights agree with one process's within floating-point tolerance, not bit for bit (docs/scale.md).

Frozen blocks have ``requires_grad=False``, which DDP leaves out of its buckets: partially frozen models need
no ``find_unused_parameters`` (whose extra graph walk every step would cost time).
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from datetime import timedelta
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch
    from torch import nn

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class World:
    """This process's rank among ``size`` training processes (``local_rank`` on its machine)."""

    rank: int = 0
    size: int = 1
    local_rank: int = 0

    @property
    def main(self) -> bool:
        """Rank 0: the one that logs progress and writes checkpoints and the model folder."""
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.size > 1

    def shard(self) -> tuple[int, int] | None:
        """``(rank, size)`` for a data loader to take its slice; None on one process (everything)."""
        return (self.rank, self.size) if self.distributed else None

    def all_sum(self, tensor: torch.Tensor) -> torch.Tensor:
        """``tensor`` summed over every rank (in place), or as it is on one process."""
        if self.distributed:
            import torch.distributed as dist

            dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
        return tensor

    def wrap(self, model: nn.Module) -> nn.Module:
        """The module the training step calls: ``model`` itself, or DDP around it.

        DDP broadcasts rank 0's parameters and buffers as it is built, so every rank starts equal (they are
        seeded alike anyway), and broadcasts buffers (BatchNorm's running statistics) before every forward.
        """
        if not self.distributed:
            return model
        from torch.nn.parallel import DistributedDataParallel

        device = next(model.parameters()).device
        ids = [device] if device.type == "cuda" else None
        return DistributedDataParallel(model, device_ids=ids)

    def barrier(self) -> None:
        if self.distributed:
            import torch.distributed as dist

            dist.barrier()

    @classmethod
    def joined(cls, backend: str, timeout_s: float) -> World:
        """Join the process group that ``torch.distributed``'s launcher described in this process's environment.

        ``timeout_s`` bounds every collective: a rank whose peer died fails after it instead of waiting forever.
        """
        import torch.distributed as dist

        dist.init_process_group(backend=backend, timeout=timedelta(seconds=timeout_s))
        return cls(dist.get_rank(), dist.get_world_size(), int(os.environ.get("LOCAL_RANK", "0")))

    @staticmethod
    def leave() -> None:
        import torch.distributed as dist

        if dist.is_initialized():
            dist.destroy_process_group()


SOLO = World()


def sync_batchnorm(model: nn.Module, world: World, device: torch.device) -> nn.Module:
    """``model`` with its BatchNorm layers normalising over the global batch, as one process's do.

    On CUDA, torch's ``SyncBatchNorm``. On the CPU, where torch has none, ``GlobalBatchNorm``. Layers of frozen
    blocks stay in eval mode, where both use the running statistics as plain BatchNorm does. The parameters and
    buffers are the same tensors under the same names: state dicts and checkpoints do not change.
    """
    if not world.distributed:
        return model
    import torch

    if device.type == "cuda":
        return torch.nn.SyncBatchNorm.convert_sync_batchnorm(model)
    return _convert(model, _global_batchnorm_class())


def _convert(module: nn.Module, cls: type) -> nn.Module:
    from torch.nn.modules.batchnorm import _BatchNorm

    if isinstance(module, _BatchNorm) and not isinstance(module, cls):
        converted = cls(module.num_features, module.eps, module.momentum, module.affine, module.track_running_stats)
        if module.affine:
            converted.weight, converted.bias = module.weight, module.bias
        converted.running_mean, converted.running_var = module.running_mean, module.running_var
        converted.num_batches_tracked = module.num_batches_tracked
        converted.train(module.training)
        return converted
    for name, child in module.named_children():
        module.add_module(name, _convert(child, cls))
    return module


def _global_batchnorm_class() -> type:
    """Defined on first use: the module must not import torch (DAG files import what imports this)."""
    global _GlobalBatchNorm
    if _GlobalBatchNorm is None:
        import torch
        import torch.distributed as dist
        from torch.nn.modules.batchnorm import _BatchNorm

        class AllSum(torch.autograd.Function):
            """A sum over ranks that gradients flow back through: the gradient of each rank's share is the sum
            of every rank's gradient of the total."""

            @staticmethod
            def forward(ctx, x: torch.Tensor) -> torch.Tensor:
                total = x.clone()
                dist.all_reduce(total)
                return total

            @staticmethod
            def backward(ctx, grad: torch.Tensor) -> torch.Tensor:
                total = grad.clone()
                dist.all_reduce(total)
                return total

        class GlobalBatchNorm(_BatchNorm):
            """BatchNorm whose training statistics are those of the global batch: every rank's sum and sum of
            squares per channel, all-reduced with autograd, so the gradients flow across ranks as the statistics
            did. What ``SyncBatchNorm`` does on CUDA, on any backend, with plain tensor ops."""

            def _check_input_dim(self, x: torch.Tensor) -> None:
                if x.dim() < 2:
                    raise ValueError(f"expected at least 2D input (got {x.dim()}D input)")

            def forward(self, x: torch.Tensor) -> torch.Tensor:
                if not self.training:
                    return super().forward(x)
                channels = x.size(1)
                dims = [0, *range(2, x.dim())]
                count = torch.tensor([x.numel() // channels], dtype=x.dtype, device=x.device)
                local = torch.cat([x.sum(dims), (x * x).sum(dims), count])
                total = AllSum.apply(local)
                n = total[-1]
                mean = total[:channels] / n
                var = (total[channels : 2 * channels] / n - mean * mean).clamp_min(0)
                if self.track_running_stats:
                    self._update_running(mean.detach(), var.detach() * (n / (n - 1)).detach())
                shape = [1, channels] + [1] * (x.dim() - 2)
                y = (x - mean.view(shape)) * torch.rsqrt(var.view(shape) + self.eps)
                if self.affine:
                    y = y * self.weight.view(shape) + self.bias.view(shape)
                return y

            @torch.no_grad()
            def _update_running(self, mean: torch.Tensor, unbiased: torch.Tensor) -> None:
                self.num_batches_tracked.add_(1)
                momentum = self.momentum if self.momentum is not None else 1.0 / float(self.num_batches_tracked)
                self.running_mean.mul_(1 - momentum).add_(mean, alpha=momentum)
                self.running_var.mul_(1 - momentum).add_(unbiased, alpha=momentum)

        _GlobalBatchNorm = GlobalBatchNorm
    return _GlobalBatchNorm


_GlobalBatchNorm: type | None = None
