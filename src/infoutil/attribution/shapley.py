"""Shapley values of cooperative games, exactly or from a budget of evaluations.

Every estimator here is a *design*: a boolean coalition matrix ``Z`` of shape ``[m, n]`` and a
matrix ``A`` of shape ``[n, m]`` such that the estimate is ``phi = A @ v(Z)``. The game is
evaluated once, on all ``m`` coalitions together (``m <= budget``), and the estimator's own
arithmetic is one matrix product. Estimators:

``exact``
    All ``2^n`` coalitions with the Shapley weights ``|S|! (n-|S|-1)! / n!``.
``kernel``
    KernelSHAP (Lundberg & Lee 2017) with paired sampling (Covert & Lee 2021): sizes drawn with
    the Shapley-kernel mass ``(n-1) / (s (n-s))``, each subset with its complement, and the
    efficiency constraint imposed exactly by a projected (constrained) least-squares solve.
``leverage``
    Leverage SHAP (Musco & Witter 2025): coalition sizes uniform (the leverage scores),
    drawn without replacement, paired, with the border sizes enumerated whole when the budget
    covers them, and the same projected solve. Each size's sample is weighted by its share of
    the kernel objective, so a budget of ``2^n`` returns the exact values. Each size draws
    from its own seeded sequence, so with one seed a larger budget's coalitions contain a
    smaller budget's (the designs nest, up to rounding of the per-size counts).
``leverage-gp``
    Leverage SHAP's coalitions with a Gaussian-process solve (ours). Pairing cancels the even
    part of the game; the odd part is a linear term, whose coefficients give the Shapley
    values of an additive game, plus odd interactions of order 3, 5, ... A regression on the
    linear term alone treats those interactions as noise. Here they get a Gaussian prior
    (independent Fourier coefficients whose variance falls by ``decay`` every two orders), the
    linear term a flat one, and the estimate is the posterior mean of the Shapley values. It
    interpolates the evaluated coalitions, so it is exact on games with interactions of order
    at most 2 and at the full budget, like ``leverage``; on real image-patch games its squared
    error is 3-5x smaller than ``leverage``'s at the same budget (BENCHMARKS.md). Building the
    map costs one Cholesky factorisation of a (budget/2)-square matrix: milliseconds at 512,
    but it grows as budget^3, so far above 4096 plain ``leverage`` is the practical choice.
``permutation``
    Antithetic permutation sampling: each random order and its reverse; the marginal
    contributions along each order telescope, so efficiency holds exactly.
"""

from __future__ import annotations

import functools
import itertools
import math
from collections.abc import Callable
from dataclasses import dataclass

import torch

from infoutil.errors import UserError

ESTIMATORS = ("exact", "kernel", "leverage", "leverage-gp", "permutation")
GP_DECAY = 0.1  # prior variance ratio per two interaction orders (benchmarks/shapley_prior.py)
MAX_EXACT_PLAYERS = 20


@dataclass(frozen=True)
class Design:
    """Coalitions to evaluate and the linear map from their values to Shapley values."""

    coalitions: torch.Tensor  # bool [m, n]
    weights: torch.Tensor  # float64 [n, m]
    # leverage-gp only: the estimate's error covariance per unit prior scale [n, n], and the
    # whitened residual map [d, m] whose squared norm over d estimates that scale d times
    error_cov: torch.Tensor | None = None
    residual: torch.Tensor | None = None

    @property
    def size(self) -> int:
        return int(self.coalitions.shape[0])


def default_budget(n: int) -> int:
    return min(2**n, 32 * n) if n <= 30 else 32 * n


