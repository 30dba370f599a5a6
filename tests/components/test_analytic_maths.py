"""The shared maths of the prototype and analytic classifiers against direct references."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from cilkit.components.analytic import (
    RIDGES,
    ClassStatistics,
    RandomProjection,
    RecursiveRidge,
    RidgeAccumulator,
    mahalanobis,
    normalize_covariance,
    one_hot,
    select_ridge,
    shrink_covariance,
    tukey,
)


def ridge_reference(X: torch.Tensor, Y: torch.Tensor, ridge: float) -> torch.Tensor:
    """``(X^T X + ridge I)^{-1} X^T Y`` with an explicit inverse."""
    X, Y = X.double(), Y.double()
    return torch.linalg.inv(X.T @ X + ridge * torch.eye(X.shape[1], dtype=X.dtype)) @ X.T @ Y


def tasks(seed: int = 0, dim: int = 12, sizes=((40, 3), (25, 2), (30, 4))):
    """Rows and labels of three tasks of new classes (contiguous class ids)."""
    g = torch.Generator().manual_seed(seed)
    out, first = [], 0
    for n, k in sizes:
        out.append((torch.randn(n, dim, generator=g).double(), first + torch.arange(n) % k))
        first += k
    return out


@pytest.mark.parametrize("chunk", [None, 7])
def test_recursive_ridge_equals_the_joint_ridge_solution_on_all_data_seen(chunk):
    solver = RecursiveRidge(gamma=0.5)
    seen_x, seen_y = [], []
    for X, y in tasks():
        seen_x.append(X)
        seen_y.append(y)
        num_classes = int(torch.cat(seen_y).max()) + 1
        solver.fit(X, one_hot(y, num_classes), chunk_size=chunk)
        all_x = torch.cat(seen_x)
        reference = ridge_reference(all_x, one_hot(torch.cat(seen_y), num_classes), 0.5)
        torch.testing.assert_close(solver.weight, reference, rtol=1e-9, atol=1e-11)
        inverse = torch.linalg.inv(all_x.T @ all_x + 0.5 * torch.eye(all_x.shape[1]).double())
        torch.testing.assert_close(solver.R, inverse, rtol=1e-9, atol=1e-11)
    assert solver.weight.dtype == torch.float64 and solver.num_outputs == 9


def test_ridge_accumulator_solves_the_ridge_of_every_row_added():
    acc, xs, ys = RidgeAccumulator(), [], []
    for X, y in tasks():
        xs.append(X)
        ys.append(y)
        acc.update(X, one_hot(y, int(y.max()) + 1))
    Y = one_hot(torch.cat(ys), 9)
    torch.testing.assert_close(acc.solve(0.1), ridge_reference(torch.cat(xs), Y, 0.1))
    torch.testing.assert_close(acc.G, torch.cat(xs).T @ torch.cat(xs))


def test_select_ridge_is_the_authors_search():
    """RanPAC's ``optimise_ridge_parameter``: 80% fit, 20% validate, MSE, one solve per
    candidate; the eigendecomposition gives the same losses and the same choice."""
    g = torch.Generator().manual_seed(1)
    H = torch.relu(
        torch.randn(60, 20, generator=g, dtype=torch.float64)
        @ torch.randn(20, 30, generator=g, dtype=torch.float64)
    )
    Y = one_hot(torch.arange(60) % 4, 4)
    H = H + 0.5 * torch.randn(60, 30, generator=g, dtype=torch.float64) * Y.repeat(1, 8)[:, :30]
    ridge, losses = select_ridge(H, Y)
    n = int(60 * 0.8)
    expected = []
    for r in RIDGES:
        Q, G = H[:n].T @ Y[:n], H[:n].T @ H[:n]
        W = torch.linalg.solve(G + r * torch.eye(30, dtype=torch.float64), Q).T
        expected.append(F.mse_loss(H[n:] @ W.T, Y[n:]))
    expected = torch.stack(expected)
    torch.testing.assert_close(losses, expected, rtol=1e-6, atol=1e-9)
    assert ridge == RIDGES[int(np.argmin(expected.numpy()))]
    assert 1e-8 < ridge < 1e8  # an interior choice: the search means something here
    with pytest.raises(ValueError, match="nothing to fit or to validate"):
        select_ridge(H[:1], Y[:1])


def test_class_statistics_means_and_covariances_match_numpy():
    stats = ClassStatistics(5, scatter=True)
    g = torch.Generator().manual_seed(2)
    x = torch.randn(50, 5, generator=g) * 3 + 7
    y = torch.arange(50) % 3
    stats.update(x[:20], y[:20])  # two batches: the statistics run
    stats.update(x[20:], y[20:], num_classes=4)
    assert stats.counts.tolist() == [17, 17, 16, 0]
    for c in range(3):
        xc = x[y == c].double()
        torch.testing.assert_close(stats.means()[c], xc.mean(0))
        cov = torch.from_numpy(np.cov(xc.numpy().T))
        torch.testing.assert_close(stats.covariances(torch.tensor([c]))[0], cov)
    assert stats.means()[3].abs().sum() == 0  # no samples: a zero row
    state = stats.state_dict()
    assert state["sums"].dtype == torch.float64 and state["scatter"].shape == (4, 5, 5)
    with pytest.raises(RuntimeError, match="scatter=True"):
        ClassStatistics(5).covariances()


def _shrink_numpy(cov: np.ndarray, alpha1: float, alpha2: float) -> np.ndarray:
    """The authors' ``shrink_cov`` (FeCAM_vit_cifar100.py), on one matrix."""
    diag_mean = np.mean(np.diagonal(cov))
    off = np.copy(cov)
    np.fill_diagonal(off, 0.0)
    mask = off != 0.0
    off_mean = (off * mask).sum() / mask.sum()
    iden = np.eye(cov.shape[0])
    return cov + alpha1 * diag_mean * iden + alpha2 * off_mean * (1 - iden)


