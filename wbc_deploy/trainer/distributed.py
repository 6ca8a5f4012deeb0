"""Training on several processes: ``torchrun --nproc-per-node N -m wbc_deploy train DATA --out RUN ...``.

torchrun starts N processes with ``RANK``, ``LOCAL_RANK`` and ``WORLD_SIZE`` in their environment;
:func:`setup` joins them in a process group (NCCL on GPUs, one GPU per process; gloo on CPUs) and the
trainer's hooks make N processes train as one process with the same global batch would:

- **Global batch.** ``--batch-size`` is the global batch B; each rank takes B/N of it (N must divide B).
  Every rank draws the same epoch order from the balanced sampler (same seed and epoch) and takes its
  slice of each global batch, so together the ranks see exactly one process's batches. The learning
  rate is the global batch's: the same command trains the same model on 1 or N processes. To use more
  processes for speed, raise ``--batch-size`` with N and scale ``--lr`` linearly with it (Goyal et al.
  2017), with the cosine schedule or a warm-up for large batches.
- **Gradients** are averaged across ranks by DistributedDataParallel: with equal slices that is the
  global batch's mean gradient.
- **BatchNorm** normalises with the global batch's statistics: ``torch.nn.SyncBatchNorm`` on GPUs; it
  has no CPU kernels, so on CPUs :class:`CpuSyncBatchNorm` sums the per-channel statistics over the
  ranks with differentiable all-reduces (the same arithmetic, in two passes).
- **Mixup and augmentation** run per rank: the same mixup lambda on every rank (one per global batch,
  as in one process), partners drawn within the rank's slice; each rank augments with its own random
  stream (rank 0 keeps one process's). These are the only differences from one process.
- **Evaluation** is split: each rank scores every N-th image and the predictions are gathered, so all
  ranks hold the same metrics and choose the same best epoch.
- **Rank 0 alone writes** the run directory (checkpoints, ``last.pt``, history, plots, card, which
  records ``world_size``); ``--resume`` works with any number of processes.
"""
from __future__ import annotations

import datetime
import os
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.utils.data import Dataset, Sampler, Subset

from ..errors import WbcError

#: How long a rank waits for the others at a collective (rank 0 evaluates and writes between epochs).
TIMEOUT = datetime.timedelta(hours=2)


class _AllReduceSum(torch.autograd.Function):
    """Sum over the ranks whose backward sums the gradients over the ranks (each rank's loss depends on every
    rank's statistics), as ``torch.distributed.nn.functional.all_reduce`` (deprecated) does."""

    @staticmethod
    def forward(ctx, tensor: torch.Tensor, group: Any) -> torch.Tensor:
        import torch.distributed as dist

        ctx.group = group
        out = tensor.clone(memory_format=torch.contiguous_format)
        dist.all_reduce(out, group=group)
        return out

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        return _AllReduceSum.apply(grad, ctx.group), None


