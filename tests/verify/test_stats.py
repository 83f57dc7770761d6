import pytest

from auditai_ops.verify.stats import clopper_pearson_lower


def test_all_successes_has_the_closed_form() -> None:
    """For k = n the bound solves p^n = alpha: p = alpha^(1/n)."""
    assert clopper_pearson_lower(100, 100, 0.95) == pytest.approx(0.05 ** (1 / 100), rel=1e-9)


def test_known_values_and_monotonicity() -> None:
    assert clopper_pearson_lower(0, 10, 0.95) == 0.0
    # R: binom.test(950, 1000, alternative="greater")$conf.int[1] = 0.9370...
    assert clopper_pearson_lower(950, 1000, 0.95) == pytest.approx(0.93704, abs=2e-4)
    assert clopper_pearson_lower(950, 1000, 0.99) < clopper_pearson_lower(950, 1000, 0.95) < 0.95
    assert clopper_pearson_lower(9500, 10000, 0.95) > clopper_pearson_lower(950, 1000, 0.95)


@pytest.mark.parametrize(("successes", "trials", "confidence"), [(5, 4, 0.9), (-1, 4, 0.9), (1, 0, 0.9), (1, 2, 1.0)])
def test_bad_arguments(successes: int, trials: int, confidence: float) -> None:
    with pytest.raises(ValueError):
        clopper_pearson_lower(successes, trials, confidence)


def test_equals_the_beta_quantile_of_scipy_stats() -> None:
    """The bound is the alpha quantile of Beta(k, n - k + 1), bit for bit as scipy.stats.beta.ppf gives it (certificates made before keep their figures)."""
    import numpy as np
    from scipy.stats import beta

    for trials in (1, 2, 7, 150, 1000, 4096, 10000, 100000):
        for successes in sorted({int(k) for k in np.linspace(1, trials, 40)}):
            for confidence in (0.9, 0.95, 0.99):
                assert clopper_pearson_lower(successes, trials, confidence) == float(beta.ppf(1.0 - confidence, successes, trials - successes + 1))
