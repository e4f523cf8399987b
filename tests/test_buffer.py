import math
import random

import pytest
import torch

from gfnbench.buffer import BufferItem, ReplayBuffer


def item(tokens, r):
    return BufferItem(tuple(tokens), r, {"tokens": list(tokens)})


def far_items(k, length=6):
    """Items with pairwise edit distance = length, far beyond any tolerance < 0.5."""
    return [item([i] * length, 0.0) for i in range(k)]


def test_capacity_eviction_keeps_the_top_rewards():
    rewards = [float(r) for r in range(12)]
    random.Random(0).shuffle(rewards)
    buf = ReplayBuffer(capacity=4)
    for k, r in enumerate(rewards):
        buf.add("p", item([k] * 6, r))
    assert sorted(i.log_reward for i in buf.items("p")) == [8.0, 9.0, 10.0, 11.0]
    assert not buf.add("p", item([99] * 6, 1.0))       # worse than everything kept: not stored
    assert len(buf) == 4 and buf.size("p") == 4 and buf.size("other") == 0


def test_keys_are_independent():
    buf = ReplayBuffer(capacity=2)
    buf.add("a", item([1, 2, 3], 0.0))
    buf.add("b", item([1, 2, 3], -1.0))                 # same tokens under another key is not a duplicate
    assert sorted(buf.keys()) == ["a", "b"] and len(buf) == 2


def test_exact_duplicate_skipped_even_with_higher_reward():
    buf = ReplayBuffer(capacity=10, dedup_tol=0.0)
    assert buf.add("p", item([1, 2, 3, 4], -5.0))
    assert not buf.add("p", item([1, 2, 3, 4], 0.0))
    assert [i.log_reward for i in buf.items("p")] == [-5.0]


@pytest.mark.parametrize("better_first", [True, False])
def test_near_duplicates_keep_the_higher_reward_in_both_orders(better_first):
    a = item([1, 2, 3, 4, 5, 6, 7, 8], -1.0)
    b = item([1, 2, 3, 4, 5, 6, 7, 9], -6.0)           # distance 1 < 0.25 * 16
    first, second = (a, b) if better_first else (b, a)
    buf = ReplayBuffer(capacity=10, dedup_tol=0.25)
    assert buf.add("p", first)
    assert buf.add("p", second) is (not better_first)
    assert buf.items("p") == [a]


def test_far_items_both_kept_and_tolerance_is_strict():
    buf = ReplayBuffer(capacity=10, dedup_tol=0.25)
    assert buf.add("p", item([1, 2, 3, 4], -1.0))
    assert buf.add("p", item([1, 2, 7, 8], 0.0))       # distance 2, not < 0.25 * 8 = 2
    assert buf.add("p", item([9, 9, 9, 9, 9, 9], -3.0))
    assert buf.size("p") == 3


def test_exact_duplicate_checked_before_near_duplicate_replacement():
    buf = ReplayBuffer(capacity=10, dedup_tol=0.25)
    buf.add("p", item([1, 2, 3, 4, 5, 6, 7, 8], -5.0))
    buf.dedup_tol = 0.0                                  # let a near-duplicate in, then restore the rule
    buf.add("p", item([1, 2, 3, 4, 5, 6, 7, 9], -4.0))
    buf.dedup_tol = 0.25
    assert not buf.add("p", item([1, 2, 3, 4, 5, 6, 7, 9], 0.0))
    assert sorted(i.log_reward for i in buf.items("p")) == [-5.0, -4.0]


def test_better_item_replaces_all_its_near_duplicates():
    buf = ReplayBuffer(capacity=10, dedup_tol=0.0)
    buf.add("p", item([1, 2, 3, 4, 5, 6, 7, 8], -5.0))
    buf.add("p", item([1, 2, 3, 4, 5, 6, 7, 9], -4.0))
    buf.add("p", item([9, 9, 9, 9], -1.0))
    buf.dedup_tol = 0.25
    assert buf.add("p", item([1, 2, 3, 4, 5, 6, 7, 0], 0.0))
    assert sorted(i.log_reward for i in buf.items("p")) == [-1.0, 0.0]


