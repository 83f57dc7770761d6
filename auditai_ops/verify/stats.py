"""Statistical guarantee for certified accuracy.

Certified accuracy over n samples is an estimate of the population's rate p. With k of n
samples certified, the one-sided Clopper-Pearson lower bound at confidence 1 - alpha is the
alpha quantile of Beta(k, n - k + 1): p >= that bound with probability at least 1 - alpha
(it is exact, i.e. conservative, for the binomial). For k = 0 the bound is 0.
"""

from __future__ import annotations

from scipy.special import betaincinv  # the quantile scipy.stats.beta.ppf computes (tested equal), without importing scipy.stats (a second)


def clopper_pearson_lower(successes: int, trials: int, confidence: float) -> float:
    """One-sided lower confidence bound on a binomial proportion."""
    if trials <= 0 or not 0 <= successes <= trials:
        raise ValueError(f"need 0 <= successes <= trials and trials > 0, got {successes} of {trials}")
    if not 0.0 < confidence < 1.0:
        raise ValueError(f"confidence must be in (0, 1), got {confidence}")
    if successes == 0:
        return 0.0
    return float(betaincinv(successes, trials - successes + 1, 1.0 - confidence))
