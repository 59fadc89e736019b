"""Hot kernels on torch (CPU and CUDA): distances, k-nearest neighbours, greedy k-center coreset.

All functions take and return torch tensors on the input's device and work in chunks so that
memory stays bounded (``chunk_bytes``). They are what PatchCore, SimpleNet's ensemble and the
kNN baselines spend their time in; `benchmarks/bench_patchcore.py` measures them.
"""

from __future__ import annotations

import math

import torch

from .errors import ConfigError, ResourceError

#: Upper bound of the working memory of one distance block (bytes).
DEFAULT_CHUNK_BYTES = 256 * 2**20
#: Preferred size of one distance block (bytes): small enough to stay in the CPU's last-level
#: cache between the matrix product that writes it and the reduction that reads it.
CACHE_BLOCK_BYTES = 4 * 2**20


def available_memory(device: torch.device | str = "cpu") -> int:
    """Bytes this process can still allocate on ``device`` (free GPU memory, or available host RAM)."""
    device = torch.device(device)
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        return int(free)
    import psutil

    return int(psutil.virtual_memory().available)


def chunk_budget(device: torch.device | str = "cpu", cap: int = DEFAULT_CHUNK_BYTES) -> int:
    """Working-memory budget of one block: a quarter of what is available, at most ``cap``, at least 1 MiB."""
    return max(2**20, min(cap, available_memory(device) // 4))


def require_memory(nbytes: int, what: str, device: torch.device | str = "cpu") -> None:
    """Raise :class:`ResourceError` naming ``what`` and the size when ``nbytes`` cannot fit on ``device``."""
    have = available_memory(device)
    if nbytes > have:
        raise ResourceError(
            f"{what} needs {nbytes / 2**30:.2f} GiB on {torch.device(device)} but only {have / 2**30:.2f} GiB "
            "is available; use fewer or smaller training images (max_train_images, image_size), "
            "a smaller coreset_ratio, or a device with more memory"
        )


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
    chunk_bytes: int | None = None,
    precision: str = "fp32",
    rerank: int = 8,
) -> tuple[torch.Tensor, torch.Tensor]:
    """k nearest neighbours of each query row in ``bank``: Euclidean distances and indices.

    Returns ``(dist [M, k], idx [M, k])`` sorted by distance (``[M]`` each when ``k == 1``).
    Queries are processed in blocks whose distance matrix stays under ``chunk_bytes`` (default:
    :func:`chunk_budget` of the device, so that large banks never exhaust memory).

    ``precision="fp32"`` is exact. ``precision="bf16"`` finds ``max(k, rerank)`` candidates with a
    bfloat16 matrix product (about twice the float32 throughput on CPUs with AVX512-BF16 and on
    GPUs) on mean-centred data, then recomputes their distances in float32 and keeps the ``k``
    nearest: the returned distances are exact float32 distances, and the neighbour is the exact
    one unless it ranked below ``rerank`` others in bfloat16.
    """
    if queries.ndim != 2 or bank.ndim != 2 or queries.shape[1] != bank.shape[1]:
        raise ConfigError(f"knn: queries {tuple(queries.shape)} and bank {tuple(bank.shape)} must be [M,D], [K,D]")
    if k < 1 or k > bank.shape[0]:
        raise ConfigError(f"knn: k={k} with a bank of {bank.shape[0]} rows")
    if precision not in ("fp32", "bf16"):
        raise ConfigError(f"knn: precision={precision!r}; valid: 'fp32', 'bf16'")
    queries = queries.to(bank.dtype)
    if chunk_bytes is None:
        chunk_bytes = chunk_budget(bank.device)
    block = chunk_bytes if bank.device.type == "cuda" else min(chunk_bytes, CACHE_BLOCK_BYTES)
    rows = max(min(256, chunk_bytes // (4 * bank.shape[0])), block // (4 * bank.shape[0]), 1)
    if precision == "bf16":
        r = min(max(k, rerank), bank.shape[0])
        mean = bank.mean(0, keepdim=True)
        bank_c = bank - mean
        b_sq = (bank_c * bank_c).sum(1)
        b_norm_max = float(b_sq.max().sqrt())
        if k == 1:
            aug_T, aug_bias = _bf16_augmented_bank(bank_c, b_sq)
        else:
            bank_lpT = bank_c.to(torch.bfloat16).T.contiguous()
            b_sq_lp = b_sq.to(torch.bfloat16)[None, :]
    else:
        b_sq = (bank * bank).sum(1)
    dists, idxs = [], []
    for s in range(0, queries.shape[0], rows):
        q = queries[s : s + rows]
        if precision == "bf16" and k == 1:
            v, i = _nearest_bf16(q, q - mean, bank, aug_T, aug_bias, b_norm_max)
        elif precision == "bf16":
            qc = q - mean
            approx = torch.addmm(b_sq_lp, qc.to(torch.bfloat16), bank_lpT, beta=1.0, alpha=-2.0)
            _, cand = approx.topk(r, dim=1, largest=False)
            d = (bank[cand] - q[:, None, :]).pow_(2).sum(2)  # exact float32, [m, r]
            v, j = d.topk(k, dim=1, largest=False)
            i = cand.gather(1, j)
        else:  # ‖b‖² − 2 q·b in one matrix product; ‖q‖² is added to the k winners only
            d = torch.addmm(b_sq[None, :], q, bank.T, beta=1.0, alpha=-2.0)
            v, i = d.topk(k, dim=1, largest=False) if k > 1 else d.min(1, keepdim=True)
            v = v + (q * q).sum(1, keepdim=True)
        dists.append(v)
        idxs.append(i)
    dist = torch.cat(dists).clamp_(min=0).sqrt_()
    idx = torch.cat(idxs)
    return (dist[:, 0], idx[:, 0]) if k == 1 else (dist, idx)


#: Columns per group of the bf16 pre-selection: a row's candidates are searched only inside the
#: groups whose minimum is within the error band (one cheap vectorised ``amin`` over the block).
BF16_GROUP = 64


def _bf16_augmented_bank(bank_c: torch.Tensor, b_sq: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The bank of :func:`_nearest_bf16` in bfloat16: ``[−2 b_c | 1 | 0…]ᵀ`` (``[D', K']``) and the bias
    ``‖b_c‖²`` (``[1, K']``); ``D' = D + 1`` rounded up to 16, ``K'`` to :data:`BF16_GROUP` (padding
    columns get an infinite bias, so they are never candidates)."""
    K, D = bank_c.shape
    Kp = -(-K // BF16_GROUP) * BF16_GROUP
    Dp = -(-(D + 1) // 16) * 16
    aug = torch.zeros(Dp, Kp, dtype=torch.bfloat16, device=bank_c.device)
    aug[:D, :K] = (-2.0 * bank_c).T.to(torch.bfloat16)
    aug[D, :K] = 1.0
    bias = torch.full((1, Kp), float("inf"), dtype=torch.bfloat16, device=bank_c.device)
    bias[0, :K] = b_sq.to(torch.bfloat16)
    return aug, bias


def _nearest_bf16(
    q: torch.Tensor,
    qc: torch.Tensor,
    bank: torch.Tensor,
    aug_T: torch.Tensor,
    aug_bias: torch.Tensor,
    b_norm_max: float,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Exact nearest neighbour (squared distance, index) of each row of ``q`` via a bf16 pre-selection.

    One bfloat16 matrix product gives ``a = ‖b‖² − 2 q·b + s`` on mean-centred data (``q``, ``b``: the
    centred query and bank rows), where the per-row constant ``s = ‖q‖² + o`` (an appended column)
    makes every entry a squared distance plus an offset ``o`` larger than any rounding error, so all
    entries are ≥ 0 and their bfloat16 bit patterns, read as int16, sort like the values: the row
    minima and the threshold tests below run on int16 (vectorised, 10× faster than on bfloat16).

    Error bound (unit roundoff u = 2⁻⁸ of bfloat16 inputs and outputs, float32 accumulation): every
    entry near the row minimum is within ``ε = (4u ‖q‖ ‖b‖_max + 2u ‖b‖²_max + 2u a_min) / (1 − 4u)``
    of its exact value (inputs of the product, the bias, and up to two roundings of the output), so
    the true nearest neighbour is among the entries within ``2ε`` of the row's bf16 minimum. Those
    candidates are found per group of :data:`BF16_GROUP` columns (only groups whose minimum lies in
    the band are searched), re-scored in float32, and the smallest wins (ties: lowest index).
    """
    m, D = q.shape
    n_groups = aug_T.shape[1] // BF16_GROUP
    qn = qc.norm(dim=1, keepdim=True)
    offset = 2.0**-5 * (qn * b_norm_max + b_norm_max**2 + qn * qn)  # > every rounding error, so a ≥ 0
    q_aug = torch.zeros(m, aug_T.shape[0], dtype=torch.bfloat16, device=q.device)
    q_aug[:, :D] = qc
    q_aug[:, D : D + 1] = qn * qn + offset
    a = torch.addmm(aug_bias, q_aug, aug_T).view(torch.int16).view(m, n_groups, BF16_GROUP)
    group_min = a.amin(2)  # [m, groups]
    a_min = group_min.amin(1, keepdim=True).view(torch.bfloat16).float()
    eps = (2.0**-6 * qn * b_norm_max + 2.0**-7 * b_norm_max**2 + 2.0**-7 * a_min) / (1 - 2.0**-6)
    # the band's upper end, rounded to bf16 upwards (the × (1 + 2⁻⁶) keeps round-to-nearest above it)
    thr = ((a_min + 2.0 * eps) * (1 + 2.0**-6)).to(torch.bfloat16).view(torch.int16)
    g_row, g_col = (group_min <= thr).nonzero(as_tuple=True)
    k, o = (a[g_row, g_col] <= thr[g_row]).nonzero(as_tuple=True)
    rows, cols = g_row[k], g_col[k] * BF16_GROUP + o
    d = (bank.index_select(0, cols) - q.index_select(0, rows)).pow_(2).sum(1)
    best = torch.full((m,), float("inf"), dtype=d.dtype, device=d.device).scatter_reduce_(0, rows, d, "amin")
    hit = d == best[rows]
    idx = torch.full((m,), bank.shape[0], dtype=torch.long, device=d.device)
    idx.scatter_reduce_(0, rows[hit], cols[hit], "amin")
    return best[:, None], idx[:, None]


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
    backend: str = "auto",
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

    Two implementations of the same algorithm (``backend``):

    * ``"numba"`` (CPU default): every centre keeps a linked list of the points it owns, so a step
      touches only the groups that test 1 lets through — no pass over all ``N`` points per step;
      the farthest point is found from the groups' radii. This is what makes 10 % coresets cheap.
    * ``"torch"`` (CUDA default, or CPU without numba): vectorised over all points per step
      (masks of length ``N``), which suits a GPU. While more than ``dense_fraction`` of the points
      pass test 1, the bound of test 2 is computed densely for all points.

    ``stats``, if given, receives the number of full ``D``-dimensional distances computed (one
    entry per step for ``torch``, the total for ``numba``).
    """
    N = x.shape[0]
    if not 1 <= n <= N:
        raise ConfigError(f"greedy_coreset: cannot select {n} of {N} points")
    if not 0 <= start < N:
        raise ConfigError(f"greedy_coreset: start={start} outside [0, {N})")
    if backend not in ("auto", "numba", "torch"):
        raise ConfigError(f"greedy_coreset: backend={backend!r}; valid: 'auto', 'numba', 'torch'")
    if backend == "auto":
        backend = "numba" if x.device.type == "cpu" and _numba_available() else "torch"
    x = x.contiguous()
    P = _principal_directions(x, bound_dim)
    y = (x @ P.T).contiguous()
    if backend == "numba":
        from ._coreset_numba import greedy_coreset_numba

        xs = x.detach().to(torch.float32).cpu().numpy()
        ys = y.detach().to(torch.float32).cpu().numpy()
        sel, work = greedy_coreset_numba(xs, ys, int(n), int(start), progress=progress)
        if stats is not None:
            stats.append(int(work))
        return torch.from_numpy(sel).to(x.device)
    return _greedy_coreset_torch(x, y, n, start, refresh, progress, dense_fraction, stats)


def _numba_available() -> bool:
    try:
        import numba  # noqa: F401
    except ImportError:  # pragma: no cover - numba is a dependency; kept for trimmed installs
        return False
    return True


def _principal_directions(x: torch.Tensor, m: int) -> torch.Tensor:
    """Top ``m`` principal directions ``[m, D]`` (orthonormal rows) of a fixed subsample of ``x``."""
    m = min(m, x.shape[1])
    g = torch.Generator().manual_seed(0)
    sub = x[torch.randperm(x.shape[0], generator=g)[: min(x.shape[0], 20000)].to(x.device)]
    sub = sub - sub.mean(0, keepdim=True)
    _, _, vh = torch.linalg.svd(sub, full_matrices=False)
    return vh[:m].contiguous()


def _greedy_coreset_torch(
    x: torch.Tensor,
    y: torch.Tensor,
    n: int,
    start: int,
    refresh: int,
    progress: bool,
    dense_fraction: float,
    stats: list[int] | None,
) -> torch.Tensor:
    """The vectorised form of :func:`greedy_coreset` (one pass over all points per step)."""
    N = x.shape[0]
    dev = x.device
    sq = (x * x).sum(1)
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
