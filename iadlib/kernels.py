"""Hot kernels on torch (CPU and CUDA): distances, k-nearest neighbours, greedy k-center coreset.

All functions take and return torch tensors on the input's device and work in chunks so that
memory stays bounded (``chunk_bytes``). They are what PatchCore, SimpleNet's ensemble and the
kNN baselines spend their time in; `benchmarks/bench_patchcore.py` measures them.
"""

from __future__ import annotations

import math

import torch

from .errors import ConfigError

#: Working-memory budget of one distance block (bytes); sized to stay cache- and RAM-friendly.
DEFAULT_CHUNK_BYTES = 256 * 2**20


def sq_dists(a: torch.Tensor, b: torch.Tensor, b_sq: torch.Tensor | None = None) -> torch.Tensor:
    """Squared Euclidean distances ``[M, K]`` between rows of ``a [M,D]`` and ``b [K,D]`` (≥ 0).

    Uses ``‖a‖² − 2 a·b + ‖b‖²`` (one matrix product: the fast path of every kNN library).
    """
    a_sq = (a * a).sum(1, keepdim=True)
    if b_sq is None:
        b_sq = (b * b).sum(1)
    d = torch.addmm(b_sq[None, :], a, b.T, beta=1.0, alpha=-2.0)
    d.add_(a_sq)
    return d.clamp_(min=0.0)


