"""The benchmarks' random stores obey the store contract: verify finds nothing wrong."""

import numpy as np

from satpipe.data.dataset_store import open_dataset
from satpipe.data.inspect import verify_store
from satpipe.data.saliency_store import open_saliency
from satpipe.data.synthetic import write_random_dataset, write_random_pair


def test_random_stores_verify_and_pair_row_for_row(tmp_path):
    data, sal = write_random_pair(str(tmp_path), "d", 40, 8, n_test=6, rows_per_shard=16, seed=1)
    assert (data, sal) == (f"{tmp_path}/d.zarr", f"{tmp_path}/d_sal.zarr")
    assert verify_store(data) == []
    assert verify_store(sal, data=data) == []
    view = open_dataset(data)
    assert len(view.split("train")) == 40 and len(view.split("test")) == 6
    maps = np.asarray(open_saliency(sal).group["train/saliency"][:])
    assert maps.shape == (40, 8, 8, 1) and maps.dtype == np.float16
    assert -1 <= maps.min() < 0 < maps.max() <= 1
    # Same seed, same bytes.
    again = write_random_dataset(str(tmp_path / "d2.zarr"), 40, 8, n_test=6, rows_per_shard=16,
                                 seed=1)  # fmt: skip
    assert open_dataset(again).fingerprint == view.fingerprint


def test_random_dataset_has_the_classes_asked_for(tmp_path):
    data = write_random_dataset(
        str(tmp_path / "d.zarr"), 40, 8, n_test=6, num_classes=3, rows_per_shard=16, seed=1
    )
    assert verify_store(data) == []
    view = open_dataset(data)
    assert view.num_classes == 3 and len(view.split("train")) == 40 and len(view.split("test")) == 6
    assert set(np.unique(np.asarray(view.split("train").labels[:]))) <= {0, 1, 2}
