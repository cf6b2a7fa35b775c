"""Sampling against transformers' logits processors, and seeded reproducibility."""

import numpy as np
import pytest

from edgeqwen.errors import EdgeQwenError
from edgeqwen.sampling import filtered_probs, make_sampler

from conftest import GOLDEN

G = np.load(GOLDEN / "sampling.npz")


@pytest.mark.parametrize("i", range(len(G["params"])))
def test_filtered_probs_equal_transformers(i):
    temp, k, p, mp = G["params"][i]
    got = filtered_probs(G["logits"][i], temp, int(k), p, mp)
    want = G["probs"][i]
    np.testing.assert_array_equal(got > 0, want > 0)
    np.testing.assert_allclose(got, want, atol=1e-6)


def test_greedy_and_seeded():
    logits = G["logits"][0]
    assert make_sampler(0.0)(logits) == int(np.argmax(logits))
    a = [make_sampler(0.8, 20, 0.9, seed=3)(logits) for _ in range(5)]
    s1, s2 = make_sampler(0.8, 20, 0.9, seed=3), make_sampler(0.8, 20, 0.9, seed=3)
    assert [s1(logits) for _ in range(50)] == [s2(logits) for _ in range(50)]
    assert len(set(a)) == 1


def test_samples_follow_the_distribution():
    logits = np.array([2.0, 1.0, 0.5, -1.0, -3.0], np.float32)
    sampler = make_sampler(1.0, seed=0)
    counts = np.bincount([sampler(logits) for _ in range(20000)], minlength=5) / 20000
    p = np.exp(logits - logits.max())
    np.testing.assert_allclose(counts, p / p.sum(), atol=0.015)


def test_presence_penalty_lowers_seen_tokens():
    logits = np.array([1.0, 1.0, 0.0], np.float32)
    assert make_sampler(0.0, presence_penalty=0.5)(logits, history=[0]) == 1


@pytest.mark.parametrize("kw", [dict(temperature=-1), dict(top_p=0), dict(top_p=1.5), dict(min_p=1.0),
                                dict(top_k=-2)])
def test_rejects_bad_values(kw):
    with pytest.raises(EdgeQwenError):
        make_sampler(**kw)
