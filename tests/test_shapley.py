"""The Shapley engine: axioms, exactness, convergence, budgets, determinism."""

from __future__ import annotations

import itertools
import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from infoutil.attribution.shapley import (
    ESTIMATORS,
    brute_force_shapley,
    make_design,
    shapley_values,
)
from infoutil.errors import UserError

SAMPLING = ("kernel", "leverage", "leverage-gp", "permutation")


def fading_fourier_game(n: int, seed: int, decay: float = 0.1):
    """v(x) = sum_T c_T prod_{i in T} x_i in signs x (+1 present, -1 absent), with every
    subset T of order <= 5 and Var c_T = decay^(|T|-1): interactions fade with their order,
    as those of image-patch games do (the spectrum measured in BENCHMARKS.md)."""
    g = torch.Generator().manual_seed(seed)
    subsets = [t for k in range(1, 6) for t in itertools.combinations(range(n), k)]
    coef = torch.randn(len(subsets), generator=g, dtype=torch.float64)
    coef *= torch.tensor([decay ** ((len(t) - 1) / 2) for t in subsets], dtype=torch.float64)

    incidence = torch.zeros((n, len(subsets)), dtype=torch.float64)
    for k, t in enumerate(subsets):
        incidence[list(t), k] = 1.0

    def v(Z):
        absent_in_t = (~Z).to(torch.float64) @ incidence  # prod of signs = (-1)^(absent count)
        return (1 - 2 * (absent_in_t % 2)) @ coef

    return v


class MobiusGame:
    """v(S) = sum over T subset of S of a_T, with random a_T of order <= max_order.

    Its Shapley values are known in closed form: phi_i = sum_{T containing i} a_T / |T|.
    """

    def __init__(self, n: int, max_order: int, seed: int, density: float = 1.0):
        g = torch.Generator().manual_seed(seed)
        self.n = n
        self.terms: dict[tuple[int, ...], float] = {}
        for k in range(1, max_order + 1):
            for t in itertools.combinations(range(n), k):
                if float(torch.rand((), generator=g)) <= density:
                    self.terms[t] = float(torch.randn((), generator=g, dtype=torch.float64))
        self.calls = 0
        self.evaluations = 0

    def __call__(self, Z: torch.Tensor) -> torch.Tensor:
        self.calls += 1
        self.evaluations += Z.shape[0]
        Zf = Z.to(torch.float64)
        out = torch.zeros(Z.shape[0], dtype=torch.float64)
        for t, a in self.terms.items():
            out += a * Zf[:, list(t)].prod(1)
        return out

    def set_value(self, S: frozenset) -> float:
        return sum(a for t, a in self.terms.items() if set(t) <= S)

    def truth(self) -> torch.Tensor:
        phi = torch.zeros(self.n, dtype=torch.float64)
        for t, a in self.terms.items():
            for i in t:
                phi[i] += a / len(t)
        return phi

    def efficiency_gap(self, phi: torch.Tensor) -> float:
        return float(
            phi.sum() - (self.set_value(frozenset(range(self.n))) - self.set_value(frozenset()))
        )


@given(n=st.integers(2, 7), order=st.integers(1, 4), seed=st.integers(0, 10_000))
@settings(max_examples=25, deadline=None)
def test_exact_matches_the_textbook_formula(n, order, seed):
    game = MobiusGame(n, min(order, n), seed)
    phi = shapley_values(game, n, estimator="exact")
    brute = torch.tensor(brute_force_shapley(game.set_value, n), dtype=torch.float64)
    assert torch.allclose(phi, brute, atol=1e-10)
    assert torch.allclose(phi, game.truth(), atol=1e-10)


@pytest.mark.parametrize("estimator", ESTIMATORS)
@given(seed=st.integers(0, 10_000), n=st.integers(3, 9))
@settings(max_examples=15, deadline=None)
def test_efficiency_holds_to_float_tolerance(estimator, seed, n):
    game = MobiusGame(n, 3, seed)
    budget = None if estimator == "exact" else 6 * n
    phi = shapley_values(game, n, estimator=estimator, budget=budget, seed=seed)
    assert abs(game.efficiency_gap(phi)) < 1e-9


