"""Objectives of the GRPO, FlowRL and VarGrad-TB rows as small pure tensor functions (no model, no task).

Shapes, for a batch of B trajectories with at most L non-stop actions:
  log_pf     [B, L]    teacher-forced log q(a_t | s_{t-1}) (sampling.policy_log_probs)
  log_pterm  [B, L+1]  log q(stop | s_j)
  lengths    [B]       n, the number of non-stop actions
  stopped    [B]       True when the policy chose the stop (False: a forced stop at max_len, which is no action)
  group      [B]       index of the prompt a row was sampled for (GRPO's and FlowRL's groups, VarGrad's K samples)
Per-action tensors are [B, L+1]: slots 0..n-1 are the tokens, slot n the stop when it was chosen. Entries outside
a row's actions are selected away with torch.where, never multiplied in, so padding cannot leak NaN.
"""
from __future__ import annotations

import torch
from torch import Tensor

from gfnbench.losses import floor_log_reward, sequence_mask


def action_slots(lengths: Tensor, stopped: Tensor, width: int) -> Tensor:
    """[B, width] True at the actions a row took: its n tokens, then the stop when it chose one."""
    return sequence_mask(lengths + stopped.long(), width)


def sampler_action_log_probs(log_pf: Tensor, log_pterm: Tensor, lengths: Tensor, stopped: Tensor,
                             min_len: int) -> Tensor:
    """[B, L+1] log-prob of every action under the distribution that sampled it, 0 outside the actions.

    Why the renormalisation: the sampler blocks the stop before `min_len` actions, so a token taken at s_t with
    t < min_len had probability q(a | s_t) / (1 - q(stop | s_t)); teacher forcing returns the unblocked
    q(a | s_t). Importance ratios and sequence log-probs must be those of the sampler (rng: min_len 1)."""
    B, L = log_pf.shape
    blocked = torch.arange(L, device=log_pf.device)[None, :] < min(min_len, L)
    safe_pterm = torch.where(blocked, log_pterm[:, :L], torch.full_like(log_pf, float("-inf")))
    tokens = log_pf - torch.log1p(-safe_pterm.exp())                      # log1p(-0) = 0 where not blocked
    stop = log_pterm.gather(1, lengths[:, None].long())                    # [B, 1] q(stop | s_n)
    logp = torch.cat([tokens, log_pf.new_zeros(B, 1)], dim=1)
    at_stop = torch.arange(L + 1, device=log_pf.device)[None, :] == lengths[:, None]
    logp = torch.where(at_stop, stop.expand(-1, L + 1), logp)
    return torch.where(action_slots(lengths, stopped, L + 1), logp, torch.zeros_like(logp))


def sequence_log_prob(action_logp: Tensor, slots: Tensor) -> Tensor:
    """[B] log pi(y | x): the sum of a row's action log-probs."""
    return torch.where(slots, action_logp, torch.zeros_like(action_logp)).sum(dim=1)


def terminal_log_reward(log_reward: Tensor, lengths: Tensor, min_log_reward: float = -99.0) -> Tensor:
    """[B] log R(s_n stop) of each complete sample, -inf (zero reward) floored at `min_log_reward`."""
    return floor_log_reward(log_reward.gather(1, lengths[:, None].long()).squeeze(1), min_log_reward)


def group_mean(x: Tensor, group: Tensor) -> Tensor:
    """[B] the mean of x over each row's group (rows sharing a prompt)."""
    same = (group[:, None] == group[None, :]).to(x.dtype)
    return (same * x[None, :]).sum(1) / same.sum(1)


def group_advantages(rewards: Tensor, group: Tensor, scale_by_std: bool = True, eps: float = 1e-4) -> Tensor:
    """[B] GRPO's advantage (Shao et al. 2024): the reward minus its group's mean, divided by the group's
    standard deviation (Bessel-corrected, as DeepSeekMath and TRL) when `scale_by_std`; Dr. GRPO (Liu et al.
    2025) drops the division, which up-weights groups whose rewards barely differ. A group of identical rewards
    (or of one row) gets advantage 0 either way: nothing in it to prefer."""
    centred = rewards - group_mean(rewards, group)
    if not scale_by_std:
        return centred
    same = (group[:, None] == group[None, :]).to(rewards.dtype)
    var = (same * centred[None, :] ** 2).sum(1) / (same.sum(1) - 1).clamp(min=1)
    return centred / (var.sqrt() + eps)


def k3_kl(logp: Tensor, ref_logp: Tensor) -> Tensor:
    """Per-action KL(pi || pi_ref) estimate exp(ref - logp) - (ref - logp) - 1 (Schulman's k3, GRPO's): unbiased
    on samples of pi, never negative, zero exactly where the two agree."""
    d = ref_logp - logp
    return d.exp() - d - 1


