"""The plan of an epoch read from tar shards (``EpochPlan``, steps 1-4 of
``petl_modules.training.shards``' docstring): which clips each process and DataLoader worker reads,
in which batches, a function of the seed, the epoch, the processes, the workers and the batch size
alone; and where a resumed epoch starts."""

import math

import numpy as np

from petl_modules.training.shard_index import ShardError


def equal_cuts(total, pieces):
    """Start positions of ``pieces`` near-equal consecutive shares of ``total`` items, and the end."""
    return [total * k // pieces for k in range(pieces + 1)]


def batch_sizes(count, batches, batch_size):
    """``count`` clips in ``batches`` non-empty batches of at most ``batch_size``: full batches
    first, the last ones shortened (down to one clip) to fit."""
    sizes = [batch_size] * batches
    excess, k = batches * batch_size - count, batches - 1
    while excess > 0 and k >= 0:
        cut = min(excess, sizes[k] - 1)
        sizes[k] -= cut
        excess -= cut
        k -= 1
    return sizes


def equal_batch_counts(counts, batch_size):
    """Batches per worker (``counts[rank][worker]`` clips each) such that every rank has as many
    batches as the rank that needs most: extra batches go to the workers with most clips per batch.

    Raises
    ------
    ShardError
        A rank with too few clips to fill that many non-empty batches (tiny data only).
    """
    batches = [[math.ceil(c / batch_size) for c in rank] for rank in counts]
    target = max(sum(rank) for rank in batches)
    for rank, (have, clips) in enumerate(zip(batches, counts)):
        while sum(have) < target:
            slack = [c - b for c, b in zip(clips, have)]
            worker = int(np.argmax(slack))
            if slack[worker] <= 0:
                raise ShardError(
                    f"{sum(clips)} clips on process {rank} cannot fill {target} batches like the "
                    f"other processes: use fewer processes, a smaller --batch_size or more data.")
            have[worker] += 1
    return batches


def round_robin_done(batches, done):
    """``(delivered, next_worker)``: how many of its own batches each worker has delivered once
    the DataLoader (which takes the workers' batches in turn, skipping workers that have none
    left) has yielded ``done``, and the worker whose batch comes next (0 when none is left)."""
    delivered = [0] * len(batches)
    turn = 0
    while done > 0 and turn < max(batches, default=0):
        for worker, count in enumerate(batches):
            if done > 0 and turn < count:
                delivered[worker] += 1
                done -= 1
        turn += 1
    waiting = [w for w, count in enumerate(batches) if delivered[w] < count]
    behind = [w for w in waiting if delivered[w] == min(delivered[v] for v in waiting)]
    return delivered, (behind[0] if behind else 0)


def resumed_worker(batches, done, loader_worker):
    """The worker of the plan whose batches DataLoader worker ``loader_worker`` yields in an
    epoch resumed after ``done`` batches. A DataLoader starts its turns at its worker 0: the plan's
    workers are rotated so that its worker 0 plays the one whose batch comes next, which keeps
    the order of the batches left exactly that of an uninterrupted epoch."""
    return (loader_worker + round_robin_done(batches, done)[1]) % len(batches)


def buffer_order(count, size, rng):
    """The order in which a shuffle buffer of ``size`` emits ``count`` items fed in order: fill
    the buffer, then for each new item emit a random one and put the new one in its place; at the
    end emit what is left in random order. Equal to the stream shuffle of WebDataset-style
    loaders, computed on positions alone."""
    out = np.empty(count, dtype=np.int64)
    buffer = list(range(min(size, count)))
    draws = rng.integers(0, size, size=max(0, count - size)).tolist()
    for position, (item, slot) in enumerate(zip(range(len(buffer), count), draws)):
        out[position] = buffer[slot]
        buffer[slot] = item
    done = max(0, count - size)
    out[done:] = np.asarray(buffer, dtype=np.int64)[rng.permutation(len(buffer))]
    return out


class EpochPlan:
    """Which clips each process and DataLoader worker reads in an epoch, in which batches (see the
    module docstring). ``stream``: clip indices, one per copy, in reading order; ``shares[rank]
    [worker]``: the (start, end) of that worker's part of the stream; ``batches[rank][worker]``:
    its number of batches."""

    def __init__(self, table, seed, epoch, batch_size, processes=1, workers=1, shuffle=True,
                 weights=None, keep=None, buffer_size=1000):
        self.seed, self.epoch, self.batch_size, self.shuffle = int(seed), int(epoch), batch_size, shuffle
        self.buffer_size = int(buffer_size)
        keep = np.ones(len(table), dtype=bool) if keep is None else keep
        counts = keep.astype(np.int64)
        if weights is not None:  # sampling: class_balanced
            p = np.where(keep, weights, 0.0)
            rng = np.random.default_rng([self.seed, self.epoch, 1])
            counts = rng.multinomial(int(keep.sum()), p / p.sum())
        first, end = table.shard_bounds()
        order = np.arange(len(first))
        if shuffle:
            order = np.random.default_rng([self.seed, self.epoch, 2]).permutation(len(first))
        clips = np.concatenate([np.arange(first[s], end[s]) for s in order]) if len(order) else \
            np.zeros(0, dtype=np.int64)
        self.stream = np.repeat(clips, counts[clips])
        cuts = equal_cuts(len(self.stream), processes)
        self.shares = []
        for rank in range(processes):
            inner = equal_cuts(cuts[rank + 1] - cuts[rank], workers)
            self.shares.append([(cuts[rank] + inner[w], cuts[rank] + inner[w + 1])
                                for w in range(workers)])
        sizes = [[e - s for s, e in rank] for rank in self.shares]
        self.batches = equal_batch_counts(sizes, batch_size) if processes > 1 else \
            [[math.ceil(c / batch_size) for c in rank] for rank in sizes]

    def __len__(self):
        """Batches per process."""
        return sum(self.batches[0])

    def worker_share(self, rank, worker):
        """One worker's part of the stream, in reading order (shard by shard, copies together)."""
        start, end = self.shares[rank][worker]
        return self.stream[start:end]

    def worker_batches(self, rank, worker, done=0):
        """The clip indices of each remaining batch of one worker, its share shuffled (training),
        once the DataLoader has yielded ``done`` batches of this process."""
        share = self.worker_share(rank, worker)
        if self.shuffle:
            rng = np.random.default_rng([self.seed, self.epoch, 3, rank, worker])
            share = share[buffer_order(len(share), self.buffer_size, rng)]
        sizes = batch_sizes(len(share), self.batches[rank][worker], self.batch_size)
        skip = round_robin_done(self.batches[rank], done)[0][worker]
        bounds = np.concatenate([[0], np.cumsum(sizes)]).astype(np.int64)
        return [share[bounds[b]:bounds[b + 1]] for b in range(skip, len(sizes))]