@pytest.mark.parametrize("estimator", ESTIMATORS)
def test_symmetry_and_dummy(estimator):
    """Players 0 and 1 are interchangeable; player 5 never changes the value."""
    n = 6

    def v(Z):
        Zf = Z.to(torch.float64)
        return (
            2 * Zf[:, 0]
            + 2 * Zf[:, 1]
            + 3 * Zf[:, 0] * Zf[:, 1] * Zf[:, 2]
            + Zf[:, 3]
            - Zf[:, 2] * Zf[:, 4]
        )

    if estimator == "exact":
        phi = shapley_values(v, n, estimator="exact")
        assert float(phi[0]) == pytest.approx(float(phi[1]), abs=1e-12)
        assert float(phi[5]) == pytest.approx(0.0, abs=1e-12)
        return

    # sampling estimators: symmetric and dummy in expectation (averaged over seeds)
    def draws(name):
        return torch.stack(
            [shapley_values(v, n, estimator=name, budget=24, seed=s) for s in range(400)]
        )

    phi = draws(estimator)
    se = phi.std(0) / math.sqrt(len(phi))
    diff = phi[:, 0] - phi[:, 1]
    assert abs(float(diff.mean())) < 4 * float(diff.std()) / math.sqrt(len(phi)) + 1e-12
    if estimator == "leverage-gp":
        # a posterior mean is biased, a dummy included; its square error is still smaller
        assert (phi[:, 5] ** 2).mean() < (draws("leverage")[:, 5] ** 2).mean()
    else:
        assert abs(float(phi[:, 5].mean())) < 4 * float(se[5]) + 1e-12
    if estimator == "permutation":  # each order gives a dummy exactly zero
        assert shapley_values(v, n, estimator="permutation", budget=24, seed=1)[5] == 0.0


@pytest.mark.parametrize("estimator", ESTIMATORS)
def test_linearity_with_a_shared_design(estimator):
    n = 7
    a, b = MobiusGame(n, 3, 1), MobiusGame(n, 3, 2)
    budget = None if estimator == "exact" else 40
    phi_a = shapley_values(a, n, estimator=estimator, budget=budget, seed=5)
    phi_b = shapley_values(b, n, estimator=estimator, budget=budget, seed=5)
    phi_ab = shapley_values(
        lambda Z: 2.0 * a(Z) - 0.5 * b(Z), n, estimator=estimator, budget=budget, seed=5
    )
    assert torch.allclose(phi_ab, 2.0 * phi_a - 0.5 * phi_b, atol=1e-10)


@pytest.mark.parametrize(
    "estimator,multiple",
    [
        ("leverage", 4),
        ("leverage", 8),
        ("leverage", 32),
        ("leverage-gp", 4),
        ("leverage-gp", 8),
        ("leverage-gp", 32),
        ("permutation", 4),
        ("permutation", 8),
        ("permutation", 32),
        ("kernel", 8),
        ("kernel", 32),
    ],
)
def test_paired_estimators_are_exact_on_pairwise_games(estimator, multiple):
    """Paired designs recover games with interactions of order <= 2 exactly.

    (KernelSHAP draws with replacement, so at 4n its design can miss a direction and be
    rank-deficient; leverage's draws without replacement cannot.)
    """
    n = 12
    game = MobiusGame(n, 2, seed=multiple)
    phi = shapley_values(game, n, estimator=estimator, budget=multiple * n, seed=7)
    assert torch.allclose(phi, game.truth(), atol=1e-9)


def test_unpaired_third_order_game_is_not_trivially_exact():
    """A sanity check that the test above can fail: order-3 games are not recovered."""
    n = 12
    game = MobiusGame(n, 3, seed=3)
    phi = shapley_values(game, n, estimator="kernel", budget=4 * n, seed=7)
    assert not torch.allclose(phi, game.truth(), atol=1e-6)


@pytest.mark.parametrize("estimator", SAMPLING)
def test_sampling_estimators_converge_to_exact(estimator):
    n = 10
    errors = []
    for budget in (40, 160, 640):
        err = 0.0
        for seed in range(6):
            game = MobiusGame(n, 4, seed=100 + seed, density=0.3)
            phi = shapley_values(game, n, estimator=estimator, budget=budget, seed=seed)
            truth = game.truth()
            err += float(((phi - truth) ** 2).sum() / (truth**2).sum())
        errors.append(err / 6)
    assert errors[0] > errors[1] > errors[2]
    slope = math.log(errors[2] / errors[0]) / math.log(640 / 40)
    assert slope < -0.6  # error falls at least about like 1 / budget


@pytest.mark.parametrize("estimator", ["leverage", "leverage-gp"])
def test_the_full_budget_is_exact(estimator):
    n = 8
    game = MobiusGame(n, 5, seed=4)
    phi = shapley_values(game, n, estimator=estimator, budget=2**n, seed=0)
    assert torch.allclose(phi, game.truth(), atol=1e-9)


@pytest.mark.parametrize("budget", [64, 128, 256])
def test_the_gp_solve_beats_regression_when_interactions_fade(budget):
    """leverage-gp evaluates leverage's coalitions; on games whose interactions fade with
    their order its squared error is at most 70% of leverage's (measured: 52-61%)."""
    n = 12
    err = {"leverage": 0.0, "leverage-gp": 0.0}
    for seed in range(8):
        v = fading_fourier_game(n, seed)
        truth = shapley_values(v, n, estimator="exact")
        for name in err:
            phi = shapley_values(v, n, estimator=name, budget=budget, seed=seed)
            err[name] += float(((phi - truth) ** 2).sum() / (truth**2).sum())
    assert err["leverage-gp"] < 0.7 * err["leverage"]


