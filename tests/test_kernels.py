"""Distance, kNN and coreset kernels against independent computations."""

import faiss
import numpy as np
import pytest
import torch

from iadlib.errors import ConfigError
from iadlib.kernels import greedy_coreset, greedy_coreset_reference, knn, random_projection, sq_dists


def test_sq_dists_matches_cdist():
    g = torch.Generator().manual_seed(0)
    a, b = torch.randn(50, 7, generator=g), torch.randn(30, 7, generator=g)
    assert torch.allclose(sq_dists(a, b), torch.cdist(a, b) ** 2, atol=1e-4)


@pytest.mark.parametrize("k", [1, 3])
def test_knn_matches_brute_force_and_faiss(k):
    g = torch.Generator().manual_seed(1)
    bank, q = torch.randn(500, 16, generator=g), torch.randn(123, 16, generator=g)
    d, i = knn(q, bank, k=k, chunk_bytes=4 * 500 * 10)  # force several blocks
    full = torch.cdist(q, bank)
    ref_d, ref_i = full.topk(k, dim=1, largest=False)
    if k == 1:
        ref_d, ref_i = ref_d[:, 0], ref_i[:, 0]
    assert torch.equal(i, ref_i)
    assert torch.allclose(d, ref_d, atol=1e-4)
    index = faiss.IndexFlatL2(16)
    index.add(bank.numpy())
    fd, fi = index.search(q.numpy(), k)
    assert np.array_equal(fi[:, 0], (i if k == 1 else i[:, 0]).numpy())


def test_knn_bad_shapes():
    with pytest.raises(ConfigError):
        knn(torch.zeros(3, 4), torch.zeros(5, 3))
    with pytest.raises(ConfigError):
        knn(torch.zeros(3, 4), torch.zeros(2, 4), k=3)


@pytest.mark.parametrize("seed,n,dim", [(0, 40, 2), (1, 200, 8), (2, 300, 64)])
def test_pruned_coreset_equals_plain_greedy(seed, n, dim):
    g = torch.Generator().manual_seed(seed)
    # clustered data, where pruning actually skips work
    centres = torch.randn(20, dim, generator=g) * 5
    x = centres[torch.randint(0, 20, (3000,), generator=g)] + torch.randn(3000, dim, generator=g)
    fast = greedy_coreset(x, n, start=7, refresh=5)
    ref = greedy_coreset_reference(x, n, start=7)
    assert torch.equal(fast, ref)
    assert len(set(fast.tolist())) == n


def test_coreset_covering_radius_beats_random():
    g = torch.Generator().manual_seed(3)
    x = torch.randn(4000, 10, generator=g)
    sel = greedy_coreset(x, 100)
    rnd = torch.randperm(4000, generator=g)[:100]
    cover = torch.cdist(x, x[sel]).min(1).values.max()
    cover_rnd = torch.cdist(x, x[rnd]).min(1).values.max()
    assert cover < cover_rnd
    with pytest.raises(ConfigError):
        greedy_coreset(x, 0)


def test_random_projection_preserves_distances():
    g = torch.Generator().manual_seed(4)
    x = torch.randn(200, 512, generator=g)
    y = random_projection(x, 128, seed=0)
    assert y.shape == (200, 128)
    d0, d1 = torch.pdist(x), torch.pdist(y)
    ratio = d1 / d0
    assert 0.7 < float(ratio.min()) and float(ratio.max()) < 1.3  # Johnson–Lindenstrauss
    assert random_projection(x, 1024) is x


@pytest.mark.parametrize("backend", ["numba", "torch"])
@pytest.mark.parametrize("seed,n,dim", [(5, 150, 3), (6, 400, 32)])
def test_coreset_backends_equal_plain_greedy(backend, seed, n, dim):
    g = torch.Generator().manual_seed(seed)
    centres = torch.randn(30, dim, generator=g) * 4
    x = centres[torch.randint(0, 30, (5000,), generator=g)] + torch.randn(5000, dim, generator=g)
    stats: list[int] = []
    fast = greedy_coreset(x, n, start=11, backend=backend, stats=stats)
    assert torch.equal(fast, greedy_coreset_reference(x, n, start=11))
    # the pruning must skip most of the plain loop's n × N full distances
    assert sum(stats) < 0.5 * n * x.shape[0]


def test_coreset_bad_arguments():
    x = torch.randn(50, 4)
    with pytest.raises(ConfigError, match="start"):
        greedy_coreset(x, 5, start=50)
    with pytest.raises(ConfigError, match="backend"):
        greedy_coreset(x, 5, backend="cuda")


@pytest.mark.parametrize("n_bank", [64, 1000, 3001])
def test_knn_bf16_nearest_is_exact_against_float64(n_bank):
    """k = 1 in bf16: the error band must always keep the true nearest neighbour (float64 oracle),
    also with duplicated bank rows (exact ties), queries sitting on bank rows (distance 0), and a
    bank whose size is not a multiple of the bf16 column group (padding never wins)."""
    g = torch.Generator().manual_seed(n_bank)
    centres = torch.randn(20, 152, generator=g) * 3 + 10
    bank = centres[torch.randint(0, 20, (n_bank,), generator=g)] + 0.3 * torch.randn(n_bank, 152, generator=g)
    bank[1::7] = bank[::7][: len(bank[1::7])]  # exact duplicates
    q = centres[torch.randint(0, 20, (1500,), generator=g)] + 0.3 * torch.randn(1500, 152, generator=g)
    q[:50] = bank[torch.randint(0, n_bank, (50,), generator=g)]  # on a bank row
    true = torch.cdist(q.double(), bank.double(), compute_mode="donot_use_mm_for_euclid_dist").min(1).values
    d, i = knn(q, bank, precision="bf16", chunk_bytes=2**20)
    assert i.max() < n_bank
    assert torch.allclose(d.double(), true, rtol=1e-5, atol=1e-4)
    # the returned index is a nearest row: its float64 distance is the minimum
    assert torch.allclose((q.double() - bank.double()[i]).norm(dim=1), true, rtol=1e-6, atol=1e-6)


def test_knn_bf16_rerank_matches_exact():
    g = torch.Generator().manual_seed(8)
    centres = torch.randn(40, 152, generator=g) * 3 + 10  # far from the origin, as CNN features are
    bank = centres[torch.randint(0, 40, (3000,), generator=g)] + torch.randn(3000, 152, generator=g)
    q = centres[torch.randint(0, 40, (2000,), generator=g)] + torch.randn(2000, 152, generator=g)
    d_ex, i_ex = knn(q, bank)
    d_lp, i_lp = knn(q, bank, precision="bf16", chunk_bytes=2**20)
    assert (i_lp == i_ex).float().mean() > 0.999  # the bf16 bound keeps the true neighbour a candidate
    # returned distances are exact float32 distances of real candidates: never below the true NN
    assert torch.all(d_lp >= d_ex - 1e-3)  # (the exact path rounds ‖a‖² − 2a·b + ‖b‖² to ~1e-4 here)
    assert torch.allclose(d_lp[i_lp == i_ex], d_ex[i_lp == i_ex], atol=1e-3)
    assert ((d_lp - d_ex) / d_ex).max() < 1e-2
    d3, i3 = knn(q, bank, k=3, precision="bf16")
    assert d3.shape == (2000, 3) and torch.all(d3[:, 1:] >= d3[:, :-1])
    with pytest.raises(ConfigError, match="precision"):
        knn(q, bank, precision="fp8")
