import math

import pytest
import torch

from gfnbench.losses import check_log_reward, reward_temperature, sequence_mask, subtb_loss, tb_loss


def brute_force_subtb(log_pf, log_pterm, log_r, lengths, lam, floor=-99.0):
    """Paper Eq. 3 written out pair by pair, the way one would on paper."""
    num = den = 0.0
    for b in range(len(lengths)):
        n = int(lengths[b])
        for i in range(n + 1):
            for j in range(i + 1, n + 1):
                ri, rj = (floor if float(x) == -math.inf else float(x) for x in (log_r[b, i], log_r[b, j]))
                path = sum(float(log_pf[b, k - 1]) for k in range(i + 1, j + 1))
                res = ri + path + float(log_pterm[b, j]) - rj - float(log_pterm[b, i])
                w = lam ** (j - i - 1)
                num += w * res * res
                den += w
    return num / den


def random_batch(seed=0, L=6):
    g = torch.Generator().manual_seed(seed)
    lengths = torch.tensor([0, 2, L, 4, 1])                  # a length-0 row and a full-length row
    B = len(lengths)
    log_pf = -torch.rand(B, L, generator=g, dtype=torch.float64) * 3
    log_pterm = -torch.rand(B, L + 1, generator=g, dtype=torch.float64) * 3
    log_r = -torch.rand(B, L + 1, generator=g, dtype=torch.float64) * 10
    return log_pf, log_pterm, log_r, lengths


def fill_padding(log_pf, log_pterm, log_r, lengths):
    """Garbage past each trajectory's end: -inf, NaN and huge values."""
    for b, n in enumerate(lengths.tolist()):
        log_pf[b, n:] = float("nan")
        log_pterm[b, n + 1:] = float("-inf")
        log_r[b, n + 1:] = 1e30 if n % 2 else float("nan")


@pytest.mark.parametrize("lam", [1.0, 0.9, 0.0])
def test_subtb_equals_brute_force_and_ignores_masked_garbage(lam):
    log_pf, log_pterm, log_r, lengths = random_batch()
    want = brute_force_subtb(log_pf, log_pterm, log_r, lengths, lam)
    assert float(subtb_loss(log_pf, log_pterm, log_r, lengths, lam=lam)) == pytest.approx(want, rel=1e-10)
    fill_padding(log_pf, log_pterm, log_r, lengths)
    assert float(subtb_loss(log_pf, log_pterm, log_r, lengths, lam=lam)) == pytest.approx(want, rel=1e-10)


def test_lambda_changes_the_weighting():
    batch = random_batch()
    assert float(subtb_loss(*batch, lam=0.5)) != pytest.approx(float(subtb_loss(*batch, lam=1.0)), rel=1e-6)


def balanced_batch(B=3, L=5, seed=1):
    """Pick a flow F(s_j) > 0 and stop probabilities; pf and R then follow from the balance conditions."""
    g = torch.Generator().manual_seed(seed)
    log_f = torch.randn(B, L + 1, generator=g, dtype=torch.float64)
    log_pterm = -torch.rand(B, L + 1, generator=g, dtype=torch.float64)
    log_pf = log_f[:, 1:] - log_f[:, :-1]              # F(s_i) q(a|s_i) = F(s_{i+1})
    log_r = log_f + log_pterm                          # R(s_j) = F(s_j) q(stop|s_j)
    return log_pf, log_pterm, log_r, torch.tensor([L, 3, 1]), log_f


def test_losses_vanish_on_a_balanced_flow_and_not_after_perturbation():
    log_pf, log_pterm, log_r, lengths, log_f = balanced_batch()
    assert float(subtb_loss(log_pf, log_pterm, log_r, lengths)) == pytest.approx(0.0, abs=1e-6)
    assert float(subtb_loss(log_pf, log_pterm, log_r, lengths, lam=0.9)) == pytest.approx(0.0, abs=1e-6)
    assert float(tb_loss(log_pf, log_pterm, log_r, lengths, log_z=log_f[:, 0])) == pytest.approx(0.0, abs=1e-6)
    log_pf[0, 1] += 0.5
    assert float(subtb_loss(log_pf, log_pterm, log_r, lengths)) > 1e-3
    assert float(tb_loss(log_pf, log_pterm, log_r, lengths, log_z=log_f[:, 0])) > 1e-3


def test_perturbing_padding_of_balanced_flow_keeps_zero():
    log_pf, log_pterm, log_r, lengths, log_f = balanced_batch()
    log_pf[2, 1:] += 7.0                               # row 2 has length 1: these actions were never taken
    log_pterm[2, 2:] -= 3.0
    assert float(subtb_loss(log_pf, log_pterm, log_r, lengths)) == pytest.approx(0.0, abs=1e-6)
    assert float(tb_loss(log_pf, log_pterm, log_r, lengths, log_z=log_f[:, 0])) == pytest.approx(0.0, abs=1e-6)


