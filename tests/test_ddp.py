"""DistributedDataParallel on CPU: 2 processes, gloo backend, tiny model — identical weights on both ranks,
different data per rank, rank-0 checkpoints holding both ranks' states, resume under DDP, and a one-process
checkpoint resumed by two processes (each rank reseeds its data order with seed + 7919·step + rank)."""
import json
import os
import socket
from datetime import timedelta

import torch
import torch.multiprocessing as mp

from diffusion.checkpoint import list_checkpoints, load_checkpoint


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _worker(rank, world, port, out_dir):
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(world),
                      LOCAL_RANK=str(rank))
    torch.set_num_threads(1)
    import torch.distributed as dist

    from diffusion import distributed
    from test_train import tiny_cfg, tiny_data
    from diffusion.train import Trainer

    # joined here with a short timeout (the trainer joins an existing group): ranks that disagree on their
    # collectives fail within a minute instead of waiting for gloo's default half hour
    dist.init_process_group("gloo", rank=rank, world_size=world, timeout=timedelta(seconds=45))
    cfg = tiny_cfg(total_steps=2, ckpt_every=2, log_every=1)
    tr = Trainer(cfg, data=tiny_data(), out_dir=out_dir, device="cpu", progress=False)
    assert tr.local_batch == cfg.train.batch_size // world
    x, _ = next(iter(tr.batches))
    first_batches = [None] * world
    dist.all_gather_object(first_batches, x)
    tr.train()
    widened = Trainer(cfg, data=tiny_data(), out_dir=os.path.join(out_dir, "single"), device="cpu", resume=True,
                      progress=False)
    seeds = [None] * world
    dist.all_gather_object(seeds, torch.initial_seed())
    widened.close()
    resumed = Trainer(cfg, data=tiny_data(), out_dir=out_dir, device="cpu", resume=True, progress=False)
    res = resumed.train(total_steps=4)
    flat = torch.cat([p.detach().reshape(-1) for p in resumed.model.parameters()])
    gathered = [torch.zeros_like(flat) for _ in range(world)]
    dist.all_gather(gathered, flat)
    if rank == 0:
        report = {"same_weights": all(torch.equal(g, gathered[0]) for g in gathered),
                  "different_data": not torch.equal(first_batches[0], first_batches[1]),
                  "step": res["step"], "loss": res["loss"], "seeds": seeds}
        with open(os.path.join(out_dir, "report.json"), "w") as f:
            json.dump(report, f)
    distributed.destroy()


def test_ddp_two_processes_gloo(tmp_path):
    from test_train import tiny_cfg, tiny_data
    from diffusion.train import Trainer

    Trainer(tiny_cfg(total_steps=3, ckpt_every=3, log_every=1), data=tiny_data(), out_dir=tmp_path / "single",
            device="cpu", progress=False).train()
    mp.spawn(_worker, args=(2, _free_port(), str(tmp_path)), nprocs=2, join=True)
    report = json.loads((tmp_path / "report.json").read_text())
    assert report == {**report, "same_weights": True, "different_data": True, "step": 4,
                      "seeds": [0 + 7919 * 3 + 0, 0 + 7919 * 3 + 1]}
    assert report["loss"] > 0
    ckpts = list_checkpoints(tmp_path / "checkpoints")
    assert [p.name for p in ckpts] == ["ckpt_0000002.pt", "ckpt_0000004.pt"]
    state = load_checkpoint(ckpts[-1])
    assert state["world_size"] == 2 and len(state["rank_states"]) == 2
    steps = [json.loads(line)["step"] for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert steps == [1, 2, 3, 4]  # rank 0 alone writes the log
