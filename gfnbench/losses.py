"""GFlowNet losses as small functions over per-step tensors (reference-paper.md §1.4).

Shapes: log_pf [B, L] (t-th non-stop action), log_pterm [B, L+1] and log_reward [B, L+1] (state j = 0..L),
lengths [B] (n, the number of non-stop actions; valid states 0..n). Rewards arrive already tempered.
"""
from __future__ import annotations

import torch
from torch import Tensor


def check_log_reward(log_reward: Tensor, where: str) -> None:
    """NaN or +inf rewards are bugs in a reward function; -inf (impossible state) is allowed."""
    bad = torch.isnan(log_reward) | (log_reward == float("inf"))
    if bad.any():
        first = bad.nonzero()[0].tolist()
        raise ValueError(f"{where}: reward has {int(bad.sum())} NaN/+inf entries (first at row {first[0]}, "
                         f"state {first[1]}); a log reward must be finite or -inf")


def floor_log_reward(log_reward: Tensor, min_log_reward: float) -> Tensor:
    """-inf becomes the paper's floor (-99), so impossible states give large but finite residuals."""
    return log_reward.clamp(min=min_log_reward)


def subtb_loss(log_pf: Tensor, log_pterm: Tensor, log_reward: Tensor, lengths: Tensor, lam: float = 1.0,
               min_log_reward: float = -99.0) -> Tensor:
    """Modified sub-trajectory balance (paper Eq. 3), a lam^(j-i-1)-weighted mean over all pairs i < j <= n.

    Residual(i, j) = C_j - C_i with C the prefix sums of per-step deltas
    delta_t = logR_t + log_pf_{t+1} + log_pterm_{t+1} - logR_{t+1} - log_pterm_t: O(L) tensor work per batch.
    """
    check_log_reward(log_reward, "subtb_loss")
    B, L = log_pf.shape
    if L == 0:
        raise ValueError("subtb_loss: no trajectory has a non-stop action")
    log_r = floor_log_reward(log_reward, min_log_reward)
    step_valid = torch.arange(L, device=log_pf.device)[None, :] < lengths[:, None]         # transition t -> t+1
    delta = log_r[:, :-1] + log_pf + log_pterm[:, 1:] - log_r[:, 1:] - log_pterm[:, :-1]
    delta = torch.where(step_valid, delta, torch.zeros_like(delta))
    cum = torch.cat([delta.new_zeros(B, 1), delta.cumsum(dim=1)], dim=1)                  # [B, L+1]
    residual = cum[:, None, :] - cum[:, :, None]                                          # [B, i, j]
    i = torch.arange(L + 1, device=log_pf.device)
    pair = (i[:, None] < i[None, :])[None] & (i[None, None, :] <= lengths[:, None, None])
    weight = torch.where(pair, lam ** (i[None, :] - i[:, None] - 1).clamp(min=0).to(delta.dtype), 0.0)
    if not pair.any():
        raise ValueError("subtb_loss: no valid sub-trajectory (every trajectory stopped at once)")
    sq = torch.where(pair, residual, torch.zeros_like(residual)) ** 2
    return (weight * sq).sum() / weight.sum()


def tb_loss(log_pf: Tensor, log_pterm: Tensor, log_reward: Tensor, lengths: Tensor, log_z: Tensor,
            min_log_reward: float = -99.0) -> Tensor:
    """Trajectory balance with a learned log Z: mean of (log Z + sum log_pf + log_pterm_n - log R_n)^2."""
    check_log_reward(log_reward, "tb_loss")
    L = log_pf.shape[1]
    valid = torch.arange(L, device=log_pf.device)[None, :] < lengths[:, None]
    total_pf = torch.where(valid, log_pf, torch.zeros_like(log_pf)).sum(dim=1)
    end = lengths[:, None]
    final_r = floor_log_reward(log_reward.gather(1, end).squeeze(1), min_log_reward)
    residual = log_z + total_pf + log_pterm.gather(1, end).squeeze(1) - final_r
    return (residual ** 2).mean()


def reward_temperature(step: int, t_start: float, t_end: float, horizon: int) -> float:
    """Linear annealing from t_start to t_end over `horizon` optimizer steps, constant afterwards."""
    if horizon <= 0 or step >= horizon:
        return float(t_end)
    return float(t_start + (t_end - t_start) * step / horizon)