def clipped_surrogate(logp: Tensor, old_logp: Tensor, advantages: Tensor, clip: float) -> Tensor:
    """[B, T] PPO's clipped per-action loss -min(rho A, clip(rho, 1 - eps, 1 + eps) A), rho = pi / pi_old, with
    one advantage per row ([B]) shared by all its actions (GRPO has no value head)."""
    ratio = (logp - old_logp).exp()
    adv = advantages[:, None]
    return torch.max(-adv * ratio, -adv * ratio.clamp(1 - clip, 1 + clip))


def reduce_actions(per_action: Tensor, slots: Tensor, per_sequence_length: bool, constant_length: int) -> Tensor:
    """Scalar loss from [B, T] per-action terms. GRPO: each row's mean over its own actions, then the mean over
    rows (a long sample's actions count less each). Dr. GRPO: each row's sum divided by one constant (the
    longest possible sample), so no length is favoured by the normalisation itself."""
    total = torch.where(slots, per_action, torch.zeros_like(per_action)).sum(1)
    if per_sequence_length:
        return (total / slots.sum(1).clamp(min=1)).mean()
    return (total / max(constant_length, 1)).mean()


def grpo_loss(logp: Tensor, old_logp: Tensor, ref_logp: Tensor | None, advantages: Tensor, slots: Tensor,
              clip: float, kl_coef: float, per_sequence_length: bool = True, constant_length: int = 1) -> Tensor:
    """GRPO's objective (to minimise): clipped surrogate + kl_coef * k3 KL to the reference, reduced per row."""
    per_action = clipped_surrogate(logp, old_logp, advantages, clip)
    if ref_logp is not None and kl_coef:
        per_action = per_action + kl_coef * k3_kl(logp, ref_logp)
    return reduce_actions(per_action, slots, per_sequence_length, constant_length)


def clipped_importance_weight(log_prob: Tensor, old_log_prob: Tensor, n_actions: Tensor, clip: float) -> Tensor:
    """[B] FlowRL's detached weight w = clip((pi / pi_old)^(1/|y|), 1 - eps, 1 + eps): the per-action geometric
    mean ratio (the length-normalised scale the residual lives on), so one long sample cannot carry the batch."""
    log_w = (log_prob - old_log_prob) / n_actions.clamp(min=1)
    return log_w.exp().clamp(1 - clip, 1 + clip).detach()


def flowrl_residual(log_z: Tensor, log_prob: Tensor, ref_log_prob: Tensor | None, n_actions: Tensor,
                    reward_hat: Tensor, beta: float) -> Tensor:
    """[B] log Z(x) + log pi(y|x) / |y| - beta r_hat(x, y) - log pi_ref(y|x) / |y| (Zhu et al., FlowRL, Eq. 7);
    without a reference the last term is dropped (a uniform prior)."""
    length = n_actions.clamp(min=1).to(log_prob.dtype)
    residual = log_z + log_prob / length - beta * reward_hat
    if ref_log_prob is not None:
        residual = residual - ref_log_prob / length
    return residual


def weighted_mean(values: Tensor, weight: Tensor | None = None) -> Tensor:
    return values.mean() if weight is None else (weight * values).mean()


def vargrad_log_z(log_reward: Tensor, log_prob: Tensor, ref_log_prob: Tensor | None, group: Tensor) -> Tensor:
    """[B] VarGrad's log Z estimate (Richter et al. 2020; TBA, Bartoldson et al. 2025), detached: the group mean of
    log R - log pi (+ log pi_ref), the value of log Z that zeroes the group's mean TB residual."""
    target = log_reward - log_prob
    if ref_log_prob is not None:
        target = target + ref_log_prob
    return group_mean(target, group).detach()


def vargrad_residual(log_reward: Tensor, log_prob: Tensor, ref_log_prob: Tensor | None, group: Tensor) -> Tensor:
    """[B] TB residual log Z_est + log pi - log R (- log pi_ref) with the VarGrad estimate: its square's gradient
    is that of the group variance of log pi - log R, zero iff pi ∝ R (x pi_ref) on the sampled support."""
    residual = vargrad_log_z(log_reward, log_prob, ref_log_prob, group) + log_prob - log_reward
    if ref_log_prob is not None:
        residual = residual - ref_log_prob
    return residual


def replay_probabilities(log_reward: Tensor, age: Tensor, recent: int, reward_share: float) -> Tensor:
    """[N] how a replay draw picks among N stored samples of one prompt (TBA's replay favours recent and
    high-reward samples): with probability `reward_share` by softmax(log R), else uniformly among the `recent`
    youngest (age = optimizer steps since it was sampled; ties broken towards the front)."""
    n = log_reward.shape[0]
    young = torch.zeros(n, dtype=torch.float64, device=log_reward.device)
    young[age.argsort(stable=True)[: max(1, min(recent, n))]] = 1.0
    if bool(torch.isfinite(log_reward).any()):
        by_reward = torch.softmax(log_reward.double(), 0)
    else:
        by_reward = torch.full((n,), 1.0 / n, dtype=torch.float64, device=log_reward.device)
    return reward_share * by_reward + (1 - reward_share) * young / young.sum()
