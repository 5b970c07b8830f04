"""Checkpoints under DDP: every process sees a new checkpoint once ``save_checkpoint`` returns.

SpeechBrain's ``delete_checkpoints`` runs on every process and deletes through a main-process
call per checkpoint: processes that list different checkpoints wait for each other forever."""

import os
import time

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from petl_modules.training.checkpointing import Checkpointer

pytestmark = pytest.mark.slow  # two processes


def _save_twice(rank, folder, port, results):
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank),
                      WORLD_SIZE="2", LOCAL_RANK=str(rank))
    dist.init_process_group("gloo", rank=rank, world_size=2)
    replace = os.replace

    def slow_replace(src, dst):  # the main process finishes its checkpoint late
        time.sleep(0.5)
        return replace(src, dst)

    os.replace = slow_replace
    checkpointer = Checkpointer(folder, recoverables={"layer": torch.nn.Linear(2, 2)})
    for step in range(3):
        checkpointer.save_and_keep_only(meta={"step": step}, num_to_keep=1)
    results[rank] = sorted(c.meta["step"] for c in checkpointer.list_checkpoints())
    dist.barrier()
    dist.destroy_process_group()


def test_every_process_lists_a_saved_checkpoint_so_deleting_never_waits_forever(tmp_path):
    manager = mp.Manager()
    results = manager.dict()
    context = mp.get_context("spawn")
    port = 29000 + os.getpid() % 1000
    processes = [context.Process(target=_save_twice, args=(rank, tmp_path, port, results))
                 for rank in range(2)]
    for process in processes:
        process.start()
    deadline = time.monotonic() + 90
    for process in processes:
        process.join(timeout=max(1.0, deadline - time.monotonic()))
    hung = [p.pid for p in processes if p.is_alive()]
    for process in processes:
        if process.is_alive():
            process.kill()
    assert not hung, "processes waited for each other in delete_checkpoints"
    assert dict(results) == {0: [2], 1: [2]}
