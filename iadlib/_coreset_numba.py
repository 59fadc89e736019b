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
    r0 = np.float32(0.0)
    for i in range(N):
        d = _dist(x[i], c)
        min_d[i] = d
        nxt[i] = i + 1
        r0 = max(r0, d)
    nxt[N - 1] = -1
    min_d[start] = 0.0
    head[0] = 0
    radius[0] = r0
    sel[0] = start


@nb.njit(cache=True, fastmath=True)
def _steps(x, y, min_d, nxt, head, radius, sel, k0, k1):  # noqa: ANN001 - numba kernel
    """Run greedy steps ``k0 ≤ k < k1``; returns the number of full distances computed."""
    N = x.shape[0]
    work = 0
    for k in range(k0, k1):
        R = np.float32(-1.0)
        for j in range(k):
            if radius[j] > R:
                R = radius[j]
        cur = N
        for j in range(k):
            if radius[j] == R:
                i = head[j]
                while i != -1:
                    if min_d[i] == R and i < cur:
                        cur = i
                    i = nxt[i]
        sel[k] = cur
        c = x[cur]
        yc = y[cur]
        rk = np.float32(0.0)
        for j in range(k):
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
            new_r = np.float32(0.0)
            while i != -1:
                nx = nxt[i]
                md = min_d[i]
                moved = False
                if dc < 2 * md and _dist(y[i], yc) < md:
                    work += 1
                    d = _dist(x[i], c)
                    if d < md:
                        min_d[i] = d
                        if prev == -1:
                            head[j] = nx
                        else:
                            nxt[prev] = nx
                        nxt[i] = head[k]
                        head[k] = i
                        rk = max(rk, d)
                        moved = True
                if not moved:
                    new_r = max(new_r, md)
                    prev = i
                i = nx
            radius[j] = new_r
        radius[k] = rk
    return work


def greedy_coreset_numba(
    x: np.ndarray, y: np.ndarray, n: int, start: int, progress: bool = False, chunk: int = 512
) -> tuple[np.ndarray, int]:
    """Indices of the ``n`` greedy k-center points of ``x [N,D]`` (float32) with bound features ``y [N,m]``."""
    N = x.shape[0]
    min_d = np.empty(N, np.float32)
    nxt = np.empty(N, np.int64)
    head = np.full(n, -1, np.int64)
    radius = np.zeros(n, np.float32)
    sel = np.empty(n, np.int64)
    _init(x, start, min_d, nxt, head, radius, sel)
    work = 0
    with tqdm(total=n, initial=1, desc="coreset", disable=not progress, mininterval=1.0) as bar:
        for k0 in range(1, n, chunk):
            k1 = min(n, k0 + chunk)
            work += _steps(x, y, min_d, nxt, head, radius, sel, k0, k1)
            bar.update(k1 - k0)
    return sel, work
