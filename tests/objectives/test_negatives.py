import math

import pytest
import torch

from twotower.errors import ConfigError
from twotower.objectives import FrequencyEstimator, UniformSampler, in_batch_candidates


def test_in_batch_candidates_without_estimator_is_no_correction():
    ids = torch.tensor([3, 1, 3])
    got_ids, log_q = in_batch_candidates(ids, None)
    assert torch.equal(got_ids, ids)
    assert torch.equal(log_q, torch.zeros(3))


def test_in_batch_candidates_reads_the_estimator():
    est = FrequencyEstimator(num_buckets=1024, alpha=0.5)
    ids = torch.tensor([3, 1, 3])
    est.update(ids, step=2)
    got_ids, log_q = in_batch_candidates(ids, est)
    assert torch.equal(got_ids, ids)
    torch.testing.assert_close(log_q, est.probability(ids).log())


def test_uniform_sampler_range_and_log_q():
    sampler = UniformSampler(num_items=11, num_samples=5000, seed=1)
    ids, log_q = sampler.sample()
    assert ids.shape == log_q.shape == (5000,)
    assert ids.min() == 1 and ids.max() == 10  # never padding index 0, every real item reachable
    torch.testing.assert_close(log_q, torch.full((5000,), math.log(5000 / 10)))
    # log_q is the log expected count per batch: the empirical counts agree.
    counts = torch.bincount(ids, minlength=11)[1:].double()
    assert (counts / 500 - 1).abs().max() < 0.15


def test_uniform_sampler_state_round_trip():
    sampler = UniformSampler(num_items=100, num_samples=8, seed=0)
    sampler.sample()
    state = sampler.state_dict()
    expected = [sampler.sample()[0] for _ in range(3)]
    restored = UniformSampler(num_items=100, num_samples=8, seed=123)
    restored.load_state_dict(state)
    for want in expected:
        assert torch.equal(restored.sample()[0], want)


def test_uniform_sampler_rejects_bad_config():
    with pytest.raises(ConfigError):
        UniformSampler(num_items=1, num_samples=4)
    with pytest.raises(ConfigError):
        UniformSampler(num_items=10, num_samples=0)
