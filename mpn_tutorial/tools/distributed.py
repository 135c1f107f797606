"""Training on several GPUs while message passing still sees the whole batch.

The MPN needs every sample of the batch; plain data-parallel training would pass messages within each
GPU's slice only, which silently changes the method. Here :class:`ShardedBatchSampler` hands rank r its
slice of one global P×K batch; each rank embeds its slice with the backbone (in
``DistributedDataParallel``); :func:`gather_with_gradients` all-gathers the embeddings (and labels), so
every rank runs the classifier and the MPN on the *global* batch, and in the backward pass each rank
receives the summed gradient of its own slice; BatchNorm statistics cover the global batch too
(``SyncBatchNorm`` on GPUs, :class:`GlobalBatchNorm` on CPU/gloo). Every rank uses the same seed, so
the dropout masks agree and DDP's averaged gradients equal the single-process ones
(tests/test_distributed.py). With one process, :class:`SingleProcess` stands in (its gather is the identity).
Launch: ``torchrun --nproc_per_node=K -m mpn_tutorial train --preset cub --data-root DIR``.
"""

from __future__ import annotations

import os
import warnings

import torch
import torch.distributed as dist
from torch import nn

from mpn_tutorial.errors import UsageError


class _GatherWithGradients(torch.autograd.Function):
    """All-gather along dim 0; backward: sum the gradients of all ranks, return this rank's slice."""

    @staticmethod
    def forward(ctx, tensor: torch.Tensor) -> torch.Tensor:
        ctx.rank, ctx.size = dist.get_rank(), tensor.shape[0]
        return gather_labels(tensor)

    @staticmethod
    def backward(ctx, gradient: torch.Tensor) -> torch.Tensor:
        gradient = gradient.contiguous().clone()
        dist.all_reduce(gradient)  # every rank's loss depends on this rank's slice
        return gradient[ctx.rank * ctx.size : (ctx.rank + 1) * ctx.size]


def gather_with_gradients(tensor: torch.Tensor) -> torch.Tensor:
    """(n, ...) on each of W ranks -> (W*n, ...) on every rank, rank order; differentiable."""
    return _GatherWithGradients.apply(tensor)


def gather_labels(labels: torch.Tensor) -> torch.Tensor:
    """(n, ...) on each of W ranks -> (W*n, ...) on every rank, rank order; no gradients (the labels)."""
    pieces = [torch.empty_like(labels) for _ in range(dist.get_world_size())]
    dist.all_gather(pieces, labels.contiguous())
    return torch.cat(pieces)


class GlobalBatchNorm(nn.modules.batchnorm._BatchNorm):
    """BatchNorm whose training statistics cover the global batch, on any backend (gloo included): PyTorch's
    ``SyncBatchNorm`` runs on GPUs only; this uses two differentiable all-reduces of per-channel sums.
    Outside distributed training it is ordinary BatchNorm."""

    def _check_input_dim(self, input: torch.Tensor) -> None:
        if input.dim() < 2:
            raise UsageError(f"expected at least 2-D input (N, C, ...), got {input.dim()}-D")

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        synced = self.training and dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1
        if not synced:
            return super().forward(input)
        channels = input.shape[1]
        dims = [0, *range(2, input.dim())]
        shape = [1, channels] + [1] * (input.dim() - 2)
        all_reduce = torch.distributed.nn.functional.all_reduce  # differentiable sum over ranks
        count = torch.tensor([input.numel() / channels], dtype=input.dtype, device=input.device)
        sums = all_reduce(torch.cat([input.sum(dims), count]))
        total = sums[-1]
        mean = sums[:channels] / total
        # two passes (mean, then squared deviations), as single-process BatchNorm computes it
        centered = input - mean.view(shape)
        variance = all_reduce((centered * centered).sum(dims)) / total
        if self.track_running_stats:
            with torch.no_grad():
                self.num_batches_tracked.add_(1)
                momentum = self.momentum if self.momentum is not None else 1.0 / float(self.num_batches_tracked)
                unbiased = variance * total / (total - 1).clamp_min(1)
                self.running_mean.lerp_(mean, momentum)
                self.running_var.lerp_(unbiased, momentum)
        output = centered * torch.rsqrt(variance.view(shape) + self.eps)
        if self.affine:
            output = output * self.weight.view(shape) + self.bias.view(shape)
        return output

    @classmethod
    def convert(cls, module: nn.Module) -> nn.Module:
        """Replace every BatchNorm layer of ``module`` (recursively), keeping its parameters and buffers."""
        if isinstance(module, nn.modules.batchnorm._BatchNorm) and not isinstance(module, cls):
            converted = cls(module.num_features, module.eps, module.momentum, module.affine, module.track_running_stats)
            converted.load_state_dict(module.state_dict())
            converted.train(module.training)
            if module.affine:
                converted.weight.requires_grad_(module.weight.requires_grad)
                converted.bias.requires_grad_(module.bias.requires_grad)
            return converted
        for name, child in module.named_children():
            module.add_module(name, cls.convert(child))
        return module