def test_reward_sampling_frequencies_follow_softmax():
    rewards = [0.0, -1.0, -2.0, -0.5, 1.0]
    buf = ReplayBuffer(capacity=10, sampling="reward")
    for it, r in zip(far_items(len(rewards)), rewards):
        buf.add("p", BufferItem(it.tokens, r))
    g = torch.Generator().manual_seed(0)
    draws = [d.tokens[0] for _ in range(4000) for d in buf.sample("p", 5, g)]     # 20000 draws
    want = torch.softmax(torch.tensor(rewards, dtype=torch.float64), 0).tolist()
    n = len(draws)
    chi2 = sum((draws.count(k) - n * p) ** 2 / (n * p) for k, p in enumerate(want))
    assert chi2 < 18.5                                   # df = 4, p ~ 0.001
    assert draws.count(4) > draws.count(0) > draws.count(2)


def test_reward_sampling_is_stable_for_extreme_log_rewards():
    buf = ReplayBuffer(capacity=10)
    for it, r in zip(far_items(3), [-1000.0, -1001.0, float("-inf")]):
        buf.add("p", BufferItem(it.tokens, r))
    g = torch.Generator().manual_seed(0)
    draws = [d.tokens[0] for _ in range(1000) for d in buf.sample("p", 3, g)]
    assert draws.count(2) == 0
    assert abs(draws.count(0) / 3000 - 1 / (1 + math.exp(-1))) < 0.03


def test_uniform_sampling_frequencies_are_equal():
    buf = ReplayBuffer(capacity=10, sampling="uniform")
    for it, r in zip(far_items(4), [0.0, -10.0, -20.0, -30.0]):
        buf.add("p", BufferItem(it.tokens, r))
    draws = [d.tokens[0] for d in buf.sample("p", 20000, torch.Generator().manual_seed(1))]
    chi2 = sum((draws.count(k) - 5000) ** 2 / 5000 for k in range(4))
    assert chi2 < 16.3                                   # df = 3, p ~ 0.001
    assert len(buf.sample("p", 2)) == 2                  # uniform draws n even from a small buffer


def test_sampling_is_reproducible_and_handles_missing_keys():
    buf = ReplayBuffer(capacity=10)
    for it, r in zip(far_items(6), range(6)):
        buf.add("p", BufferItem(it.tokens, -float(r)))
    a = [d.tokens for d in buf.sample("p", 4, torch.Generator().manual_seed(5))]
    b = [d.tokens for d in buf.sample("p", 4, torch.Generator().manual_seed(5))]
    c = [d.tokens for d in buf.sample("p", 4, torch.Generator().manual_seed(6))]
    assert a == b and a != c
    assert buf.sample("missing", 3) == [] and buf.sample("p", 0) == []


def test_sparse_reward_buffer_returns_everything_once():
    buf = ReplayBuffer(capacity=10)
    for it in far_items(3):
        buf.add("p", it)
    got = buf.sample("p", 8)
    assert sorted(d.tokens for d in got) == sorted(it.tokens for it in far_items(3))


@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_nan_and_plus_inf_rejected(bad):
    buf = ReplayBuffer()
    with pytest.raises(ValueError, match="log reward"):
        buf.add("p", item([1], bad))
    assert len(buf) == 0


def test_seed_prefills_with_add_rules():
    buf = ReplayBuffer(capacity=2)
    assert buf.seed("p", [item([1, 2, 3], -1.0), item([1, 2, 3], -1.0), item([7, 8, 9], -2.0)]) == 2
    assert buf.size("p") == 2


def test_state_dict_round_trip():
    buf = ReplayBuffer(capacity=3, dedup_tol=0.1, sampling="reward")
    for k, r in enumerate([-1.0, -2.0, -0.5, -3.0, -0.1]):
        buf.add(("q", k % 2), item([k] * 4, r))
    buf.add("p", item([1, 2, 3], -1.0))
    state = buf.state_dict()
    other = ReplayBuffer()
    other.load_state_dict(state)
    assert other.state_dict() == state
    assert (other.capacity, other.dedup_tol, other.sampling) == (3, 0.1, "reward")
    for key in buf.keys():  # noqa: SIM118  (ReplayBuffer.keys, not a dict)
        assert other.items(key) == buf.items(key)
        assert [i.payload for i in other.items(key)] == [i.payload for i in buf.items(key)]
    g1, g2 = torch.Generator().manual_seed(3), torch.Generator().manual_seed(3)
    assert buf.sample(("q", 0), 2, g1) == other.sample(("q", 0), 2, g2)
    assert other.add("p", item([9, 9, 9], 0.0)) and other.size("p") == 2