def test_minus_inf_rewards_give_finite_loss_and_gradients():
    log_pf, log_pterm, log_r, lengths = random_batch()
    log_r[:, :2] = float("-inf")                       # below a minimum length: impossible to stop there
    fill_padding(log_pf, log_pterm, log_r, lengths)
    log_pf.requires_grad_(True)
    log_pterm.requires_grad_(True)
    for loss in (subtb_loss(log_pf, log_pterm, log_r, lengths),
                 tb_loss(log_pf, log_pterm, log_r, lengths, log_z=torch.zeros(5, dtype=torch.float64))):
        assert math.isfinite(loss.item())
        gpf, gterm = torch.autograd.grad(loss, [log_pf, log_pterm])
        assert torch.isfinite(gpf).all() and torch.isfinite(gterm).all() and gpf.abs().sum() > 0


def test_minus_inf_is_floored_at_min_log_reward():
    log_pf, log_pterm, log_r, lengths = random_batch()
    log_r[:, 0] = float("-inf")
    floored = log_r.clone()
    floored[:, 0] = -42.0
    got = subtb_loss(log_pf, log_pterm, log_r, lengths, min_log_reward=-42.0)
    assert float(got) == pytest.approx(brute_force_subtb(log_pf, log_pterm, floored, lengths, 1.0), rel=1e-10)


@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_nan_and_plus_inf_rewards_are_rejected(bad):
    log_pf, log_pterm, log_r, lengths = random_batch()
    log_r[1, 1] = bad
    with pytest.raises(ValueError, match=r"subtb_loss.*1 NaN/\+inf.*\(1, 1\)"):
        subtb_loss(log_pf, log_pterm, log_r, lengths)
    with pytest.raises(ValueError, match="tb_loss"):
        tb_loss(log_pf, log_pterm, log_r, lengths, log_z=torch.zeros(5))
    with pytest.raises(ValueError, match="my reward"):
        check_log_reward(log_r, "my reward")


def test_no_valid_pair_and_bad_lengths_raise():
    log_pf, log_pterm, log_r, _ = random_batch()
    with pytest.raises(ValueError, match="no valid sub-trajectory"):
        subtb_loss(log_pf, log_pterm, log_r, torch.zeros(5, dtype=torch.long))
    with pytest.raises(ValueError, match="lengths"):
        subtb_loss(log_pf, log_pterm, log_r, torch.tensor([0, 1, 2, 3, 7]))
    with pytest.raises(ValueError, match="expected"):
        subtb_loss(log_pf, log_pterm[:, :-1], log_r, torch.tensor([0, 1, 2, 3, 4]))


def test_gradients_flow_to_policy_terms_only_and_skip_padding():
    log_pf, log_pterm, log_r, lengths = random_batch()
    log_pf.requires_grad_(True)
    log_pterm.requires_grad_(True)
    subtb_loss(log_pf, log_pterm, log_r, lengths).backward()
    assert log_pf.grad is not None and log_pterm.grad is not None
    assert not log_r.requires_grad and log_r.grad is None
    valid_pf = sequence_mask(lengths, log_pf.shape[1])
    valid_term = sequence_mask(lengths + 1, log_pterm.shape[1]) & (lengths > 0)[:, None]
    assert (log_pf.grad[valid_pf] != 0).all() and (log_pf.grad[~valid_pf] == 0).all()
    assert (log_pterm.grad[valid_term] != 0).all() and (log_pterm.grad[~valid_term] == 0).all()


def test_tb_by_hand():
    log_pf = torch.tensor([[-1.0, -2.0], [-0.5, float("nan")]])
    log_pterm = torch.tensor([[-3.0, -1.0, -0.2], [-1.0, -0.7, float("-inf")]])
    log_r = torch.tensor([[0.0, 0.0, -4.0], [0.0, -2.0, float("nan")]])
    lengths = torch.tensor([2, 1])
    # row 0: 0.5 + (-1 - 2) + (-0.2) - (-4) = 1.3 ; row 1: 0.5 + (-0.5) + (-0.7) - (-2) = 1.3
    got = tb_loss(log_pf, log_pterm, log_r, lengths, log_z=torch.tensor(0.5))
    assert float(got) == pytest.approx(1.3 ** 2, abs=1e-6)
    # per-row log Z: row 0 residual 0.3 + 0.8 = 1.1 ; row 1 residual -0.7 + 0.8 = 0.1
    got = tb_loss(log_pf, log_pterm, log_r, lengths, log_z=torch.tensor([0.3, -0.7]))
    assert float(got) == pytest.approx((1.1 ** 2 + 0.1 ** 2) / 2, abs=1e-6)


def test_reward_temperature_schedule():
    assert reward_temperature(0, 1.1, 0.5, 150) == pytest.approx(1.1)
    assert reward_temperature(75, 1.1, 0.5, 150) == pytest.approx(0.8)
    assert reward_temperature(150, 1.1, 0.5, 150) == pytest.approx(0.5)
    assert reward_temperature(999, 1.1, 0.5, 150) == pytest.approx(0.5)
    assert reward_temperature(3, 1.0, 0.7, 0) == pytest.approx(0.7)


def test_finite_rewards_below_the_floor_are_kept():
    """Only -inf is floored: a finite log reward of -150 must keep its distance from one of -120."""
    from gfnbench.losses import floor_log_reward

    x = torch.tensor([[-150.0, -120.0, float("-inf"), 0.0]])
    assert floor_log_reward(x, -99.0).tolist() == [[-150.0, -120.0, -99.0, 0.0]]