class ShardedBatchSampler(torch.utils.data.Sampler[list[int]]):
    """Rank r's slice of each global batch of another batch sampler (e.g. a :class:`PKSampler`): every rank
    builds the same global batches (same seed, same epoch) and keeps ``batch[r*n : (r+1)*n]``, ``n = len(batch)
    // world_size``; the slices, gathered in rank order, are the global batch again."""

    def __init__(self, sampler, rank: int, world_size: int) -> None:
        if sampler.batch_size % world_size != 0:
            raise UsageError(f"the global batch of {sampler.batch_size} samples cannot be split evenly over "
                             f"{world_size} processes; choose classes_per_batch * samples_per_class divisible by the "
                             "number of GPUs")
        self.sampler, self.rank, self.world_size = sampler, rank, world_size
        self.batch_size = sampler.batch_size // world_size

    def set_epoch(self, epoch: int) -> None:
        self.sampler.set_epoch(epoch)

    def __len__(self) -> int:
        return len(self.sampler)

    def __iter__(self):
        start = self.rank * self.batch_size
        for batch in self.sampler:
            yield batch[start : start + self.batch_size]


class DistributedContext:
    """What :func:`mpn_tutorial.training.train` needs to train with several processes."""

    def __init__(self, rank: int, world_size: int, device: torch.device) -> None:
        self.rank, self.world_size, self.device = rank, world_size, device
        self.is_main = rank == 0

    def shard_sampler(self, sampler) -> ShardedBatchSampler:
        return ShardedBatchSampler(sampler, self.rank, self.world_size)

    def wrap(self, model: nn.Module, find_unused_parameters: bool = False) -> nn.Module:
        """Global-batch BatchNorm, then DistributedDataParallel (gradient averaging across ranks).
        ``find_unused_parameters``: needed when some parameters get no gradient in a step (message
        passing switched off: its attention maps are then unused)."""
        cuda = self.device.type == "cuda"
        model = nn.SyncBatchNorm.convert_sync_batchnorm(model) if cuda else GlobalBatchNorm.convert(model)
        return nn.parallel.DistributedDataParallel(model, device_ids=[self.device.index] if cuda else None,
                                                   find_unused_parameters=find_unused_parameters)

    gather = staticmethod(gather_with_gradients)
    gather_labels = staticmethod(gather_labels)

    def close(self) -> None:
        if dist.is_initialized():
            dist.destroy_process_group()


class SingleProcess:
    """The one-process case of :class:`DistributedContext`: the batch is already global, so gathering
    is the identity and nothing is wrapped. The training loop has one path for both."""

    rank, world_size, is_main = 0, 1, True

    def __init__(self, device: torch.device) -> None:
        self.device = device

    def shard_sampler(self, sampler):
        return sampler

    def wrap(self, model: nn.Module, find_unused_parameters: bool = False) -> nn.Module:
        return model

    gather = gather_labels = staticmethod(lambda tensor: tensor)


# What torchrun sets for every process it starts; a WORLD_SIZE alone (left over in a shell, or set by
# a cluster for another tool) does not make a distributed launch.
TORCHRUN_VARIABLES = ("RANK", "LOCAL_RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")


def from_environment(config) -> DistributedContext | None:
    """A context when launched by torchrun with more than one process, else None (one process)."""
    present = [name for name in TORCHRUN_VARIABLES if name in os.environ]
    if len(present) < len(TORCHRUN_VARIABLES):
        if present and int(os.environ.get("WORLD_SIZE", "1") or 1) > 1:
            missing = sorted(set(TORCHRUN_VARIABLES) - set(present))
            warnings.warn(f"WORLD_SIZE={os.environ['WORLD_SIZE']} is set but {', '.join(missing)} are not: training "
                          "in one process. Launch with torchrun --nproc_per_node=K to use K GPUs.", stacklevel=2)
        return None
    world_size = int(os.environ["WORLD_SIZE"])
    if world_size <= 1:
        return None
    rank, local_rank = int(os.environ["RANK"]), int(os.environ["LOCAL_RANK"])
    use_cuda = torch.cuda.is_available() and config.device != "cpu"
    device = torch.device("cuda", local_rank) if use_cuda else torch.device("cpu")
    if use_cuda:
        torch.cuda.set_device(device)
    if not dist.is_initialized():
        dist.init_process_group("nccl" if use_cuda else "gloo")
    return DistributedContext(rank, world_size, device)