def test_shrinkage_and_normalisation_match_the_authors_formulas():
    g = torch.Generator().manual_seed(3)
    a = torch.randn(3, 6, 6, generator=g, dtype=torch.float64)
    cov = a @ a.transpose(1, 2)
    shrunk = shrink_covariance(cov, 1.0, 0.5)
    for k in range(3):
        expected = _shrink_numpy(cov[k].numpy(), 1.0, 0.5)
        np.testing.assert_allclose(shrunk[k].numpy(), expected, rtol=1e-12)
    corr = normalize_covariance(shrunk)
    for k in range(3):
        sd = np.sqrt(np.diagonal(shrunk[k].numpy()))
        np.testing.assert_allclose(corr[k].numpy(), shrunk[k].numpy() / np.outer(sd, sd))
    torch.testing.assert_close(corr.diagonal(dim1=1, dim2=2), torch.ones(3, 6, dtype=torch.float64))


def test_mahalanobis_equals_an_explicit_inverse_covariance():
    g = torch.Generator().manual_seed(4)
    d, C = 4, 3
    a = torch.randn(C, d, d, generator=g, dtype=torch.float64)
    cov = a @ a.transpose(1, 2) + torch.eye(d, dtype=torch.float64)
    means = torch.randn(C, d, generator=g, dtype=torch.float64)
    x = torch.randn(5, d, generator=g, dtype=torch.float64)
    got = mahalanobis(x, means, torch.linalg.inv(cov), max_elements=d)  # one class per block
    for i in range(5):
        for c in range(C):
            diff = (x[i] - means[c]).numpy()
            expected = diff @ np.linalg.inv(cov[c].numpy()) @ diff
            assert got[i, c].item() == pytest.approx(float(expected), rel=1e-10)
    assert mahalanobis(x, means[:0], cov[:0]).shape == (5, 0)


def test_random_projection_is_drawn_once_from_the_generator():
    uniform = RandomProjection(16, 32, "uniform", "relu")
    assert not uniform.ready
    uniform.reset(torch.Generator().manual_seed(0))
    again = RandomProjection(16, 32, "uniform", "relu")
    again.reset(torch.Generator().manual_seed(0))
    assert torch.equal(uniform.weight, again.weight) and uniform.weight.dtype == torch.float64
    assert uniform.weight.abs().max() <= 16**-0.5  # nn.Linear's bound
    x = torch.randn(3, 16)
    torch.testing.assert_close(uniform(x), torch.relu(x.double() @ uniform.weight))
    normal = RandomProjection(16, 2000, "normal", "relu")
    normal.reset(torch.Generator().manual_seed(0))
    assert abs(normal.weight.std().item() - 1) < 0.02  # RanPAC's torch.randn
    none = RandomProjection(16, 0, "normal", "relu")
    assert none.ready and torch.equal(none(x - 5), (x - 5).double())  # M = 0: no ReLU either


def test_tukey_is_a_power_or_a_log():
    x = torch.tensor([0.25, 4.0])
    torch.testing.assert_close(tukey(x, 0.5), torch.tensor([0.5, 2.0]))
    torch.testing.assert_close(tukey(x, 0.0), torch.log(x))
