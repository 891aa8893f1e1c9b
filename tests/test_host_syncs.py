"""Host syncs per training step, counted without a GPU.

The stand-in for the GPU is torch's meta device: a meta tensor has a shape and a dtype but no
data, so every operation runs (queued, as on a GPU) and every read of a value on the host
(bool, item, tolist, float, int, cpu) is a place where a CUDA step would wait for the device.
`count_host_syncs` counts those reads (answering with zeros so the step goes on); a step that
decides its branch from a device tensor shows up as one read per step.
"""

from __future__ import annotations

import collections
import contextlib

import pytest
import torch

from satpipe.train.models import create_model
from satpipe.train.variant_base import coin
from satpipe.train.variants import VARIANTS, VariantConfig

_READS = {
    "__bool__": lambda t: False,
    "item": lambda t: 0,
    "tolist": lambda t: [],
    "__float__": lambda t: 0.0,
    "__int__": lambda t: 0,
    "cpu": lambda t: torch.zeros(t.shape, dtype=t.dtype),
}


@contextlib.contextmanager
def count_host_syncs(monkeypatch):
    """A Counter of host reads of meta ("device") tensors made inside the block."""
    counts: collections.Counter = collections.Counter()
    for name, answer in _READS.items():
        original = getattr(torch.Tensor, name)

        def read(self, *args, _name=name, _answer=answer, _original=original, **kwargs):
            if self.device.type == "meta":
                counts[_name] += 1
                return _answer(self)
            return _original(self, *args, **kwargs)

        monkeypatch.setattr(torch.Tensor, name, read)
    yield counts


# The variants that draw a coin per batch, and the plain attacks they mix with.
COIN_VARIANTS = ["pgd", "pgd-sat", "trades-noise", "fgsm-rs-sat"]


@pytest.mark.parametrize("name", COIN_VARIANTS)
def test_a_training_step_reads_nothing_back_from_the_device(monkeypatch, name):
    variant = VARIANTS.get(name)
    torch.manual_seed(0)
    net = create_model("smallcnn", 10).to("meta")
    optimizer = torch.optim.SGD(net.parameters(), lr=0.1)
    x = torch.empty((4, 3, 8, 8), device="meta")
    s = torch.empty((4, 3, 8, 8), device="meta")
    y = torch.empty((4,), dtype=torch.long, device="meta")
    cfg = VariantConfig(p_mix=0.5)
    state = variant.begin_epoch()
    with count_host_syncs(monkeypatch) as counts:
        for _ in range(3):
            variant.train_batch(
                net, optimizer, x, s, y, epoch=0, cfg=cfg, attack_model=net, state=state
            )
    assert dict(counts) == {}, f"{name}: host reads per 3 steps {dict(counts)}"


def test_the_coin_of_a_device_generator_is_drawn_on_the_host():
    """A device generator is read for its seed only (host-side), never drawn from."""

    class DeviceGenerator:  # what a CUDA generator offers without a device round trip
        device = torch.device("cuda", 0)

        def __init__(self, seed):
            self.seed = seed

        def initial_seed(self):
            return self.seed

    flips = [coin(0.5, DeviceGenerator(seed)) for seed in range(64)]
    assert flips == [coin(0.5, DeviceGenerator(seed)) for seed in range(64)]
    assert 16 < sum(flips) < 48  # a fair coin over 64 step seeds
    # A CPU generator is drawn from as before: the same bytes as torch.rand on it.
    g1, g2 = torch.Generator().manual_seed(7), torch.Generator().manual_seed(7)
    assert coin(0.3, g1) == bool(torch.rand((), generator=g2) < 0.3)
    assert torch.equal(g1.get_state(), g2.get_state())
    assert coin(1.0, None) and not coin(0.0, None)
