"""k-means maths on public or local points (pure numpy): nearest centroids, cost, weighted
k-means++ seeding and weighted Lloyd — used by the ``kmeans`` driver on DP output (the grid
coreset), by nodes to label their customers, and by tests and benchmarks as the non-private
reference (Lloyd from k-means++, Arthur and Vassilvitskii 2007)."""

from __future__ import annotations

import numpy as np
import numpy.typing as npt

from tessera.core.analyses.vector import FloatArray, IntArray


def assign(points: npt.ArrayLike, centroids: npt.ArrayLike) -> IntArray:
    """Index of the nearest centroid of each point (ties: the lowest index)."""
    x = np.asarray(points, dtype=np.float64)
    c = np.asarray(centroids, dtype=np.float64)
    # |x - c|² = |x|² - 2 x·c + |c|²; |x|² is the same for every centroid of a point.
    score = (c * c).sum(axis=1)[None, :] - 2.0 * x @ c.T
    out: IntArray = np.argmin(score, axis=1).astype(np.int64)
    return out


def cost(points: npt.ArrayLike, centroids: npt.ArrayLike, weights: npt.ArrayLike | None = None) -> float:
    """Sum of (weighted) squared distances of the points to their nearest centroid."""
    x = np.asarray(points, dtype=np.float64)
    c = np.asarray(centroids, dtype=np.float64)
    d2 = ((x[:, None, :] - c[None, :, :]) ** 2).sum(axis=2).min(axis=1) if x.size else np.zeros(0)
    w = np.ones(x.shape[0]) if weights is None else np.asarray(weights, dtype=np.float64)
    return float((w * d2).sum())


def kmeans_pp(
    points: npt.ArrayLike, k: int, *, rng: np.random.Generator, weights: npt.ArrayLike | None = None
) -> FloatArray:
    """k-means++ seeding (D² sampling), with optional point weights."""
    x = np.asarray(points, dtype=np.float64)
    w = np.ones(x.shape[0]) if weights is None else np.clip(np.asarray(weights, dtype=np.float64), 0, None)
    if not w.sum() > 0:
        raise ValueError("k-means++ needs positive total weight")
    chosen = [int(rng.choice(x.shape[0], p=w / w.sum()))]
    d2 = ((x - x[chosen[0]]) ** 2).sum(axis=1)
    for _ in range(1, k):
        mass = w * d2
        if not mass.sum() > 0:  # fewer distinct points than clusters: repeat one
            chosen.append(chosen[-1])
            continue
        nxt = int(rng.choice(x.shape[0], p=mass / mass.sum()))
        chosen.append(nxt)
        d2 = np.minimum(d2, ((x - x[nxt]) ** 2).sum(axis=1))
    return x[chosen].copy()


def lloyd(
    points: npt.ArrayLike,
    centroids: npt.ArrayLike,
    *,
    weights: npt.ArrayLike | None = None,
    iterations: int = 100,
    tol: float = 1e-9,
) -> FloatArray:
    """Weighted Lloyd iterations from ``centroids``; an empty cluster keeps its centroid."""
    x = np.asarray(points, dtype=np.float64)
    c = np.array(centroids, dtype=np.float64)
    w = np.ones(x.shape[0]) if weights is None else np.asarray(weights, dtype=np.float64)
    k = c.shape[0]
    for _ in range(iterations):
        label = assign(x, c)
        mass = np.bincount(label, weights=w, minlength=k)
        sums = np.stack([np.bincount(label, weights=w * x[:, j], minlength=k) for j in range(x.shape[1])], 1)
        new = np.where(mass[:, None] > 0, sums / np.maximum(mass, 1e-300)[:, None], c)
        moved = float(np.abs(new - c).max())
        c = new
        if moved <= tol:
            break
    return c


def best_of(
    points: npt.ArrayLike,
    k: int,
    *,
    rng: np.random.Generator,
    weights: npt.ArrayLike | None = None,
    tries: int = 5,
    iterations: int = 50,
) -> FloatArray:
    """Lloyd from ``tries`` k-means++ seeds; the centroids of least (weighted) cost."""
    best: FloatArray | None = None
    best_cost = np.inf
    for _ in range(tries):
        c = lloyd(
            points, kmeans_pp(points, k, rng=rng, weights=weights), weights=weights, iterations=iterations
        )
        value = cost(points, c, weights)
        if value < best_cost:
            best, best_cost = c, value
    assert best is not None
    return best


def grid_centres(cells_per_axis: int, dim: int, *, clip: float) -> FloatArray:
    """Centres of the ``cells_per_axis^dim`` cells of ``[-clip, clip]^dim`` (row-major order)."""
    width = 2 * clip / cells_per_axis
    axis = -clip + width * (np.arange(cells_per_axis) + 0.5)
    mesh = np.meshgrid(*([axis] * dim), indexing="ij")
    return np.stack([m.ravel() for m in mesh], axis=1)


def grid_cells(points: npt.ArrayLike, cells_per_axis: int, *, clip: float) -> IntArray:
    """Row-major cell of each point of ``[-clip, clip]^dim`` (points are clamped into the box)."""
    x = np.clip(np.asarray(points, dtype=np.float64), -clip, clip)
    idx = np.clip(np.floor((x + clip) / (2 * clip) * cells_per_axis), 0, cells_per_axis - 1).astype(np.int64)
    out = np.zeros(x.shape[0], dtype=np.int64)
    for j in range(x.shape[1]):
        out = out * cells_per_axis + idx[:, j]
    return out
