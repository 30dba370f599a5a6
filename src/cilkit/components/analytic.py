"""The shared maths of the prototype and analytic classifiers on a frozen feature extractor.

One home for what SimpleCIL, FeCAM, ACIL, DS-AL and RanPAC compute from features (the learners
only say which of it they use):

- :class:`ClassStatistics`: per-class counts, sums and optionally scatter matrices, as buffers
  (saved with the learner), giving class means (prototypes) and covariances;
- :class:`RandomProjection`: a fixed random expansion ``act(x @ W)`` (ACIL's and DS-AL's
  "buffer layer", RanPAC's random projection);
- :class:`RecursiveRidge`: ACIL's recursive least squares, the ridge solution on every sample
  seen so far updated chunk by chunk with the Woodbury identity;
- :class:`RidgeAccumulator` and :func:`select_ridge`: RanPAC's Gram-matrix ridge classifier and
  its ridge chosen on held-out data;
- :func:`tukey`, :func:`shrink_covariance`, :func:`normalize_covariance`, :func:`mahalanobis`:
  FeCAM's feature transform, covariance shrinkage and distance.

Everything is batched tensor code; the closed-form solvers work in float64, as ACIL's, DS-AL's
and FeCAM's code does (RanPAC's code uses float32; float64 here).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import nn

ACTIVATIONS: dict[str, Callable[[torch.Tensor], torch.Tensor]] = {
    "relu": torch.relu,
    "tanh": torch.tanh,
    "identity": lambda x: x,
}
"""Activations of the random expansions, by config name."""

RIDGES: tuple[float, ...] = tuple(10.0**k for k in range(-8, 9))
"""RanPAC's ridge candidates, ``10^-8 ... 10^8`` (``optimise_ridge_parameter``)."""


def one_hot(labels: torch.Tensor, num_classes: int, dtype: torch.dtype = torch.float64):
    """``(n, num_classes)`` one-hot targets of int labels, in ``dtype``."""
    return F.one_hot(labels.long(), num_classes).to(dtype)


class ClassStatistics(nn.Module):
    """Running per-class statistics of features: counts, sums and, with ``scatter``, the sums of
    outer products ``sum x x^T``; buffers, so they are saved with the learner's ``state_dict``
    and grow with the classes (``Learner.load_state_dict`` resizes them).

    Args:
        dim: feature width.
        scatter: also keep the ``(C, dim, dim)`` scatter matrices (for covariances).
        dtype: accumulation dtype.
    """

    counts: torch.Tensor
    sums: torch.Tensor
    scatter: torch.Tensor

    def __init__(self, dim: int, scatter: bool = False, dtype: torch.dtype = torch.float64):
        super().__init__()
        self.dim, self.keeps_scatter = int(dim), scatter
        self.register_buffer("counts", torch.zeros(0, dtype=torch.long))
        self.register_buffer("sums", torch.zeros(0, dim, dtype=dtype))
        self.register_buffer("scatter", torch.zeros(0, dim, dim, dtype=dtype))

    @property
    def num_classes(self) -> int:
        return len(self.counts)

    def grow(self, num_classes: int) -> None:
        """Room for ``num_classes`` classes (zero statistics for the new ones)."""
        extra = num_classes - self.num_classes
        if extra <= 0:
            return
        self.counts = torch.cat([self.counts, self.counts.new_zeros(extra)])
        self.sums = torch.cat([self.sums, self.sums.new_zeros(extra, self.dim)])
        if self.keeps_scatter:
            zeros = self.scatter.new_zeros(extra, self.dim, self.dim)
            self.scatter = torch.cat([self.scatter, zeros])

    @torch.no_grad()
    def update(
        self, features: torch.Tensor, labels: torch.Tensor, num_classes: int | None = None
    ) -> None:
        """Add ``(n, dim)`` features of int ``labels`` (the statistics grow to ``num_classes``,
        or to the largest label + 1)."""
        labels = labels.to(self.sums.device, torch.long)
        x = features.detach().to(self.sums)
        self.grow(num_classes if num_classes is not None else int(labels.max()) + 1)
        self.counts.index_add_(0, labels, torch.ones_like(labels))
        self.sums.index_add_(0, labels, x)
        if self.keeps_scatter:
            for c in torch.unique(labels).tolist():  # one matrix product per class present
                xc = x[labels == c]
                self.scatter[c] += xc.T @ xc

    def means(self) -> torch.Tensor:
        """``(C, dim)`` class means; zero rows for classes without samples."""
        return self.sums / self.counts.clamp_min(1)[:, None].to(self.sums)

    def covariances(self, classes: torch.Tensor | None = None) -> torch.Tensor:
        """``(k, dim, dim)`` unbiased covariances ``(S - n mu mu^T) / (n - 1)`` of ``classes``
        (all by default), as ``numpy.cov`` of each class's samples."""
        if not self.keeps_scatter:
            raise RuntimeError("covariances need ClassStatistics(scatter=True)")
        idx = torch.arange(self.num_classes) if classes is None else classes.cpu()
        idx = idx.to(self.sums.device)
        n = self.counts[idx].to(self.sums)[:, None, None]
        mu = self.means()[idx]
        centred = self.scatter[idx] - n * mu[:, :, None] * mu[:, None, :]
        return centred / (n - 1).clamp_min(1)


