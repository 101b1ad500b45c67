"""Sample-quality metrics on feature vectors, pure NumPy, float64: improved
precision and recall, and the kernel inception distance (KID). The Fréchet
distance sits in evaluate.py. All take (N, D) features of real and
generated samples; `digitgen eval` computes them in each judge's feature
space (engine/evaluation/evaluate.py).

Why more than the Fréchet distance: it compares two Gaussians fitted to the
features, so it mixes "are the samples realistic?" with "do they cover the
real variety?" into one number and is biased at small N. Precision and
recall separate the two; KID is unbiased at any N and has an error bar.
"""
from __future__ import annotations

import numpy as np


def squared_distances(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """(N, D), (M, D) -> (N, M) squared Euclidean distances, float64, >= 0."""
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    d2 = np.einsum("ij,ij->i", a, a)[:, None] + np.einsum("ij,ij->i", b, b)[None, :] - 2 * a @ b.T
    return np.maximum(d2, 0.0)


def knn_radii(features: np.ndarray, k: int = 3) -> np.ndarray:
    """Squared distance of each sample to its k-th nearest other sample
    (the sample itself excluded), (N,)."""
    n = len(features)
    if not 1 <= k < n:
        raise ValueError(f"k = {k} needs 1 <= k < N = {n}")
    d2 = squared_distances(features, features)
    np.fill_diagonal(d2, np.inf)
    return np.partition(d2, k - 1, axis=1)[:, k - 1]


def manifold_coverage(manifold: np.ndarray, radii2: np.ndarray, queries: np.ndarray,
                      chunk: int = 1024) -> np.ndarray:
    """For each query, is it inside some ball B(manifold[i], sqrt(radii2[i]))
    (boundary included)? -> bool (len(queries),)."""
    out = np.empty(len(queries), bool)
    for a in range(0, len(queries), chunk):
        out[a:a + chunk] = np.any(squared_distances(queries[a:a + chunk], manifold) <= radii2[None, :], axis=1)
    return out


def precision_recall(real: np.ndarray, fake: np.ndarray, k: int = 3) -> dict[str, float]:
    """Improved precision and recall, Kynkäänniemi, Karras, Laine, Lehtinen
    and Aila, "Improved Precision and Recall Metric for Assessing Generative
    Models", NeurIPS 2019 (arXiv:1904.06991), eqs. 1-2.

    Each sample set approximates its manifold by the union of balls around
    its samples, each of radius the distance to the sample's k-th nearest
    neighbour in the same set (k = 3, the paper's choice):

        f(x, S) = 1 if |x - s| <= |s - NN_k(s, S)| for some s in S, else 0
        precision = mean over generated x of f(x, real)   realistic?
        recall    = mean over real x of f(x, generated)   all of the real variety?

    A generator that drops modes keeps precision and loses recall; one that
    makes off-manifold samples loses precision. Both are biased at small N
    and by k, so compare them with the real-vs-real figure at the same N.
    """
    real, fake = np.asarray(real, np.float64), np.asarray(fake, np.float64)
    precision = manifold_coverage(real, knn_radii(real, k), fake).mean()
    recall = manifold_coverage(fake, knn_radii(fake, k), real).mean()
    return {"precision": float(precision), "recall": float(recall), "k": k}


PRECOMPUTE_MAX = 4000  # KID: whole kernel matrices up to this many samples a side (3 x 128 MB at most)


def polynomial_kernel(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """k(x, y) = (x.y / d + 1)^3, d the feature dimension: KID's kernel."""
    t = np.asarray(x, np.float64) @ np.asarray(y, np.float64).T / x.shape[1] + 1.0
    return t * t * t  # ~50x faster than t ** 3 (pow)


def mmd2_unbiased(x: np.ndarray, y: np.ndarray) -> float:
    """Unbiased estimate of MMD^2 (Gretton et al. 2012, eq. 3) with the cubic
    polynomial kernel, m = len(x), n = len(y):

        1/(m(m-1)) sum_{i != j} k(x_i, x_j) + 1/(n(n-1)) sum_{i != j} k(y_i, y_j)
          - 2/(m n) sum_{i, j} k(x_i, y_j)

    Its expectation is 0 when x and y come from the same distribution, so it
    can be negative."""
    return _mmd2_from_kernels(polynomial_kernel(x, x), polynomial_kernel(y, y), polynomial_kernel(x, y))


def _mmd2_from_kernels(kxx: np.ndarray, kyy: np.ndarray, kxy: np.ndarray) -> float:
    m, n = kxy.shape
    if m < 2 or n < 2:
        raise ValueError("MMD^2 needs at least two samples on each side")
    return float((kxx.sum() - np.trace(kxx)) / (m * (m - 1)) + (kyy.sum() - np.trace(kyy)) / (n * (n - 1))
                 - 2 * kxy.mean())


def _within_weights(labels: np.ndarray) -> np.ndarray:
    """(m, m) pair weights of the class-stratified within-set term (see
    mmd2_stratified), diagonal 0."""
    _, inv, counts = np.unique(labels, return_inverse=True, return_counts=True)
    if counts.min() < 2:
        raise ValueError("a class-stratified MMD^2 needs at least two samples of every class on each side")
    m = len(labels)
    same = inv[:, None] == inv[None, :]
    w = np.where(same, (counts / (counts - 1))[inv][:, None], 1.0) / (m * m)
    np.fill_diagonal(w, 0.0)
    return w


def mmd2_stratified(x: np.ndarray, y: np.ndarray, x_labels: np.ndarray, y_labels: np.ndarray) -> float:
    """Unbiased MMD^2 for samples drawn class by class (a fixed number of each
    class, as `digitgen eval` draws them), with the kernel of `mmd2_unbiased`.

    Within a class-balanced sample two distinct samples are of the same class
    less often than two independent draws would be (99/999 instead of 1/10 at
    100 per class), so the plain U-statistic's within-set terms, and with them
    MMD^2, are biased low by about 2 (1/K - (n_c - 1)/(m - 1)) times the gap
    between same-class and other-class kernel values. Here each within-set
    term is instead the mixture's pair expectation, class pair by class pair:

        E_X k = sum_{c, c'} pi_c pi_c' T_cc',   pi_c = n_c / m,
        T_cc' = mean of k(x_i, x_j) over i in c, j in c'  (i != j when c = c'),

    i.e. 1/m^2 [ sum_{i != j, other classes} k_ij + sum_c n_c/(n_c - 1) sum_{i != j in c} k_ij ],
    unbiased for E k(x, x') with x, x' independent draws of the mixture
    sum_c pi_c P_c when each class's samples are i.i.d. from P_c. The cross
    term is the mean of k(x_i, y_j) over all pairs (unbiased as it is). With
    a single class this is exactly `mmd2_unbiased`."""
    x, y = np.asarray(x, np.float64), np.asarray(y, np.float64)
    wx, wy = _within_weights(np.asarray(x_labels)), _within_weights(np.asarray(y_labels))
    return float((polynomial_kernel(x, x) * wx).sum() + (polynomial_kernel(y, y) * wy).sum()
                 - 2 * polynomial_kernel(x, y).mean())


def _stratified_subset(labels: np.ndarray, size: int, rng: np.random.Generator) -> np.ndarray:
    """`size` indices in all, each class in proportion to its share of
    `labels` (rounded, at least 2, at most all of it), without replacement."""
    classes, counts = np.unique(labels, return_counts=True)
    take = np.clip(np.rint(size * counts / len(labels)).astype(np.int64), 2, counts)
    return np.concatenate([rng.choice(np.flatnonzero(labels == c), t, replace=False) for c, t in zip(classes, take)])


def kernel_inception_distance(real: np.ndarray, fake: np.ndarray, n_subsets: int = 100,
                              subset_size: int = 1000, seed=0, real_labels: np.ndarray | None = None,
                              fake_labels: np.ndarray | None = None) -> dict[str, float]:
    """KID, Bińkowski, Sutherland, Arbel and Gretton, "Demystifying MMD GANs",
    ICLR 2018 (arXiv:1801.01401), section 4 and their reference code
    (polynomial_mmd_averages): the unbiased MMD^2 of `mmd2_unbiased` with
    k(x, y) = (x.y / d + 1)^3, computed on `n_subsets` pairs of random
    subsets of `subset_size` samples of each set (without replacement within
    a subset; capped at the smaller set), -> their mean and standard
    deviation. The mean stays unbiased at every N; the std is the spread
    from subset to subset (the original's error bar). `seed` (anything
    np.random.default_rng takes) picks the subsets.

    With labels (both sets, drawn class by class): each subset keeps each
    class's share of its set and is scored by `mmd2_stratified`, which
    removes the plain estimator's bias on class-balanced samples."""
    real, fake = np.asarray(real, np.float64), np.asarray(fake, np.float64)
    if (real_labels is None) != (fake_labels is None):
        raise ValueError("labels for both sets or for neither")
    labelled = real_labels is not None
    real_labels = np.zeros(len(real), np.int64) if real_labels is None else np.asarray(real_labels)
    fake_labels = np.zeros(len(fake), np.int64) if fake_labels is None else np.asarray(fake_labels)
    m = min(subset_size, len(real), len(fake))
    rng = np.random.default_rng(seed)
    if labelled:
        subsets = [(_stratified_subset(real_labels, m, rng), _stratified_subset(fake_labels, m, rng))
                   for _ in range(n_subsets)]
    else:  # exactly the reference code's draws
        subsets = [(rng.choice(len(real), m, replace=False), rng.choice(len(fake), m, replace=False))
                   for _ in range(n_subsets)]
    mr, mf = len(subsets[0][0]), len(subsets[0][1])
    if min(mr, mf) < 2:
        raise ValueError("MMD^2 needs at least two samples on each side")
    if max(len(real), len(fake)) <= PRECOMPUTE_MAX:
        # every kernel value once; a subset's weighted block sum is w' (K o W) w with w its 0/1 indicator:
        # all subsets in a few GEMMs. A stratified subset has the same class counts every time, so one
        # pair weight per class pair serves them all.
        ir, jf = np.zeros((n_subsets, len(real))), np.zeros((n_subsets, len(fake)))
        for s, (i, j) in enumerate(subsets):
            ir[s, i], jf[s, j] = 1.0, 1.0
        values = (_subset_sums(polynomial_kernel(real, real), real_labels, subsets[0][0], ir)
                  + _subset_sums(polynomial_kernel(fake, fake), fake_labels, subsets[0][1], jf)
                  - 2 * ((ir @ polynomial_kernel(real, fake)) * jf).sum(axis=1) / (mr * mf))
    else:
        values = np.array([mmd2_stratified(real[i], fake[j], real_labels[i], fake_labels[j]) for i, j in subsets])
    return {"kid": float(values.mean()), "std": float(values.std()), "subsets": n_subsets, "subset_size": mr,
            **({"stratified": True} if labelled else {})}


def _subset_sums(k: np.ndarray, labels: np.ndarray, one_subset: np.ndarray, indicators: np.ndarray) -> np.ndarray:
    """Each subset's within-set term of mmd2_stratified, from the whole
    kernel matrix k of the set (every subset has one_subset's class counts)."""
    classes, counts = np.unique(labels[one_subset], return_counts=True)
    m = len(one_subset)
    factor = np.ones(len(labels))  # row i: n_c/(n_c - 1) for the class of i, in a subset
    for c, n in zip(classes, counts):
        factor[labels == c] = n / (n - 1)
    same = labels[:, None] == labels[None, :]
    w = np.where(same, factor[:, None], 1.0) * k
    np.fill_diagonal(w, 0.0)
    return ((indicators @ w) * indicators).sum(axis=1) / (m * m)
