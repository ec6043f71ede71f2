"""Two-process DistributedDataParallel runs on the CPU (gloo) for the training tests."""

import os
import socket

import torch
import torch.multiprocessing as mp


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _worker(rank, world_size, port, run, config, out_dir):
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank),
                      LOCAL_RANK=str(rank), WORLD_SIZE=str(world_size))
    torch.set_num_threads(1)
    model = run(config)
    torch.save(model.state_dict(), os.path.join(out_dir, f"rank{rank}.pt"))


def run_ddp(run, config, out_dir, world_size: int = 2) -> None:
    """`run(config)` in `world_size` processes as torchrun would start them; each rank's
    final state_dict lands in out_dir/rank{N}.pt."""
    mp.spawn(_worker, args=(world_size, _free_port(), run, config, str(out_dir)), nprocs=world_size,
             join=True)
