"""EMA state written before the decay warm-up existed (no ``warmup`` entry) loads as a constant decay."""
import torch
from torch import nn

from diffusion.ema import EMA


def test_state_without_warmup_entry_means_constant_decay():
    net = nn.Linear(3, 2)
    ema = EMA(net, decay=0.9, warmup=True)
    state = ema.state_dict()
    assert state["warmup"] is True
    del state["warmup"]
    state["num_updates"] = 5
    fresh = EMA(nn.Linear(3, 2), decay=0.5, warmup=True)
    fresh.load_state_dict(state)
    assert fresh.warmup is False and fresh.decay == 0.9 and fresh.num_updates == 5
    assert fresh.current_decay() == 0.9
    for p, q in zip(fresh.module.parameters(), net.parameters()):
        assert torch.equal(p, q)