def check_budget(n: int, estimator: str, budget: int | None) -> int:
    """The budget to use; a budget too small to estimate ``n`` values is refused."""
    if estimator not in ESTIMATORS:
        raise UserError(
            f"unknown Shapley estimator {estimator!r}; choose one of {', '.join(ESTIMATORS)}"
        )
    if n < 1:
        raise UserError(f"a game needs at least one player, not {n}")
    if estimator == "exact":
        if n > MAX_EXACT_PLAYERS:
            raise UserError(
                f"exact Shapley enumerates 2^{n} coalitions; use at most "
                f"{MAX_EXACT_PLAYERS} players or a sampling estimator"
            )
        if budget is not None and budget < 2**n:
            raise UserError(
                f"exact Shapley needs 2^{n} = {2**n} evaluations but the budget is "
                f"{budget}; raise the budget or use a sampling estimator"
            )
        return 2**n
    budget = default_budget(n) if budget is None else int(budget)
    if n == 1:
        return max(budget, 2)
    minimum = 2 * n if estimator == "permutation" else n + 2
    if budget < minimum:
        why = (
            "one antithetic pair of orders costs 2 + 2(n-1) evaluations"
            if estimator == "permutation"
            else "a least-squares estimate of n values needs the empty and full coalitions "
            "plus at least n others"
        )
        raise UserError(
            f"Shapley budget {budget} is too small for {n} players with "
            f"{estimator!r}: {why}; use a budget of at least {minimum}"
        )
    return budget


def make_design(
    n: int, estimator: str, budget: int | None, generator: torch.Generator, error: bool = False
) -> Design:
    """``error``: leverage-gp only, also the estimate's error covariance (``Design.error_cov``)."""
    budget = check_budget(n, estimator, budget)
    if estimator == "exact" or n == 1:
        return exact_design(n)
    if estimator == "permutation":
        return permutation_design(n, budget, generator)
    if estimator == "leverage-gp":
        return odd_gp_design(n, budget, generator, error=error)
    return regression_design(n, budget, generator, leverage=(estimator == "leverage"))


def shapley_values(
    value_fn: Callable[[torch.Tensor], torch.Tensor],
    n_players: int,
    *,
    estimator: str = "leverage",
    budget: int | None = None,
    seed: int = 0,
) -> torch.Tensor:
    """Shapley values of the game ``value_fn`` (bool ``[m, n]`` -> values ``[m]``).

    ``value_fn`` is called once with every coalition of the design (at most ``budget`` rows).
    Returns a float64 tensor of ``n_players`` values.
    """
    design = make_design(n_players, estimator, budget, torch.Generator().manual_seed(seed))
    values = torch.as_tensor(value_fn(design.coalitions), dtype=torch.float64).reshape(-1)
    if values.numel() != design.size:
        raise ValueError(f"value_fn returned {values.numel()} values for {design.size} coalitions")
    return design.weights @ values


# ---------------------------------------------------------------- exact


def shapley_weight(n: int, s: int) -> float:
    """Weight of a marginal contribution to a coalition of size ``s``: s!(n-s-1)!/n!."""
    return 1.0 / (n * math.comb(n - 1, s))


@functools.lru_cache(maxsize=4)
def exact_design(n: int) -> Design:
    """All ``2^n`` coalitions, in the order of their bitmask (bit i = player i)."""
    masks = torch.arange(2**n, dtype=torch.int64)
    bits = ((masks[:, None] >> torch.arange(n)) & 1).bool()  # [2^n, n]
    sizes = bits.sum(1)
    w = torch.tensor([shapley_weight(n, s) for s in range(n)] + [0.0], dtype=torch.float64)
    # phi_i = sum_{S not i} w(|S|) (v(S+i) - v(S)): +w(|S|-1) where i in S, -w(|S|) where not.
    plus = w[(sizes - 1).clamp(min=0)][None, :].expand(n, -1)
    minus = w[sizes][None, :].expand(n, -1)
    weights = torch.where(bits.T, plus, -minus).contiguous()
    return Design(bits, weights)


