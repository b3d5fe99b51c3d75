"""What no attack can beat: the Gaussian mechanism at (ε, δ) is μ-GDP with μ = 1/z (z: the
accountant's noise for sensitivity 1), so every membership test — the best possible, not only the
ones rayfp's audit runs — has its ROC curve below the Gaussian tradeoff curve (Dong, Roth and
Su 2019, "Gaussian differential privacy"):

    TPR(FPR) <= Φ(Φ⁻¹(FPR) + μ)        AUC <= Φ(μ / √2)

The audit measures how close real attacks come; these bounds are the guarantee.
"""

from __future__ import annotations

import math

from scipy.stats import norm


def gdp_mu(epsilon: float, delta: float) -> float:
    """μ of the (ε, δ) Gaussian mechanism; 0 at ε = 0, inf without noise."""
    import dp_accounting

    if math.isinf(epsilon):
        return math.inf
    return 1.0 / float(dp_accounting.get_sigma_gaussian(epsilon, delta))


def max_auc(mu: float) -> float:
    """The largest ROC AUC any membership test can reach against a μ-GDP release."""
    return 1.0 if math.isinf(mu) else float(norm.cdf(mu / math.sqrt(2.0)))


def max_tpr(mu: float, fpr: float) -> float:
    """The largest true-positive rate at false-positive rate ``fpr`` against μ-GDP."""
    return 1.0 if math.isinf(mu) else float(norm.cdf(norm.ppf(fpr) + mu))


def describe(epsilon: float, delta: float) -> str:
    """One line a person can act on: what the release guarantees about membership."""
    if math.isinf(epsilon):
        return "no guarantee: exact counts (membership can be inferred, see docs/privacy.md)"
    mu = gdp_mu(epsilon, delta)
    return (f"no membership attack can exceed AUC {max_auc(mu):.3f}, or "
            f"{100 * max_tpr(mu, 0.01):.1f} % true positives at 1 % false positives")