def test_the_gp_solve_evaluates_leverages_coalitions():
    a = make_design(16, "leverage", 300, torch.Generator().manual_seed(2))
    b = make_design(16, "leverage-gp", 300, torch.Generator().manual_seed(2))
    assert torch.equal(a.coalitions, b.coalitions)


@pytest.mark.parametrize("estimator", ESTIMATORS)
@given(budget=st.integers(40, 300), seed=st.integers(0, 100))
@settings(max_examples=10, deadline=None)
def test_the_budget_is_honoured_in_one_call(estimator, budget, seed):
    n = 8
    game = MobiusGame(n, 2, seed)
    b = None if estimator == "exact" else budget
    shapley_values(game, n, estimator=estimator, budget=b, seed=seed)
    assert game.calls == 1
    assert game.evaluations <= (2**n if estimator == "exact" else budget)


def test_same_seed_same_values_other_seed_other_values():
    game = MobiusGame(9, 3, seed=1)
    a = shapley_values(game, 9, estimator="leverage", budget=50, seed=3)
    b = shapley_values(game, 9, estimator="leverage", budget=50, seed=3)
    c = shapley_values(game, 9, estimator="leverage", budget=50, seed=4)
    assert torch.equal(a, b) and not torch.equal(a, c)


@pytest.mark.parametrize(
    "estimator,budget", [("leverage", 10), ("kernel", 17), ("permutation", 31), ("exact", 100)]
)
def test_too_small_a_budget_is_refused_with_a_reason(estimator, budget):
    with pytest.raises(UserError, match="budget"):
        make_design(16, estimator, budget, torch.Generator())


@pytest.mark.parametrize("n", [8, 16, 20])
def test_leverage_designs_nest_as_the_budget_grows(n):
    """With one seed, a larger budget draws every coalition of a smaller one (and more)."""

    def keys(design):
        bits = 1 << torch.arange(n, dtype=torch.int64)
        return set((design.coalitions.to(torch.int64) * bits).sum(1).tolist())

    for seed in range(5):
        previous = set()
        for budget in (64, 128, 256, 512, 1024):
            design = make_design(n, "leverage", budget, torch.Generator().manual_seed(seed))
            current = keys(design)
            assert len(current) == design.size  # distinct coalitions
            assert previous <= current
            previous = current


def prior_game(n: int, g: torch.Generator, scale: float):
    """A game drawn from leverage-gp's own prior: any linear and even part, and odd
    interactions of order d >= 3 with variance scale^2 x GP_DECAY^((d-3)/2)."""
    from infoutil.attribution.shapley import GP_DECAY

    subsets = [t for k in range(1, n + 1) for t in itertools.combinations(range(n), k)]
    sd = []
    for t in subsets:
        d = len(t)
        sd.append(scale * GP_DECAY ** ((d - 3) / 4) if d % 2 and d >= 3 else 1.0)
    coef = torch.randn(len(subsets), generator=g, dtype=torch.float64) * torch.tensor(sd)
    incidence = torch.zeros((n, len(subsets)), dtype=torch.float64)
    for k, t in enumerate(subsets):
        incidence[list(t), k] = 1.0

    def v(Z):
        absent_in_t = (~Z).to(torch.float64) @ incidence
        return (1 - 2 * (absent_in_t % 2)) @ coef

    return v


def test_the_gp_error_bound_is_calibrated_on_games_from_its_prior():
    """On games drawn from the prior, the estimate's error divided by the posterior standard
    error is standard normal, and the residual recovers the prior's scale."""
    n, scale = 8, 0.05
    g = torch.Generator().manual_seed(0)
    z_known, scale_ratio = [], []
    for seed in range(150):
        v = prior_game(n, g, scale)
        truth = shapley_values(v, n, estimator="exact")
        design = make_design(n, "leverage-gp", 48, torch.Generator().manual_seed(seed), True)
        values = v(design.coalitions)
        err = design.weights @ values - truth
        z_known.append(err / (design.error_cov.diagonal() * scale**2).sqrt())
        scale_ratio.append(float((design.residual @ values).square().sum()) / scale**2)
    z = torch.cat(z_known)
    assert 0.85 < float(z.std()) < 1.15
    assert 0.8 < sum(scale_ratio) / len(scale_ratio) < 1.2
    assert float((z.abs() > 3).double().mean()) < 0.01


def test_the_gp_error_vanishes_where_the_design_is_complete():
    design = make_design(8, "leverage-gp", 256, torch.Generator().manual_seed(0), error=True)
    assert float(design.error_cov.abs().max()) < 1e-6