class RandomProjection(nn.Module):
    """A fixed random expansion ``act(x @ W)``, ``W`` of shape ``(in_features, out_features)``
    in float64, drawn once by :meth:`reset` and saved as a buffer.

    Args:
        in_features: feature width.
        out_features: expansion width (0: no projection, ``x`` is returned as it is).
        init: ``uniform`` draws ``U(-1/sqrt(in), 1/sqrt(in))``, what ``nn.Linear`` draws (ACIL's
            and DS-AL's ``RandomBuffer``); ``normal`` draws ``N(0, 1)`` (RanPAC's ``W_rand``).
        activation: a key of :data:`ACTIVATIONS`.
    """

    weight: torch.Tensor

    def __init__(
        self, in_features: int, out_features: int, init: str = "uniform", activation: str = "relu"
    ):
        super().__init__()
        if init not in ("uniform", "normal") or activation not in ACTIVATIONS:
            raise ValueError(f"unknown init '{init}' or activation '{activation}'")
        self.in_features, self.out_features = int(in_features), int(out_features)
        self.init, self.activation = init, activation
        self.register_buffer("weight", torch.zeros(0, 0, dtype=torch.float64))

    @property
    def ready(self) -> bool:
        """The projection was drawn (or there is none)."""
        return self.out_features == 0 or self.weight.numel() > 0

    @torch.no_grad()
    def reset(self, generator: torch.Generator) -> None:
        """Draw ``W`` on the CPU from ``generator`` (the same on every device and rank)."""
        shape = (self.in_features, self.out_features)
        if self.init == "normal":
            w = torch.randn(shape, generator=generator, dtype=torch.float64)
        else:
            bound = self.in_features**-0.5
            w = torch.rand(shape, generator=generator, dtype=torch.float64) * (2 * bound) - bound
        self.weight = w.to(self.weight.device)

    def linear(self, x: torch.Tensor) -> torch.Tensor:
        """``x @ W`` in float64, before the activation."""
        if self.out_features == 0:
            return x.to(torch.float64)
        if not self.ready:
            raise RuntimeError("RandomProjection used before reset()")
        return x.to(self.weight) @ self.weight

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.out_features == 0:
            return x.to(torch.float64)
        return ACTIVATIONS[self.activation](self.linear(x))


