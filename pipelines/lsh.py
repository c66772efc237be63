"""The LSH banding of near-dedup: bands and rows for a threshold, and the S-curve the plan and report print.

Both the data stage (jobs.data.minhash) and the CLI (`llmctl plan`, the report) read this; it is arithmetic on the
MinHash config only.
"""

from __future__ import annotations

from functools import lru_cache

import numpy as np

from pipelines.spec.curation import MinHashConfig

S_CURVE_POINTS = (0.5, 0.6, 0.7, 0.8, 0.9, 1.0)


def s_curve(s: float | np.ndarray, bands: int, rows: int) -> float | np.ndarray:
    """Probability that two documents of Jaccard similarity s share at least one of `bands` bands of `rows`."""
    return 1.0 - (1.0 - np.asarray(s, dtype=float) ** rows) ** bands


@lru_cache(maxsize=64)
def lsh_params(threshold: float, num_perm: int, false_positive_weight: float = 0.5) -> tuple[int, int]:
    """(bands, rows) with bands*rows <= num_perm minimising w*FP-area + (1-w)*FN-area around `threshold`.

    FP-area is the integral of the S-curve over [0, threshold] (dissimilar pairs that become candidates),
    FN-area the integral of 1-S over [threshold, 1] (similar pairs that are missed): datasketch's
    `_optimal_param`, integrated with Simpson's rule on a fine grid instead of scipy."""
    w_fp, w_fn = false_positive_weight, 1.0 - false_positive_weight
    below, above = np.linspace(0.0, threshold, 2001), np.linspace(threshold, 1.0, 2001)
    best, best_err = (1, 1), np.inf
    for b in range(1, num_perm + 1):
        for r in range(1, num_perm // b + 1):
            fp = _simpson(s_curve(below, b, r), below)
            fn = _simpson(1.0 - s_curve(above, b, r), above)
            err = w_fp * fp + w_fn * fn
            if err < best_err:
                best, best_err = (b, r), err
    return best


def _simpson(y: np.ndarray, x: np.ndarray) -> float:
    h = (x[-1] - x[0]) / (len(x) - 1)
    return float(h / 3 * (y[0] + y[-1] + 4 * y[1:-1:2].sum() + 2 * y[2:-1:2].sum()))


def resolved_bands_rows(cfg: MinHashConfig) -> tuple[int, int]:
    if cfg.bands is not None and cfg.rows is not None:
        return cfg.bands, cfg.rows
    return lsh_params(cfg.threshold, cfg.num_perm, cfg.false_positive_weight)


def describe(cfg: MinHashConfig) -> dict:
    """Bands, rows and the S-curve at s = 0.5..1.0: what the plan and the report print about the LSH."""
    bands, rows = resolved_bands_rows(cfg)
    curve = {f"{s:.1f}": round(float(s_curve(s, bands, rows)), 4) for s in S_CURVE_POINTS}
    return {"ngram_size": cfg.ngram_size, "num_perm": cfg.num_perm, "threshold": cfg.threshold,
            "bands": bands, "rows": rows, "s_curve": curve}