def knn(
    queries: torch.Tensor,
    bank: torch.Tensor,
    k: int = 1,
    chunk_bytes: int = DEFAULT_CHUNK_BYTES,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Exact k nearest neighbours of each query row in ``bank``: Euclidean distances and indices.

    Returns ``(dist [M, k], idx [M, k])`` sorted by distance (``[M]`` each when ``k == 1``).
    Queries are processed in blocks so that a block of distances stays under ``chunk_bytes``.
    """
    if queries.ndim != 2 or bank.ndim != 2 or queries.shape[1] != bank.shape[1]:
        raise ConfigError(f"knn: queries {tuple(queries.shape)} and bank {tuple(bank.shape)} must be [M,D], [K,D]")
    if k < 1 or k > bank.shape[0]:
        raise ConfigError(f"knn: k={k} with a bank of {bank.shape[0]} rows")
    queries = queries.to(bank.dtype)
    b_sq = (bank * bank).sum(1)
    rows = max(1, chunk_bytes // (4 * bank.shape[0]))
    dists, idxs = [], []
    for s in range(0, queries.shape[0], rows):
        d = sq_dists(queries[s : s + rows], bank, b_sq)
        if k == 1:
            v, i = d.min(1)
            dists.append(v)
            idxs.append(i)
        else:
            v, i = d.topk(k, dim=1, largest=False)
            dists.append(v)
            idxs.append(i)
    dist = torch.cat(dists).sqrt_()
    idx = torch.cat(idxs)
    return dist, idx


def random_projection(x: torch.Tensor, dim: int, seed: int = 0) -> torch.Tensor:
    """Johnson–Lindenstrauss Gaussian projection of ``x [N,D]`` to ``dim`` columns (no-op if ``dim ≥ D``)."""
    if dim >= x.shape[1]:
        return x
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(x.shape[1], dim, generator=g) / math.sqrt(dim)
    return x @ w.to(x.device, x.dtype)


def greedy_coreset_reference(x: torch.Tensor, n: int, start: int = 0) -> torch.Tensor:
    """Plain greedy k-center selection (PatchCore Alg. 1): O(n·N·D). Kept as the test oracle."""
    min_d = torch.full((x.shape[0],), float("inf"), dtype=x.dtype, device=x.device)
    sel = [start]
    cur = start
    for _ in range(n - 1):
        d = ((x - x[cur]) ** 2).sum(1).sqrt()
        torch.minimum(min_d, d, out=min_d)
        cur = int(min_d.argmax())
        sel.append(cur)
    return torch.tensor(sel, dtype=torch.long, device=x.device)


def greedy_coreset(
    x: torch.Tensor,
    n: int,
    start: int = 0,
    refresh: int = 16,
    progress: bool = False,
    dense_fraction: float = 0.25,
    bound_dim: int = 16,
    stats: list[int] | None = None,
) -> torch.Tensor:
    """Greedy k-center coreset (PatchCore, Roth et al. 2022, Alg. 1), exact, with pruning.

    Selects ``n`` row indices of ``x [N,D]``: start at ``start``, then repeatedly add the point
    farthest from the selected set. Returns *the same* selection as the plain algorithm
    (:func:`greedy_coreset_reference`) while skipping most of its ``n × N × D`` work, with two exact
    lower bounds on the distance ``d(x, c)`` to a new centre ``c``:

    1. Triangle inequality: every point keeps its nearest centre ``o`` and ``d(x, o)``; ``c`` can
       only come closer if ``d(o, c) < 2·d(x, o)``, so groups whose radius is below ``d(o, c)/2``
       are never touched.
    2. Orthogonal projection: with ``P`` the top ``bound_dim`` principal directions (orthonormal
       rows), ``‖P(x − c)‖ ≤ ‖x − c‖``; the cheap ``bound_dim``-dimensional distance discards most
       remaining points before the full ``D``-dimensional one is computed.

    While more than ``dense_fraction`` of the points pass test 1, the bound of test 2 is computed
    densely for all points (one small matrix-vector product) instead of gathering. ``stats``, if
    given, receives per step the number of points whose full distance was computed.
    """
    N = x.shape[0]
    if not 1 <= n <= N:
        raise ConfigError(f"greedy_coreset: cannot select {n} of {N} points")
    dev = x.device
    x = x.contiguous()
    sq = (x * x).sum(1)
    # orthonormal projection for the lower bound (principal directions of a subsample)
    m = min(bound_dim, x.shape[1])
    g = torch.Generator().manual_seed(0)
    sub = x[torch.randperm(N, generator=g)[: min(N, 20000)].to(dev)]
    sub = sub - sub.mean(0, keepdim=True)
    _, _, vh = torch.linalg.svd(sub, full_matrices=False)
    P = vh[:m].contiguous()  # [m, D], orthonormal rows
    y = x @ P.T
    ysq = (y * y).sum(1)
    centers = torch.empty(n, x.shape[1], dtype=x.dtype, device=dev)
    sel = torch.empty(n, dtype=torch.long, device=dev)
    sel[0] = start
    centers[0] = x[start]
    min_d = (sq - 2 * (x @ x[start]) + sq[start]).clamp_(min=0).sqrt_()
    owner = torch.zeros(N, dtype=torch.long, device=dev)
    radius = torch.zeros(n, dtype=x.dtype, device=dev)
    radius[0] = min_d.max()
    it = range(1, n)
    if progress:
        from tqdm.auto import tqdm

        it = tqdm(it, desc="coreset", mininterval=1.0)
    for k in it:
        cur = int(min_d.argmax())
        sel[k] = cur
        c, yc = x[cur], y[cur]
        centers[k] = c
        dc = (centers[:k] - c).pow_(2).sum(1).sqrt_()  # new centre to all earlier centres
        grp = dc < 2 * radius[:k]
        cand = grp[owner]
        cand &= dc[owner] < 2 * min_d
        n_cand = int(cand.sum())
        if n_cand > dense_fraction * N:
            lb = (ysq - 2 * (y @ yc) + ysq[cur]).clamp_(min=0).sqrt_()
            idx = ((lb < min_d) & cand).nonzero().squeeze(1)
        elif n_cand:
            idx = cand.nonzero().squeeze(1)
            yi = y.index_select(0, idx)
            lb = (ysq[idx] - 2 * (yi @ yc) + ysq[cur]).clamp_(min=0).sqrt_()
            idx = idx[lb < min_d[idx]]
        else:
            idx = cand.nonzero().squeeze(1)
        if stats is not None:
            stats.append(int(idx.numel()))
        if idx.numel():
            xi = x.index_select(0, idx)
            d = (sq[idx] - 2 * (xi @ c) + sq[cur]).clamp_(min=0).sqrt_()
            closer = d < min_d[idx]
            idx = idx[closer]
            if idx.numel():
                min_d[idx] = d[closer]
                owner[idx] = k
                radius[k] = d[closer].max()
        min_d[cur] = 0.0
        owner[cur] = k
        if k % refresh == 0:
            radius[: k + 1] = 0
            radius.scatter_reduce_(0, owner, min_d, reduce="amax")
    return sel