class RecursiveRidge(nn.Module):
    """ACIL's recursive least squares: after every :meth:`fit` the weights are the ridge solution
    ``W = (X^T X + gamma I)^{-1} X^T Y`` over every row fitted so far, without keeping them.

    ``R = (X^T X + gamma I)^{-1}`` starts at ``I / gamma`` and each chunk ``X_k`` updates it by
    the Woodbury identity, ``R <- R - R X_k^T (I + X_k R X_k^T)^{-1} X_k R``, then the weights by
    ``W <- W + R X_k^T (Y_k - X_k W)`` (ACIL, Eqs. 9-10, in the mini-batch form of the authors'
    ``RecursiveLinear.fit``). New classes append zero columns to ``W`` (their targets were 0
    for every earlier row). Float64, as the authors.

    Args:
        gamma: the ridge ``gamma``.
    """

    R: torch.Tensor
    weight: torch.Tensor

    def __init__(self, gamma: float):
        super().__init__()
        if gamma <= 0:
            raise ValueError("gamma must be > 0")
        self.gamma = float(gamma)
        self.register_buffer("R", torch.zeros(0, 0, dtype=torch.float64))
        self.register_buffer("weight", torch.zeros(0, 0, dtype=torch.float64))

    @property
    def num_outputs(self) -> int:
        return self.weight.shape[1]

    @torch.no_grad()
    def fit(self, X: torch.Tensor, Y: torch.Tensor, chunk_size: int | None = None) -> None:
        """Add rows ``X (n, M)`` with targets ``Y (n, C)``; ``C`` may exceed the classes so far.

        Args:
            X: inputs (expanded features).
            Y: targets (one-hot rows, or DS-AL's residuals).
            chunk_size: rows per Woodbury update (``n x n`` system per chunk); None = all.
        """
        X, Y = X.to(torch.float64), Y.to(torch.float64)
        m = X.shape[1]
        if self.R.numel() == 0:
            self.R = torch.eye(m, dtype=torch.float64, device=X.device) / self.gamma
            self.weight = torch.zeros(m, 0, dtype=torch.float64, device=X.device)
        if Y.shape[1] > self.num_outputs:
            self.weight = F.pad(self.weight, (0, Y.shape[1] - self.num_outputs))
        elif Y.shape[1] < self.num_outputs:
            Y = F.pad(Y, (0, self.num_outputs - Y.shape[1]))
        step = chunk_size or max(len(X), 1)
        for start in range(0, len(X), step):
            x, y = X[start : start + step], Y[start : start + step]
            rx = self.R @ x.T  # (M, k)
            system = torch.eye(len(x), dtype=x.dtype, device=x.device) + x @ rx
            self.R -= rx @ torch.linalg.solve(system, rx.T)
            self.weight += self.R @ (x.T @ (y - x @ self.weight))

    def forward(self, X: torch.Tensor) -> torch.Tensor:
        return X.to(self.weight) @ self.weight


class RidgeAccumulator(nn.Module):
    """RanPAC's Gram-matrix ridge classifier: ``G = sum H^T H`` and ``Q = sum H^T Y`` over every
    task, and ``W = (G + ridge I)^{-1} Q`` (``torch.linalg.solve``, as the authors)."""

    G: torch.Tensor
    Q: torch.Tensor

    def __init__(self) -> None:
        super().__init__()
        self.register_buffer("G", torch.zeros(0, 0, dtype=torch.float64))
        self.register_buffer("Q", torch.zeros(0, 0, dtype=torch.float64))

    @torch.no_grad()
    def update(self, H: torch.Tensor, Y: torch.Tensor) -> None:
        """Add rows ``H (n, M)`` with targets ``Y (n, C)`` (``C`` may grow)."""
        H, Y = H.to(torch.float64), Y.to(torch.float64)
        if self.G.numel() == 0:
            m = H.shape[1]
            self.G = H.new_zeros(m, m)
            self.Q = H.new_zeros(m, 0)
        if Y.shape[1] > self.Q.shape[1]:
            self.Q = F.pad(self.Q, (0, Y.shape[1] - self.Q.shape[1]))
        self.G += H.T @ H
        self.Q[:, : Y.shape[1]] += H.T @ Y

    def solve(self, ridge: float) -> torch.Tensor:
        """``(M, C)`` weights ``(G + ridge I)^{-1} Q``."""
        system = self.G.clone()  # one M x M copy, not an identity and a sum as well
        system.diagonal().add_(ridge)
        return torch.linalg.solve(system, self.Q)


def select_ridge(
    H: torch.Tensor,
    Y: torch.Tensor,
    candidates: Sequence[float] = RIDGES,
    train_fraction: float = 0.8,
) -> tuple[float, torch.Tensor]:
    """RanPAC's ridge: fit on the first ``train_fraction`` of the rows, choose the candidate
    with the lowest mean squared error on the rest (``optimise_ridge_parameter``; the first on
    ties, as ``np.argmin``). The authors call ``torch.linalg.solve`` once per candidate; here one
    eigendecomposition of the Gram matrix serves them all (the same solutions).

    Args:
        H: ``(n, M)`` inputs in the order to split (the authors': a shuffled loader's).
        Y: ``(n, C)`` targets.
        candidates: the ridges to try.
        train_fraction: the share fitted on (``int(n * fraction)`` rows).

    Returns:
        The chosen ridge and the validation loss of every candidate.
    """
    H, Y = H.to(torch.float64), Y.to(torch.float64)
    n_fit = int(len(H) * train_fraction)
    if n_fit < 1 or n_fit >= len(H):
        raise ValueError(f"{len(H)} samples leave nothing to fit or to validate on")
    fit, val = H[:n_fit], H[n_fit:]
    values, vectors = torch.linalg.eigh(fit.T @ fit)
    projected = val @ vectors  # (n_val, M)
    targets = vectors.T @ (fit.T @ Y[:n_fit])  # (M, C)
    lam = torch.tensor(list(candidates), dtype=torch.float64, device=H.device)
    losses = torch.stack(
        [F.mse_loss((projected / (values.clamp_min(0) + r)) @ targets, Y[n_fit:]) for r in lam]
    )
    return float(lam[torch.argmin(losses)]), losses


