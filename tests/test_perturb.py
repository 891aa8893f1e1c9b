import math

import pytest
import torch

from satpipe.core.errors import SatpipeError
from satpipe.train.perturb import alpha_schedule, sat_perturb, uniform_noise

EPS = 8 / 255


def _gen(seed=0):
    return torch.Generator().manual_seed(seed)


def test_alpha_schedule_matches_the_paper():
    assert alpha_schedule(0) == 1.0
    assert alpha_schedule(10) == pytest.approx(0.6)
    assert alpha_schedule(50) == pytest.approx(0.6**5)
    assert alpha_schedule(20, base=0.5) == pytest.approx(0.25)
    assert [alpha_schedule(t) for t in range(5)] == sorted(
        (alpha_schedule(t) for t in range(5)), reverse=True
    )
    with pytest.raises(SatpipeError):
        alpha_schedule(1, base=1.5)


def test_sat_perturb_statistics_and_saliency_components():
    # Mid-grey images: no clamping at eps=8/255, so delta = (x_sat - x) / eps exactly.
    x = torch.full((8, 3, 32, 32), 0.5)
    s = torch.rand(8, 1, 32, 32, generator=_gen(1)) * 1.8 - 0.9  # |s| < 0.9: never looks like z
    alpha = 0.3
    delta = (sat_perturb(x, s, EPS, alpha, _gen(2)) - x) / EPS
    random = (delta.abs() - 1).abs() < 1e-4
    n = random.numel()
    assert random.float().mean().item() == pytest.approx(alpha, abs=4 * math.sqrt(alpha * 0.7 / n))
    # z is a fair coin in {-1, +1}.
    z = delta[random]
    assert z.mean().abs().item() < 4 / math.sqrt(z.numel())
    # The other components are exactly the negative saliency, broadcast over channels.
    sal = s.expand_as(x)
    torch.testing.assert_close(delta[~random], -sal[~random], atol=1e-4, rtol=0)
    torch.testing.assert_close((x + EPS * delta)[~random], (x - EPS * sal)[~random])
    # Coins are per element of x, not per pixel of the one-channel map.
    assert (random[:, 0] != random[:, 1]).any()


def test_sat_perturb_extremes_clamp_and_determinism():
    x = torch.rand(4, 3, 8, 8, generator=_gen(3))
    s = torch.rand(4, 3, 8, 8, generator=_gen(4)) * 2 - 1
    torch.testing.assert_close(sat_perturb(x, s, EPS, 0.0, _gen()), (x - EPS * s).clamp(0, 1))
    all_random = sat_perturb(x.clamp(0.1, 0.9), s, EPS, 1.0, _gen())
    assert torch.allclose((all_random - x.clamp(0.1, 0.9)).abs(), torch.tensor(EPS), atol=1e-6)
    out = sat_perturb(torch.ones(2, 3, 4, 4), -torch.ones(2, 1, 4, 4), 0.5, 0.0)
    assert out.max() == 1.0  # x + eps clamped
    assert torch.equal(sat_perturb(x, s, EPS, 0.5, _gen(9)), sat_perturb(x, s, EPS, 0.5, _gen(9)))
    assert not torch.equal(
        sat_perturb(x, s, EPS, 0.5, _gen(9)), sat_perturb(x, s, EPS, 0.5, _gen(8))
    )


def test_sat_perturb_refuses_bad_maps():
    x = torch.rand(2, 3, 8, 8)
    with pytest.raises(SatpipeError, match="saliency"):
        sat_perturb(x, None, EPS, 0.5)
    with pytest.raises(SatpipeError, match="channels"):
        sat_perturb(x, torch.zeros(2, 2, 8, 8), EPS, 0.5)
    with pytest.raises(SatpipeError, match="does not match"):
        sat_perturb(x, torch.zeros(2, 1, 4, 4), EPS, 0.5)


def test_uniform_noise_is_uniform_in_the_ball():
    x = torch.full((16, 3, 16, 16), 0.5)
    d = uniform_noise(x, EPS, _gen(5)) - x
    assert d.abs().max().item() <= EPS + 1e-7
    assert d.mean().abs().item() < 4 * EPS / math.sqrt(3 * d.numel())
    assert d.std().item() == pytest.approx(EPS / math.sqrt(3), rel=0.03)
    edge = uniform_noise(torch.zeros(2, 3, 4, 4), EPS, _gen(6))
    assert edge.min() >= 0 and edge.max() <= EPS
    assert torch.equal(uniform_noise(x, EPS, _gen(7)), uniform_noise(x, EPS, _gen(7)))
