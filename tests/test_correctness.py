"""correct.npz round trip, the stratified evaluation order, and EvalConfig's attack options."""

import numpy as np
import pytest

from satpipe.core.errors import SatpipeError
from satpipe.train.config import EvalConfig
from satpipe.train.eval.per_image import load_correct, write_correct
from satpipe.train.eval.subset import stratified_order


def test_correctness_file_round_trips_and_reads_without_satpipe(tmp_path):
    rng = np.random.default_rng(0)
    n = 37  # not a multiple of 8: the packed bits are padded
    clean = rng.random(n) < 0.8
    bits = {
        ("pgd", "8", 0): clean & (rng.random(n) < 0.5),
        ("pgd", "8", 1): clean & (rng.random(n) < 0.5),
        ("fgsm", "8", None): clean & (rng.random(n) < 0.6),
        ("autoattack", "8", 0): clean[:13] & (rng.random(13) < 0.3),  # a prefix
        ("robust", "8", None): clean[:13] & False,
    }
    indices = rng.permutation(100)[:n]
    write_correct(tmp_path / "correct.npz", indices, np.arange(n) % 3, clean, bits)
    c = load_correct(tmp_path)  # the run folder works too
    assert c.indices.tolist() == indices.tolist() and c.clean.tolist() == clean.tolist()
    for key, value in bits.items():
        assert c.entries[key].tolist() == value.tolist()
    assert c.get("fgsm", 8).tolist() == bits[("fgsm", "8", None)].tolist()
    assert c.runs("pgd", 8.0).shape == (2, n) and c.seeds("pgd", "8") == [0, 1]
    assert c.robust(8).shape == (13,)
    with np.load(tmp_path / "correct.npz", allow_pickle=False) as raw:  # plain numpy reads it
        assert set(raw.files) >= {"indices", "labels", "keys", "lengths", "bits", "clean"}
        first = np.unpackbits(raw["bits"][0], count=n, bitorder="little").astype(bool)
        assert first.tolist() == bits[("pgd", "8", 0)].tolist()
    with pytest.raises(SatpipeError, match="no measurement pgd at 4/255"):
        c.runs("pgd", 4)
    (tmp_path / "bad.npz").write_bytes(b"not a zip")
    with pytest.raises(SatpipeError, match="bad.npz: not a readable correctness file"):
        load_correct(tmp_path / "bad.npz")
    with pytest.raises(SatpipeError, match="no per-image correctness file"):
        load_correct(tmp_path / "missing")


@pytest.mark.parametrize("seed", [0, 1])
def test_every_prefix_of_the_evaluation_order_is_class_stratified(seed):
    rng = np.random.default_rng(seed)
    labels = np.concatenate([np.zeros(13, int), np.ones(140, int), rng.integers(2, 6, 147)])
    order = stratified_order(labels, seed)
    assert sorted(order.tolist()) == list(range(len(labels)))
    share = np.bincount(labels) / len(labels)
    for n in range(1, len(labels) + 1):
        counts = np.bincount(labels[order[:n]], minlength=len(share))
        # Class k's count is ceil(t n_k - u_k) for the prefix's position t: within 1 of t n_k,
        # and t N within the sum of those offsets of n, so within 2 of n * share, every prefix.
        assert np.abs(counts - n * share).max() < 2.0
    assert stratified_order(labels, seed).tolist() == order.tolist()
    assert stratified_order(labels, seed + 7).tolist() != order.tolist()


def test_eval_config_attack_options():
    cfg = EvalConfig(
        run="r", attacks="fgsm,pgd,autoattack", eps=(1, 2), attack_eps={"autoattack": "4,8"},
        attack_examples={"autoattack": 10},
    )  # fmt: skip
    assert cfg.grid("autoattack") == (4.0, 8.0) and cfg.grid("pgd") == (0.0, 1.0, 2.0)
    assert cfg.grid("fgsm") == (0.0, 1.0, 2.0)
    assert EvalConfig(run="r", attacks=("pgd", "autoattack"), attack_eps={"autoattack": 8}
                      ).grid("autoattack") == (8.0,)  # fmt: skip
    with pytest.raises(SatpipeError, match="whole number of images"):
        EvalConfig(run="r", attacks=("pgd",), attack_examples={"pgd": 2.5})
    with pytest.raises(SatpipeError, match="--autoattack-components: choose from apgd-ce"):
        EvalConfig(run="r", autoattack_components=("pgd",))
    with pytest.raises(SatpipeError, match="restarts >= 1"):
        EvalConfig(run="r", restarts=0)