def tukey(x: torch.Tensor, beta: float) -> torch.Tensor:
    """Tukey's ladder of powers, ``x ** beta`` (``log x`` for ``beta = 0``), as FeCAM's
    ``_tukeys_transform``; needs non-negative ``x``."""
    return torch.log(x) if beta == 0 else torch.pow(x, beta)


def shrink_covariance(cov: torch.Tensor, alpha1: float = 1.0, alpha2: float = 1.0) -> torch.Tensor:
    """FeCAM's shrinkage of ``(..., d, d)`` covariances: ``cov + alpha1 * mean(diag) * I +
    alpha2 * mean(off-diagonal) * (1 - I)``, the off-diagonal mean taken over the non-zero
    off-diagonal entries (``shrink_cov``)."""
    d = cov.shape[-1]
    eye = torch.eye(d, dtype=cov.dtype, device=cov.device)
    diag_mean = cov.diagonal(dim1=-2, dim2=-1).mean(-1)[..., None, None]
    off = cov * (1 - eye)
    nonzero = (off != 0).sum((-2, -1)).clamp_min(1)[..., None, None]
    off_mean = off.sum((-2, -1))[..., None, None] / nonzero
    return cov + alpha1 * diag_mean * eye + alpha2 * off_mean * (1 - eye)


def normalize_covariance(cov: torch.Tensor) -> torch.Tensor:
    """``cov / (sd sd^T)``, ``sd`` the square root of the diagonal: the correlation matrix
    (FeCAM's ``normalize_cov``)."""
    sd = cov.diagonal(dim1=-2, dim2=-1).sqrt()
    return cov / (sd[..., :, None] * sd[..., None, :])


def mahalanobis(
    x: torch.Tensor, means: torch.Tensor, precisions: torch.Tensor, max_elements: int = 1 << 25
) -> torch.Tensor:
    """Squared Mahalanobis distances ``(x - mu_c)^T P_c (x - mu_c)`` of every row of ``x``
    ``(B, d)`` to every class ``c`` (``means (C, d)``, precisions ``P (C, d, d)``).

    Batched over the samples and over blocks of classes (at most about ``max_elements``
    differences held at once).

    Returns:
        ``(B, C)`` distances.
    """
    x = x.to(precisions.dtype)
    means = means.to(precisions.dtype)
    block = max(1, max_elements // max(1, x.shape[0] * x.shape[1]))
    out = []
    for start in range(0, len(means), block):
        diff = x[None] - means[start : start + block, None]  # (c, B, d)
        out.append(((diff @ precisions[start : start + block]) * diff).sum(-1))
    if not out:
        return x.new_zeros(x.shape[0], 0)
    return torch.cat(out).T


def gaussian_samples(
    means: torch.Tensor, covariances: torch.Tensor, n: int, generator: torch.Generator
) -> torch.Tensor:
    """``(C, n, d)`` draws from ``N(means[c], covariances[c])`` for each of the ``C`` classes:
    ``mu + z L^T`` with ``L`` the Cholesky factor of the covariance and ``z`` standard normal from
    ``generator`` (what ``torch.distributions.MultivariateNormal`` draws, with a generator),
    in the covariances' dtype and on their device.

    Raises:
        torch.linalg.LinAlgError: a covariance that is not positive definite (add a ridge).
    """
    factor = torch.linalg.cholesky(covariances)
    z = torch.randn(
        means.shape[0], n, means.shape[1], generator=generator, dtype=covariances.dtype
    ).to(covariances.device)
    return means.to(covariances)[:, None, :] + z @ factor.transpose(1, 2)
