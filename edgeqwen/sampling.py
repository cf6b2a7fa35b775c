"""Samplers: small callables from a logits row to a token id.

The usual definitions, in the usual order: presence penalty on the logits, temperature, then
top-k, top-p (nucleus) and min-p on the temperature-scaled probabilities. Temperature 0 is greedy.
"""

from __future__ import annotations

import numpy as np

from .errors import EdgeQwenError


def check_sampling(temperature=0.0, top_k=0, top_p=1.0, min_p=0.0, presence_penalty=0.0) -> None:
    """EdgeQwenError for values outside their meaningful ranges."""
    if temperature is not None and temperature < 0:
        raise EdgeQwenError(f"temperature must be >= 0, got {temperature}")
    if top_k is not None and top_k < 0:
        raise EdgeQwenError(f"top_k must be >= 0 (0 = off), got {top_k}")
    if top_p is not None and not 0 < top_p <= 1:
        raise EdgeQwenError(f"top_p must be in (0, 1], got {top_p}")
    if min_p is not None and not 0 <= min_p < 1:
        raise EdgeQwenError(f"min_p must be in [0, 1), got {min_p}")
    if presence_penalty is not None and not -2 <= presence_penalty <= 2:
        raise EdgeQwenError(f"presence_penalty must be in [-2, 2], got {presence_penalty}")


def filtered_probs(logits: np.ndarray, temperature: float, top_k: int = 0, top_p: float = 1.0,
                   min_p: float = 0.0) -> np.ndarray:
    """Probabilities (V,) float64 after temperature, top-k, top-p and min-p, renormalised."""
    z = logits.astype(np.float64) / temperature
    if top_k and top_k < z.shape[0]:
        kth = np.partition(z, -top_k)[-top_k]
        z = np.where(z >= kth, z, -np.inf)
    z -= z.max()
    p = np.exp(z)
    p /= p.sum()
    if top_p < 1.0:
        order = np.argsort(-p, kind="stable")
        cum = np.cumsum(p[order])
        # keep the smallest prefix whose mass reaches top_p (always at least one token)
        cut = int(np.searchsorted(cum, top_p)) + 1
        mask = np.zeros_like(p, dtype=bool)
        mask[order[:cut]] = True
        p = np.where(mask, p, 0.0)
        p /= p.sum()
    if min_p > 0.0:
        p = np.where(p >= min_p * p.max(), p, 0.0)
        p /= p.sum()
    return p


def make_sampler(temperature: float = 0.0, top_k: int = 0, top_p: float = 1.0, min_p: float = 0.0,
                 presence_penalty: float = 0.0, seed: int | None = None):
    """A callable ``sampler(logits (V,), history: list[int]) -> token id``; same seed, same tokens."""
    temperature = 0.0 if temperature is None else float(temperature)
    top_k = int(top_k or 0)
    top_p = 1.0 if top_p is None else float(top_p)
    min_p = float(min_p or 0.0)
    presence_penalty = float(presence_penalty or 0.0)
    check_sampling(temperature, top_k, top_p, min_p, presence_penalty)
    rng = np.random.default_rng(seed)

    def sample(logits: np.ndarray, history=()) -> int:
        if presence_penalty and len(history):
            logits = logits.copy()
            seen = np.unique(np.asarray(history, dtype=np.int64))
            logits[seen[seen < logits.shape[0]]] -= presence_penalty
        if temperature == 0.0:
            return int(np.argmax(logits))
        p = filtered_probs(logits, temperature, top_k, top_p, min_p)
        keep = np.flatnonzero(p)
        return int(keep[rng.choice(keep.shape[0], p=p[keep] / p[keep].sum())])

    return sample