class CpuSyncBatchNorm(nn.BatchNorm2d):
    """BatchNorm whose training statistics span every rank's batch, for CPU (gloo) process groups.

    ``torch.nn.SyncBatchNorm`` runs only on GPUs. Here the per-channel sum, then the sum of squared
    deviations from the global mean, are all-reduced by a differentiable sum (whose backward sums the
    gradients over the ranks), so forward and backward equal BatchNorm over the global batch. Running
    statistics are updated as ``BatchNorm`` does (unbiased variance). Works for 2-D to 5-D inputs; in
    eval mode, or without a process group, it is plain BatchNorm.
    """

    group: Any = None

    def _check_input_dim(self, input: torch.Tensor) -> None:
        if input.dim() < 2:
            raise ValueError(f"expected at least 2D input (got {input.dim()}D input)")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        import torch.distributed as dist

        if not (self.training and dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1):
            return super().forward(x)
        c = x.shape[1]
        dims = [0, *range(2, x.dim())]
        shape = [1, c] + [1] * (x.dim() - 2)
        count = _AllReduceSum.apply(x.new_tensor([float(x.numel() // c)]), self.group)
        mean = _AllReduceSum.apply(x.sum(dims), self.group) / count
        centred = x - mean.view(shape)
        var = _AllReduceSum.apply((centred * centred).sum(dims), self.group) / count
        if self.track_running_stats and self.running_mean is not None:
            with torch.no_grad():
                self.num_batches_tracked.add_(1)
                m = self.momentum if self.momentum is not None else 1.0 / float(self.num_batches_tracked)
                n = float(count)
                self.running_mean.mul_(1 - m).add_(mean.detach(), alpha=m)
                self.running_var.mul_(1 - m).add_(var.detach() * (n / max(n - 1.0, 1.0)), alpha=m)
        y = centred * torch.rsqrt(var.view(shape) + self.eps)
        if self.affine:
            y = y * self.weight.view(shape) + self.bias.view(shape)
        return y


def convert_cpu_sync_batchnorm(module: nn.Module, group: Any = None) -> nn.Module:
    """Replace every BatchNorm of ``module`` by a :class:`CpuSyncBatchNorm` holding the same parameters and buffers."""
    out = module
    if isinstance(module, nn.modules.batchnorm._BatchNorm) and not isinstance(module, CpuSyncBatchNorm):
        out = CpuSyncBatchNorm(module.num_features, module.eps, module.momentum, module.affine, module.track_running_stats)
        if module.affine:
            out.weight, out.bias = module.weight, module.bias
        out.running_mean, out.running_var = module.running_mean, module.running_var
        out.num_batches_tracked = module.num_batches_tracked
        out.group = group
        out.train(module.training)
    for name, child in module.named_children():
        out.add_module(name, convert_cpu_sync_batchnorm(child, group))
    return out


class RankSlices(Sampler[int]):
    """This rank's share of each global batch of ``sampler``'s epoch order (rank r takes items
    ``[k*B + r*b, k*B + (r+1)*b)`` of batch k). An epoch shorter than one global batch is split evenly."""

    def __init__(self, sampler: Sampler[int], global_batch: int, world_size: int, rank: int) -> None:
        self.sampler, self.global_batch, self.world, self.rank = sampler, global_batch, world_size, rank

    def set_epoch(self, epoch: int) -> None:
        self.sampler.set_epoch(epoch)

    def _indices(self) -> np.ndarray:
        order = np.fromiter(iter(self.sampler), dtype=np.int64)
        b = self.global_batch // self.world
        full = (len(order) // self.global_batch) * self.global_batch if len(order) > self.global_batch else 0
        if full:
            return order[:full].reshape(-1, self.global_batch)[:, self.rank * b:(self.rank + 1) * b].ravel()
        return np.array_split(order, self.world)[self.rank]

    def __iter__(self):
        return iter(self._indices().tolist())

    def __len__(self) -> int:
        n = len(self.sampler)
        if n > self.global_batch:
            return (n // self.global_batch) * (self.global_batch // self.world)
        return len(np.array_split(np.arange(n), self.world)[self.rank])


@dataclass
class DistContext:
    """This process's place in a torchrun job (rank 0 of 1 without torchrun); every method is a no-op then."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    backend: str = ""
    bn_group: Any = None

    @property
    def is_lead(self) -> bool:
        """Rank 0: the one process that writes the run directory and prints."""
        return self.rank == 0

    @property
    def active(self) -> bool:
        return self.world_size > 1

    def describe(self) -> dict[str, Any]:
        return {"world_size": self.world_size, "backend": self.backend or "none"}

    def rank_seed(self, seed: int) -> int:
        """A seed for this rank's own random stream (rank 0 keeps ``seed``)."""
        if self.rank == 0:
            return seed
        return int(np.random.SeedSequence([seed, self.rank]).generate_state(1)[0])

    def per_rank_batch(self, global_batch: int) -> int:
        if global_batch % self.world_size:
            raise WbcError(f"--batch-size {global_batch} (the global batch) must be divisible by the {self.world_size} "
                           "processes; pick a multiple of the process count")
        return global_batch // self.world_size

    def batches(self, global_batch: int, sampler: Sampler[int]) -> tuple[int, Sampler[int]]:
        """(this rank's batch size, this rank's sampler) for one process's ``global_batch`` over ``sampler``."""
        if not self.active:
            return global_batch, sampler
        return self.per_rank_batch(global_batch), RankSlices(sampler, global_batch, self.world_size, self.rank)

    def wrap(self, model: nn.Module, device: torch.device) -> nn.Module:
        """Global-batch BatchNorm and DistributedDataParallel around ``model`` (``model`` itself with one process).

        Keep ``model`` for evaluation and checkpoints (same parameters, no ``module.`` prefix)."""
        if not self.active:
            return model
        from torch.nn.parallel import DistributedDataParallel

        if device.type == "cuda":
            nn.SyncBatchNorm.convert_sync_batchnorm(model)
            return DistributedDataParallel(model, device_ids=[device.index], output_device=device.index)
        convert_cpu_sync_batchnorm(model, self.bn_group)
        return DistributedDataParallel(model)

    def shard(self, ds: Dataset) -> Dataset:
        """Every ``world_size``-th item from this rank's index (evaluation)."""
        return Subset(ds, range(self.rank, len(ds), self.world_size)) if self.active else ds

    def gather_eval(self, loss_sum: float, per_item: np.ndarray, n: int) -> tuple[float, np.ndarray]:
        """Undo :meth:`shard`: the summed loss and the per-item rows (predictions, logits) of every item in
        dataset order."""
        if not self.active:
            return loss_sum, per_item
        import torch.distributed as dist

        parts: list[Any] = [None] * self.world_size
        dist.all_gather_object(parts, (float(loss_sum), np.asarray(per_item)))
        first = np.asarray(parts[0][1])
        full = np.zeros((n, *first.shape[1:]), dtype=first.dtype)
        for r, (_, p) in enumerate(parts):
            full[r::self.world_size] = p
        return float(sum(loss for loss, _ in parts)), full

    def sum(self, *values: float) -> tuple[float, ...]:
        """Values summed over the ranks (epoch statistics for the history)."""
        if not self.active:
            return values
        import torch.distributed as dist

        t = torch.tensor(values, dtype=torch.float64)
        dist.all_reduce(t)
        return tuple(float(v) for v in t)

    def barrier(self) -> None:
        if self.active:
            import torch.distributed as dist

            dist.barrier()

    def close(self) -> None:
        if self.active:
            import torch.distributed as dist

            if dist.is_initialized():
                dist.destroy_process_group()


def setup(device: torch.device) -> tuple[DistContext, torch.device]:
    """Join torchrun's process group when ``WORLD_SIZE`` > 1 (NCCL for CUDA, gloo for CPU); returns the context
    and this rank's device (``cuda:LOCAL_RANK`` on GPUs). Without torchrun: rank 0 of 1, ``device`` unchanged."""
    world = int(os.environ.get("WORLD_SIZE", "1") or 1)
    if world <= 1:
        return DistContext(), device
    import torch.distributed as dist

    rank, local_rank = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0"))
    if device.type == "cuda":
        if local_rank >= torch.cuda.device_count():
            raise WbcError(f"rank {rank} needs GPU {local_rank} but this machine has {torch.cuda.device_count()}: "
                           "start at most one process per GPU (--nproc-per-node)")
        device = torch.device("cuda", local_rank)
        torch.cuda.set_device(device)
    backend = "nccl" if device.type == "cuda" else "gloo"
    if not dist.is_initialized():
        dist.init_process_group(backend=backend, timeout=TIMEOUT)
    bn_group = dist.new_group(backend="gloo", timeout=TIMEOUT) if backend == "gloo" else None
    return DistContext(rank=rank, world_size=world, local_rank=local_rank, backend=backend, bn_group=bn_group), device
