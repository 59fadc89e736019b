"""ELPV loader: counts from the real package, a deterministic documented split, options."""

import numpy as np
import pytest

import iadlib
from iadlib.errors import ConfigError

# Counts per (probability, type) measured on elpv-dataset 1.0.0.post1 (FACTS.md)
COUNTS = {"mono": {0.0: 588, 1.0: 313, "unsure": 117 + 56}, "poly": {0.0: 920, 1.0: 402, "unsure": 178 + 50}}


@pytest.mark.parametrize("cat", ["mono", "poly"])
def test_split_sizes_and_labels(cat):
    ds = iadlib.get_dataset("elpv", category=cat, seed=0)
    n_norm, n_anom = COUNTS[cat][0.0], COUNTS[cat][1.0]
    assert len(ds.test) == 2 * n_anom  # as many held-out normal as anomalous cells
    assert len(ds.train) == n_norm - n_anom
    assert (ds.train.labels == 0).all()
    assert ds.test.labels.sum() == n_anom
    s = ds.test[0]
    assert s.image.shape == (300, 300) and s.image.dtype == np.uint8 and s.mask is None
    # no cell is both in train and test
    tr = {x.meta["index"] for x in ds.train}
    te = {x.meta["index"] for x in ds.test}
    assert not tr & te
    assert all(x.meta["probability"] == 0.0 for x in ds.train)


def test_deterministic_and_seed_dependent():
    a = iadlib.get_dataset("elpv", category="mono", seed=0)
    b = iadlib.get_dataset("elpv", category="mono", seed=0)
    c = iadlib.get_dataset("elpv", category="mono", seed=1)
    assert a.train.paths == b.train.paths
    assert a.train.paths != c.train.paths


def test_uncertain_options_and_ratio():
    ds = iadlib.get_dataset("elpv", category="mono", uncertain="anomalous")
    assert ds.test.labels.sum() == COUNTS["mono"][1.0] + COUNTS["mono"]["unsure"]
    half = iadlib.get_dataset("elpv", category="mono", test_normal_ratio=0.5)
    assert len(half.train) == 432  # the benchmark setting of issue 2 (anomalib reference)
    probs = {x.meta["probability"] for x in iadlib.get_dataset("elpv", category="poly", uncertain="probability").test}
    assert {0.0, 1.0} < probs and len(probs) == 4
    with pytest.raises(ConfigError, match="mono, poly"):
        iadlib.get_dataset("elpv", category="cigs")
    with pytest.raises(ConfigError, match="uncertain"):
        iadlib.get_dataset("elpv", uncertain="maybe")
    with pytest.raises(ConfigError, match="valid:"):
        iadlib.get_dataset("elvp")
