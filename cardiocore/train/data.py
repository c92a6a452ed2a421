"""Data loading that can stop and restart mid-epoch and splits a global batch over ranks.

Every epoch's sample order is a permutation drawn from ``seed + epoch`` (PyTorch's
``DistributedSampler``), so it is the same whether a run is interrupted or not and whatever
the number of processes: with ``world_size`` ranks, global batch ``b`` is the same set of
samples a single process would see, split between the ranks.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any

import torch
from torch.utils.data import DataLoader, Dataset, DistributedSampler

from cardiocore.errors import CardioInputError
from cardiocore.train.distributed import DistributedContext


class ResumableSampler(DistributedSampler):
    """A ``DistributedSampler`` whose epoch can start after its first ``start_index`` samples."""

    def __init__(
        self, dataset: Dataset, context: DistributedContext, shuffle: bool, seed: int, drop_last: bool
    ) -> None:
        super().__init__(
            dataset,
            num_replicas=context.world_size,
            rank=context.rank,
            shuffle=shuffle,
            seed=seed,
            drop_last=drop_last,
        )
        self.start_index = 0

    def set_position(self, epoch: int, start_index: int) -> None:
        """Start the next iteration at sample ``start_index`` (this rank's count) of ``epoch``."""
        self.set_epoch(epoch)
        self.start_index = start_index

    def __iter__(self) -> Iterator[int]:
        return iter(list(super().__iter__())[self.start_index :])

    def __len__(self) -> int:
        return max(self.num_samples - self.start_index, 0)


class EpochBatches:
    """This rank's share of a training set, served epoch by epoch from any position.

    ``per_rank_batch`` samples per step on each rank (the global batch divided by the world
    size). Loader workers draw their seeds from a generator seeded by ``seed + epoch``, never
    from the global torch generator, so starting an iterator does not shift training's RNG.
    """

    def __init__(
        self,
        dataset: Dataset,
        per_rank_batch: int,
        context: DistributedContext,
        *,
        shuffle: bool,
        seed: int,
        drop_last: bool,
        num_workers: int,
        collate_fn: Callable[[list[Any]], Any] | None,
    ) -> None:
        self.seed = seed
        self.per_rank_batch = per_rank_batch
        self.sampler = ResumableSampler(dataset, context, shuffle=shuffle, seed=seed, drop_last=drop_last)
        self.generator = torch.Generator()
        self.loader = DataLoader(
            dataset,
            batch_size=per_rank_batch,
            sampler=self.sampler,
            num_workers=num_workers,
            collate_fn=collate_fn,
            drop_last=drop_last,
            generator=self.generator,
            pin_memory=context.device.type == "cuda",
        )
        samples = self.sampler.num_samples
        self.batches_per_epoch = samples // per_rank_batch if drop_last else -(-samples // per_rank_batch)
        if self.batches_per_epoch == 0:
            raise CardioInputError(
                "train_data",
                f"has {len(dataset)} samples, fewer than one global batch",
                "lower batch_size or add data",
            )

    def batches(self, epoch: int, skip_batches: int) -> Iterator[Any]:
        """The batches of ``epoch`` after the first ``skip_batches``."""
        self.sampler.set_position(epoch, skip_batches * self.per_rank_batch)
        self.generator.manual_seed(self.seed + epoch)
        return iter(self.loader)


def validation_loader(
    dataset: Dataset,
    per_rank_batch: int,
    context: DistributedContext,
    num_workers: int,
    collate_fn: Callable[[list[Any]], Any] | None,
) -> DataLoader:
    """In-order batches of this rank's share of ``dataset`` (rank r takes samples r, r + W, ...).

    Unlike ``DistributedSampler`` nothing is padded or dropped, so summing over ranks counts
    each sample exactly once.
    """
    indices = list(range(context.rank, len(dataset), context.world_size))
    return DataLoader(
        dataset,
        batch_size=per_rank_batch,
        sampler=indices,
        num_workers=num_workers,
        collate_fn=collate_fn,
        pin_memory=context.device.type == "cuda",
    )


def move_to_device(batch: Any, device: torch.device) -> Any:
    """``batch`` with every tensor (inside dicts, lists, tuples, or objects with ``.to``) on ``device``."""
    non_blocking = device.type == "cuda"
    if isinstance(batch, torch.Tensor):
        return batch.to(device, non_blocking=non_blocking)
    if isinstance(batch, Mapping):
        return {key: move_to_device(value, device) for key, value in batch.items()}
    if isinstance(batch, tuple) and hasattr(batch, "_fields"):  # namedtuple
        return type(batch)(*(move_to_device(value, device) for value in batch))
    if isinstance(batch, Sequence) and not isinstance(batch, (str, bytes)):
        return type(batch)(move_to_device(value, device) for value in batch)
    if hasattr(batch, "to") and callable(batch.to):  # e.g. a torch_geometric Batch
        return batch.to(device)
    return batch