def brute_force_shapley(v: Callable[[frozenset], float], n: int) -> list[float]:
    """The textbook formula, one coalition at a time (a slow reference for tests)."""
    phi = []
    for i in range(n):
        others = [j for j in range(n) if j != i]
        total = 0.0
        for s in range(n):
            for combo in itertools.combinations(others, s):
                S = frozenset(combo)
                total += shapley_weight(n, s) * (v(S | {i}) - v(S))
        phi.append(total)
    return phi


# ---------------------------------------------------------------- permutation


def permutation_design(n: int, budget: int, g: torch.Generator) -> Design:
    pairs = max((budget - 2) // (2 * (n - 1)), 1)
    orders = []
    for _ in range(pairs):
        p = torch.randperm(n, generator=g)
        orders += [p, p.flip(0)]
    m = 2 + len(orders) * (n - 1)
    coalitions = torch.zeros((m, n), dtype=torch.bool)
    coalitions[1] = True  # row 0: empty, row 1: full
    weights = torch.zeros((n, m), dtype=torch.float64)
    scale = 1.0 / len(orders)
    row = 2
    for order in orders:
        prev = 0  # row index of the prefix before the current player
        current = torch.zeros(n, dtype=torch.bool)
        for k, player in enumerate(order.tolist()):
            if k == n - 1:
                nxt = 1
            else:
                current[player] = True
                coalitions[row] = current
                nxt = row
                row += 1
            weights[player, nxt] += scale
            weights[player, prev] -= scale
            prev = nxt
    return Design(coalitions, weights)


# ---------------------------------------------------------------- regression (kernel, leverage)


def _size_mass(n: int, s: int) -> float:
    """Total Shapley-kernel weight of all coalitions of size ``s``: (n-1) / (s (n-s))."""
    return (n - 1) / (s * (n - s))


def _pair_classes(n: int) -> list[tuple[int, int]]:
    """(size t, capacity) for each class of paired draws: sizes t and n-t, t <= n/2."""
    classes = []
    for t in range(1, n // 2 + 1):
        if t == n - t:
            classes.append((t, math.comb(n, t) // 2))
        else:
            classes.append((t, math.comb(n, t)))
    return classes


def _allocate(share: list[float], capacity: list[int], total: int) -> list[int]:
    """Split ``total`` draws over classes in proportion to ``share``, capped by ``capacity``.

    Water-filling: capped classes are filled whole and their excess goes to the others.
    Rounding by largest remainder, ties to the smaller size, so the counts are deterministic.
    """
    counts = [0] * len(share)
    open_ = [i for i in range(len(share)) if capacity[i] > 0]
    remaining = min(total, sum(capacity))
    while remaining > 0 and open_:
        mass = sum(share[i] for i in open_)
        ideal = {i: remaining * share[i] / mass for i in open_}
        capped = [i for i in open_ if ideal[i] >= capacity[i] - counts[i]]
        if capped:
            for i in capped:
                remaining -= capacity[i] - counts[i]
                counts[i] = capacity[i]
                open_.remove(i)
            continue
        base = {i: int(ideal[i]) for i in open_}
        left = remaining - sum(base.values())
        order = sorted(open_, key=lambda i: (-(ideal[i] - base[i]), i))
        for i in order[:left]:
            base[i] += 1
        for i in open_:
            counts[i] += base[i]
        remaining = 0
    return counts


ENUMERATE_CLASS_LIMIT = 200_000  # classes up to this size are drawn from a full listing


@functools.lru_cache(maxsize=64)
def _class_members(n: int, t: int, self_paired: bool) -> torch.Tensor:
    """Every subset of size ``t`` as a bool ``[capacity, n]`` matrix, in a fixed order
    (one representative per complement pair when ``self_paired``)."""
    combos = [c for c in itertools.combinations(range(n), t) if not self_paired or 0 in c]
    masks = torch.zeros((len(combos), n), dtype=torch.bool)
    if t:
        masks.scatter_(1, torch.tensor(combos, dtype=torch.int64), True)
    return masks


def _distinct_subsets(
    n: int, t: int, count: int, capacity: int, self_paired: bool, seed: int
) -> torch.Tensor:
    """The first ``count`` of a seeded random sequence of distinct subsets of size ``t``.

    The sequence does not depend on ``count``, so a larger budget draws a superset of a smaller
    one's subsets (the designs nest). A class drawn whole is listed, however large.
    """
    g = torch.Generator().manual_seed(seed)
    if capacity <= ENUMERATE_CLASS_LIMIT or count >= capacity:
        members = _class_members(n, t, self_paired)
        return members[torch.randperm(capacity, generator=g)[:count]]
    seen: set[int] = set()
    out = []
    full = (1 << n) - 1
    while len(out) < count:  # count < capacity: rejections are rare unless it is close
        idx = torch.randperm(n, generator=g)[:t]
        key = int(sum(1 << int(i) for i in idx))
        if self_paired:
            key = min(key, full ^ key)
        if key in seen:
            continue
        seen.add(key)
        mask = torch.zeros(n, dtype=torch.bool)
        mask[idx] = True
        out.append(mask)
    return torch.stack(out) if out else torch.zeros((0, n), dtype=torch.bool)


def paired_coalitions(
    n: int, budget: int, g: torch.Generator, leverage: bool
) -> tuple[torch.Tensor, torch.Tensor]:
    """Sampled coalitions, each followed by its complement (``[2p, n]``), and their weights in
    the Shapley-kernel objective; the empty and full coalitions are not included."""
    pairs = (budget - 2) // 2
    classes = _pair_classes(n)
    blocks: list[torch.Tensor] = []  # draws followed by their complements, row-interleaved
    block_weights: list[torch.Tensor] = []
    if leverage:
        # Uniform over sizes: a class of two sizes (t, n-t) gets twice a self-paired class.
        share = [1.0 if t == n - t else 2.0 for t, _ in classes]
        counts = _allocate(share, [cap for _, cap in classes], pairs)
        # one seed per class, drawn before any budget-dependent step: designs nest
        base = int(torch.randint(0, 2**62, (1,), generator=g))
        for (t, cap), c in zip(classes, counts, strict=True):
            if c == 0:
                continue
            draws = _distinct_subsets(n, t, c, cap, t == n - t, (base + 7919 * t) % 2**63)
            per_size = c * (2 if t == n - t else 1)  # samples of each size in this class
            block = torch.stack([draws, ~draws], 1).reshape(-1, n)
            blocks.append(block)
            # sizes t and n - t have the same kernel mass
            block_weights.append(
                torch.full((len(block),), _size_mass(n, t) / per_size, dtype=torch.float64)
            )
    else:
        sizes = torch.arange(1, n)
        mass = torch.tensor([_size_mass(n, int(s)) for s in sizes], dtype=torch.float64)
        drawn = sizes[torch.multinomial(mass, pairs, replacement=True, generator=g)]
        for s in drawn.tolist():
            mask = torch.zeros(n, dtype=torch.bool)
            mask[torch.randperm(n, generator=g)[:s]] = True
            blocks.append(torch.stack([mask, ~mask]))
            block_weights.append(torch.ones(2, dtype=torch.float64))
    Z = torch.cat(blocks) if blocks else torch.zeros((0, n), dtype=torch.bool)
    w = torch.cat(block_weights) if blocks else torch.zeros(0, dtype=torch.float64)
    return Z, w


def with_ends(Z: torch.Tensor) -> torch.Tensor:
    """The empty and the full coalition (rows 0 and 1), then ``Z``."""
    n = Z.shape[1]
    return torch.cat(
        [torch.zeros((1, n), dtype=torch.bool), torch.ones((1, n), dtype=torch.bool), Z]
    )


def regression_design(n: int, budget: int, g: torch.Generator, leverage: bool) -> Design:
    Z, w = paired_coalitions(n, budget, g, leverage)
    return Design(with_ends(Z), projected_wls_weights(Z, w))


def projected_wls_weights(Z: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    """The linear map ``[v(empty), v(full), v(Z_1..Z_M)] -> phi`` of constrained least squares.

    phi minimises sum_j w_j (v(Z_j) - v0 - Z_j . phi)^2 subject to sum(phi) = v1 - v0.
    Writing phi = (v1 - v0)/n * 1 + U gamma with U an orthonormal basis of the plane
    sum = 0, gamma solves an unconstrained weighted least-squares problem.
    """
    n = Z.shape[1]
    Zf = Z.to(torch.float64)
    ones = torch.ones(n, dtype=torch.float64)
    # Orthonormal basis of {x : sum(x) = 0} from the QR of [1 | I].
    q, _ = torch.linalg.qr(torch.cat([ones[:, None], torch.eye(n, dtype=torch.float64)], 1))
    U = q[:, 1:n]
    ZU = Zf @ U  # [M, n-1]
    gram = ZU.T @ (w[:, None] * ZU)
    K = U @ torch.linalg.pinv(gram, hermitian=True) @ (ZU.T * w[None, :])  # [n, M]
    sizes = Zf.sum(1)
    Ks = K @ sizes
    v1 = (ones - Ks) / n
    v0 = -K.sum(1) - v1
    return torch.cat([v0[:, None], v1[:, None], K], 1)


# ---------------------------------------------------------------- odd-part Gaussian process


def _elementary(n: int, d: int, h: int) -> int:
    """Sum over all d-subsets T of prod_{i in T} x_i, for n signs x of which h are -1
    (a Krawtchouk polynomial)."""
    return sum((-1) ** j * math.comb(h, j) * math.comb(n - h, d - j) for j in range(min(h, d) + 1))


@functools.lru_cache(maxsize=16)
def _odd_prior_tables(n: int, decay: float) -> tuple[torch.Tensor, torch.Tensor]:
    """The prior covariance of the odd part of order >= 3 as a function of the Hamming distance
    between two sign vectors, and its Shapley map as a function of the others' minus count."""
    var = {d: decay ** ((d - 3) / 2) for d in range(3, n + 1, 2)}
    cov = [sum(v * _elementary(n, d, h) for d, v in var.items()) for h in range(n + 1)]
    phi = [sum(2 / d * v * _elementary(n - 1, d - 1, h) for d, v in var.items()) for h in range(n)]
    return torch.tensor(cov, dtype=torch.float64), torch.tensor(phi, dtype=torch.float64)


def odd_gp_design(
    n: int, budget: int, g: torch.Generator, decay: float = GP_DECAY, error: bool = False
) -> Design:
    Z, _ = paired_coalitions(n, budget, g, leverage=True)
    return Design(with_ends(Z), *odd_gp_posterior(Z, decay, error))


def odd_gp_weights(Z: torch.Tensor, decay: float = GP_DECAY) -> torch.Tensor:
    """The linear map ``[v(empty), v(full), v(Z_1..Z_M)] -> phi`` of the odd-part GP."""
    return odd_gp_posterior(Z, decay)[0]


def odd_gp_posterior(Z: torch.Tensor, decay: float = GP_DECAY, error: bool = False) -> tuple:
    """The linear map ``[v(empty), v(full), v(Z_1..Z_M)] -> phi`` of the odd-part GP.

    ``Z`` holds complementary pairs (rows 2k and 2k+1). In signs x = +1 (present) / -1, the
    odd part of the game is o(x) = (v(x) - v(-x)) / 2 = x . beta + r(x), where r has the
    Fourier terms of odd order >= 3. Shapley values are linear in the odd Fourier coefficients:
    phi_i = 2 beta_i + sum_{T containing i, |T| odd >= 3} (2/|T|) c_T. With a flat prior on
    beta and r a Gaussian process, the posterior mean is a generalised least-squares fit of beta
    plus kriging of r, both linear in the observed o. With ``error``, also the error
    covariance per unit prior scale and the whitened residual map that estimates the scale.
    """
    n = Z.shape[1]
    X = torch.cat([torch.ones((1, n), dtype=torch.float64), Z[0::2].to(torch.float64) * 2 - 1])
    m = X.shape[0]  # the full/empty pair first, then one sign vector per sampled pair
    cov_of_h, phi_of_h = _odd_prior_tables(n, decay)
    hamming = ((n - X @ X.T) / 2).round().long()
    jitter = 1e-10 * max(float(cov_of_h[0]), 1.0)  # n < 3: no higher orders, K is the jitter
    K = cov_of_h[hamming] + jitter * torch.eye(m, dtype=torch.float64)
    chol = torch.linalg.cholesky(K)
    Ki_X = torch.cholesky_solve(X, chol)
    # beta = B o; pinv: a small budget can leave the linear part rank-deficient
    B = torch.linalg.pinv(X.T @ Ki_X, hermitian=True) @ Ki_X.T  # [n, m]
    # G[i, j]: the Shapley value through player i of the prior's basis at point j
    absent = (X < 0).long()
    G = (X * phi_of_h[absent.sum(1, keepdim=True) - absent]).T
    Ki_Gt = torch.cholesky_solve(G.T.contiguous(), chol)  # [m, n]
    # phi = 2 B o + G K^-1 (o - X B o)
    Phi = 2 * B + Ki_Gt.T - (Ki_Gt.T @ X) @ B
    # efficiency exactly: sum(phi) = 2 o(full) = v(full) - v(empty)
    target = torch.zeros(m, dtype=torch.float64)
    target[0] = 2.0
    Phi += (target - Phi.sum(0)) / n
    W = _on_values(Phi)
    if not error:
        return (W,)
    # The error phi_hat - phi = Phi r - s, with s the Shapley part of r (Cov(s, r) = G):
    # Cov = Phi K Phi' - Phi G' - G Phi' + Cov(s), all per unit prior scale.
    Phi_G = Phi @ G.T
    cov = Phi @ K @ Phi.T - Phi_G - Phi_G.T + _odd_shapley_cov(n, decay)
    # the scale from the GLS residual o - X beta, whitened: E|L^-1 (I - X B) o|^2 = (m - n) s^2
    eye = torch.eye(m, dtype=torch.float64)
    whiten = torch.linalg.solve_triangular(chol, eye - X @ B, upper=False)
    residual = _on_values(whiten)
    dof = max(m - int(torch.linalg.matrix_rank(X)), 1)
    return W, (cov + cov.T) / 2, residual / math.sqrt(dof)


def _on_values(M: torch.Tensor) -> torch.Tensor:
    """A map ``[r, m]`` over the odd part o as one over the evaluated values ``[r, 2m]``:
    o_0 = (v(full) - v(empty)) / 2, then o_k = (v(Z_2k-1) - v(Z_2k)) / 2 for each pair."""
    out = torch.zeros((M.shape[0], 2 * M.shape[1]), dtype=M.dtype)
    out[:, 1], out[:, 0] = M[:, 0] / 2, -M[:, 0] / 2
    out[:, 2::2], out[:, 3::2] = M[:, 1:] / 2, -M[:, 1:] / 2
    return out


@functools.lru_cache(maxsize=16)
def _odd_shapley_cov(n: int, decay: float) -> torch.Tensor:
    """Prior covariance of the Shapley values' share from the odd orders >= 3:
    phi_i gets (2/|T|) c_T from each T containing i."""
    var = {d: decay ** ((d - 3) / 2) for d in range(3, n + 1, 2)}
    diag = sum((2 / d) ** 2 * v * math.comb(n - 1, d - 1) for d, v in var.items())
    off = sum((2 / d) ** 2 * v * math.comb(n - 2, d - 2) for d, v in var.items()) if n > 1 else 0
    cov = torch.full((n, n), float(off), dtype=torch.float64)
    cov.fill_diagonal_(float(diag))
    return cov
