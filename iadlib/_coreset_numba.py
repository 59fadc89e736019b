"""CPU kernel of :func:`iadlib.kernels.greedy_coreset`: exact greedy k-center with per-centre groups.

The plain greedy k-center loop (PatchCore Alg. 1) updates ``min_d[i] = min(min_d[i], d(x_i, c))`` for
all ``N`` points at each of ``n`` steps. Here every centre ``j`` owns a linked list of the points
whose nearest centre it is, with the group radius ``r_j = max min_d`` over them. For a new centre
``c``:

* group ``j`` is skipped when ``d(c_j, c) ≥ 2 r_j`` (triangle inequality: no member can come
  closer); ``d(c_j, c)`` is first bounded from below in the ``m``-dimensional principal subspace;
* a member ``i`` is skipped when ``d(c_j, c) ≥ 2 min_d[i]``, then when its projected distance
  ``‖y_i − y_c‖ ≥ min_d[i]`` (``y = P x`` with orthonormal ``P``, so ``‖y_i − y_c‖ ≤ ‖x_i − c‖``);
* only the rest get the full ``D``-dimensional distance; members that come closer move to ``c``'s
  list.

The farthest point (the next centre) is the member with the largest ``min_d`` of the group with the
largest radius; ties go to the smallest index, as ``argmax`` does in the plain loop, so the
selection equals :func:`iadlib.kernels.greedy_coreset_reference`.
"""

from __future__ import annotations

import numba as nb
import numpy as np
from tqdm.auto import tqdm


@nb.njit(inline="always", fastmath=True)
def _dist(a: np.ndarray, b: np.ndarray) -> np.float32:
    s = np.float32(0.0)
    for t in range(a.shape[0]):
        v = a[t] - b[t]
        s += v * v
    return np.sqrt(s)


@nb.njit(cache=True, fastmath=True)
def _init(x, start, min_d, nxt, head, radius, sel):  # noqa: ANN001 - numba kernel
    N = x.shape[0]
    c = x[start]
    for i in range(N):
        min_d[i] = _dist(x[i], c)
    min_d[start] = 0.0
    order = np.argsort(-min_d)
    for t in range(N - 1):
        nxt[order[t]] = order[t + 1]
    nxt[order[N - 1]] = -1
    head[0] = order[0]
    radius[0] = min_d[order[0]]
    sel[0] = start


@nb.njit(cache=True, fastmath=True, parallel=True)
def _steps(x, y, min_d, nxt, head, radius, sel, buf, lab2orig, mhead, k0, k1):  # noqa: ANN001 - numba kernel
    """Run greedy steps ``k0 ≤ k < k1``; returns the number of full distances computed.

    Invariant: each group's list is sorted by ``min_d``, largest first (a group is created sorted
    and only loses members afterwards), so its radius is its head's ``min_d`` and a traversal stops
    at the first member with ``2·min_d ≤ d(c_j, c)``. Groups are independent within a step, so they
    are walked in parallel; members that move are chained per group (``mhead``) and collected after.
    """
    work = 0
    for k in range(k0, k1):
        R = np.float32(-1.0)
        for j in range(k):
            if radius[j] > R:
                R = radius[j]
        cur = -1
        for j in range(k):
            if radius[j] == R:
                i = head[j]
                while i != -1 and min_d[i] == R:
                    if cur == -1 or lab2orig[i] < lab2orig[cur]:
                        cur = i
                    i = nxt[i]
        sel[k] = cur
        c = x[cur]
        yc = y[cur]
        for j in nb.prange(k):
            mhead[j] = -1
            rj = radius[j]
            if rj == 0.0:
                continue
            if _dist(y[sel[j]], yc) >= 2 * rj:
                continue
            dc = _dist(x[sel[j]], c)
            if dc >= 2 * rj:
                continue
            prev = -1
            i = head[j]
            while i != -1:
                md = min_d[i]
                if dc >= 2 * md:
                    break  # sorted: no later member can come closer
                nx = nxt[i]
                if _dist(y[i], yc) < md:
                    work += 1
                    d = _dist(x[i], c)
                    if d < md:
                        min_d[i] = d
                        if prev == -1:
                            head[j] = nx
                        else:
                            nxt[prev] = nx
                        nxt[i] = mhead[j]
                        mhead[j] = i
                        i = nx
                        continue
                prev = i
                i = nx
            radius[j] = min_d[head[j]] if head[j] != -1 else np.float32(0.0)
        nb_moved = 0
        for j in range(k):
            i = mhead[j]
            while i != -1:
                buf[nb_moved] = i
                nb_moved += 1
                i = nxt[i]
        moved = buf[:nb_moved]
        order = np.argsort(-min_d[moved], kind="mergesort")
        for t in range(nb_moved - 1):
            nxt[moved[order[t]]] = moved[order[t + 1]]
        nxt[moved[order[nb_moved - 1]]] = -1
        head[k] = moved[order[0]]
        radius[k] = min_d[head[k]]
    return work


@nb.njit(cache=True)
def _layout(nxt, head, k):  # noqa: ANN001 - numba kernel
    """Order of the points group by group (each list in its sorted order) and the new list links."""
    N = nxt.shape[0]
    order = np.empty(N, np.int64)
    new_nxt = np.empty(N, np.int64)
    pos = 0
    for j in range(k):
        i = head[j]
        if i == -1:
            continue
        head[j] = pos
        while i != -1:
            order[pos] = i
            new_nxt[pos] = pos + 1
            pos += 1
            i = nxt[i]
        new_nxt[pos - 1] = -1
    return order, new_nxt


def greedy_coreset_numba(
    x: np.ndarray, y: np.ndarray, n: int, start: int, progress: bool = False, chunk: int = 512
) -> tuple[np.ndarray, int]:
    """Indices of the ``n`` greedy k-center points of ``x [N,D]`` (float32) with bound features ``y [N,m]``.

    Every time the number of centres has grown by a quarter, the points are relabelled so that each
    group's list lies contiguously in memory (a streaming walk instead of cache misses).
    """
    N = x.shape[0]
    x = np.ascontiguousarray(x, dtype=np.float32)
    y = np.ascontiguousarray(y, dtype=np.float32)
    min_d = np.empty(N, np.float32)
    nxt = np.empty(N, np.int64)
    head = np.full(n, -1, np.int64)
    radius = np.zeros(n, np.float32)
    sel = np.empty(n, np.int64)
    buf = np.empty(N, np.int64)
    lab2orig = np.arange(N)
    mhead = np.full(n, -1, np.int64)
    _init(x, start, min_d, nxt, head, radius, sel)
    work, k, relabel_at = 0, 1, 32
    with tqdm(total=n, initial=1, desc="coreset", disable=not progress, mininterval=1.0) as bar:
        while k < n:
            k1 = min(n, k + chunk, relabel_at)
            work += _steps(x, y, min_d, nxt, head, radius, sel, buf, lab2orig, mhead, k, k1)
            bar.update(k1 - k)
            k = k1
            if k == relabel_at and k < n:
                order, nxt = _layout(nxt, head, k)
                inv = np.empty(N, np.int64)
                inv[order] = np.arange(N)
                x, y, min_d, lab2orig = x[order], y[order], min_d[order], lab2orig[order]
                sel[:k] = inv[sel[:k]]
                relabel_at = max(k + 64, int(k * 1.25))
    return lab2orig[sel], work
