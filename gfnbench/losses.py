"""GFlowNet losses as small pure functions over per-step tensors (docs/paper.md#modified-subtb-loss).

Shapes, for a batch of B trajectories padded to L non-stop actions:
  log_pf     [B, L]    log q(a_t | s_{t-1}) of the t-th non-stop action, t = 1..L at index t-1
  log_pterm  [B, L+1]  log q(stop | s_j) for states j = 0..L (s_0 = the prompt)
  log_reward [B, L+1]  log R(s_j stop), already tempered by the caller; -inf marks impossible states
  lengths    [B]       n = number of non-stop actions, so the valid states are j = 0..n
Entries past a trajectory's length are arbitrary: they are selected away with torch.where (never multiplied
by a mask), so -inf / NaN padding cannot leak NaN into the loss or its gradients.
"""
from __future__ import annotations

import torch
from torch import Tensor


def sequence_mask(lengths: Tensor, size: int) -> Tensor:
    """[B, size] bool, True at positions < length: one place for the 'valid step' convention."""
    return torch.arange(size, device=lengths.device)[None, :] < lengths[:, None]


def check_log_reward(log_reward: Tensor, where: str, lengths: Tensor | None = None) -> None:
    """NaN or +inf rewards are bugs in a reward function, so fail loudly; -inf (impossible state) is allowed.

    With `lengths`, only the valid states j <= n are checked (padding may hold anything).
    """
    bad = torch.isnan(log_reward) | torch.isposinf(log_reward)
    if lengths is not None:
        bad = bad & sequence_mask(lengths + 1, log_reward.shape[-1])
    if bad.any():
        where_bad = bad.nonzero().tolist()
        shown = ", ".join(str(tuple(p)) for p in where_bad[:5]) + (" ..." if len(where_bad) > 5 else "")
        raise ValueError(f"{where}: log reward has {len(where_bad)} NaN/+inf entries at (row, state) {shown}; "
                         f"a log reward must be finite or -inf")


def floor_log_reward(log_reward: Tensor, min_log_reward: float = -99.0) -> Tensor:
    """-inf (an impossible or invalid state) becomes the paper's floor (-99), so such states give large but finite
    residuals. Finite rewards stay as they are, however low: clamping them too would erase the differences
    between poor samples (an arithmetic rationale easily scores below -99 once tempered)."""
    return torch.where(torch.isneginf(log_reward), torch.full_like(log_reward, min_log_reward), log_reward)


def _check_shapes(log_pf: Tensor, log_pterm: Tensor, log_reward: Tensor, lengths: Tensor, where: str) -> None:
    """Off-by-one shape mistakes would silently misalign states and actions, so reject them."""
    B, L = log_pf.shape
    if log_pterm.shape != (B, L + 1) or log_reward.shape != (B, L + 1) or lengths.shape != (B,):
        raise ValueError(f"{where}: expected log_pf [B, L], log_pterm/log_reward [B, L+1], lengths [B]; got "
                         f"{tuple(log_pf.shape)}, {tuple(log_pterm.shape)}, {tuple(log_reward.shape)}, "
                         f"{tuple(lengths.shape)}")
    if B and (lengths.min() < 0 or lengths.max() > L):
        raise ValueError(f"{where}: lengths must lie in [0, {L}], got {lengths.tolist()}")


def subtb_pairs(log_pf: Tensor, log_pterm: Tensor, log_reward: Tensor, lengths: Tensor, lam: float = 1.0,
                min_log_reward: float = -99.0, min_len: int = 0,
                log_root_flow: Tensor | None = None) -> tuple[Tensor, Tensor]:
    """Residuals and weights of every sub-trajectory (i, j) of modified SubTB, [B, L+1, L+1] each (weight 0 for
    pairs that do not count); `subtb_loss` reduces them, diagnostics split them into families.

    residual(i, j) = logR_i + sum_{k=i+1..j} log_pf_k + log_pterm_j - logR_j - log_pterm_i = C_j - C_i, where C
    are prefix sums of the per-step deltas delta_t = logR_t + log_pf_{t+1} + log_pterm_{t+1} - logR_{t+1}
    - log_pterm_t. All pairs come from one [B, L+1, L+1] difference matrix (fine for the short L used here).

    States the sampler cannot stop in (j < min_len) have no flow given by R/q(stop); they are skipped as pair
    ends, and when `log_root_flow` (a learned log F(s_0) = log Z, [B]) is given, the root uses it in place of
    logR_0 - log_pterm_0. Without this, the paper's -99 floor at the root asks q(stop | prompt) for e^-99,
    and those huge residuals swamp the loss (measured: a tiny model made no progress in 100 steps).
    """
    _check_shapes(log_pf, log_pterm, log_reward, lengths, "subtb_loss")
    check_log_reward(log_reward, "subtb_loss", lengths)
    B, L = log_pf.shape
    log_r = floor_log_reward(log_reward, min_log_reward)
    if log_root_flow is not None:
        log_r = torch.cat([(log_root_flow + log_pterm[:, 0])[:, None], log_r[:, 1:]], dim=1)
    delta = log_r[:, :-1] + log_pf + log_pterm[:, 1:] - log_r[:, 1:] - log_pterm[:, :-1]    # [B, L]
    delta = torch.where(sequence_mask(lengths, L), delta, torch.zeros_like(delta))
    cum = torch.cat([delta.new_zeros(B, 1), delta.cumsum(dim=1)], dim=1)                   # C_0..C_L
    residual = cum[:, None, :] - cum[:, :, None]                                           # [B, i, j]

    idx = torch.arange(L + 1, device=log_pf.device)
    span = idx[None, :] - idx[:, None]                                                     # j - i
    pair = (span > 0)[None] & (idx[None, None, :] <= lengths[:, None, None])               # i < j <= n
    if min_len > 0:
        start_ok = (idx == 0) if log_root_flow is not None else (idx >= min_len)
        start_ok = start_ok | (idx >= min_len)
        pair = pair & start_ok[None, :, None] & (idx >= min_len)[None, None, :]
    if not bool(pair.any()):
        raise ValueError("subtb_loss: no valid sub-trajectory in the batch (every trajectory has length 0)")
    lam_pow = torch.full(span.shape, float(lam), dtype=delta.dtype, device=delta.device) ** (span - 1).clamp(min=0)
    weight = torch.where(pair, lam_pow, torch.zeros_like(lam_pow))                          # [B, i, j]
    return torch.where(pair, residual, torch.zeros_like(residual)), weight


def balance_penalty(residual: Tensor, huber_delta: float | None = None) -> Tensor:
    """The penalty on a balance residual: r^2 (the paper), or r^2 within +-delta and delta (2|r| - delta) beyond.

    Both are zero exactly at balance, so the optimum (the target distribution) is the same; the Huber form only
    bounds each residual's gradient at 2 delta. Why: a zero-reward state floored at -99 gives residuals near 99
    for as long as the policy can reach it, and with r^2 their gradients (~200x an O(1) residual's) fill Adam's
    second-moment estimate, which then shrinks every later step on the O(1) residuals that decide the shape of
    the distribution, for ~1/(1 - beta2) = 1000 steps after the spikes are gone."""
    if huber_delta is None:
        return residual ** 2
    a = residual.abs()
    return torch.where(a <= huber_delta, residual ** 2, huber_delta * (2 * a - huber_delta))


def subtb_loss(log_pf: Tensor, log_pterm: Tensor, log_reward: Tensor, lengths: Tensor, lam: float = 1.0,
               min_log_reward: float = -99.0, min_len: int = 0, log_root_flow: Tensor | None = None,
               huber_delta: float | None = None) -> Tensor:
    """Modified sub-trajectory balance (paper Eq. 3): lam^(j-i-1)-weighted mean of squared residuals over all
    pairs 0 <= i < j <= n of every trajectory, normalised by the batch's total weight (as the official code).
    See `subtb_pairs` for the residuals and `balance_penalty` for `huber_delta`."""
    terms, weight = subtb_terms(log_pf, log_pterm, log_reward, lengths, lam, min_log_reward, min_len, log_root_flow,
                                huber_delta)
    return terms.sum() / weight.sum()


def subtb_terms(log_pf: Tensor, log_pterm: Tensor, log_reward: Tensor, lengths: Tensor, lam: float = 1.0,
                min_log_reward: float = -99.0, min_len: int = 0, log_root_flow: Tensor | None = None,
                huber_delta: float | None = None) -> tuple[Tensor, Tensor]:
    """([B, L+1, L+1] weighted penalty of every pair, [B, L+1, L+1] weights): `subtb_loss` before its reduction,
    for callers that also report how the loss splits over pairs."""
    residual, weight = subtb_pairs(log_pf, log_pterm, log_reward, lengths, lam, min_log_reward, min_len,
                                   log_root_flow)
    return weight * balance_penalty(residual, huber_delta), weight


def tb_loss(log_pf: Tensor, log_pterm: Tensor, log_reward: Tensor, lengths: Tensor, log_z: Tensor | float,
            min_log_reward: float = -99.0, huber_delta: float | None = None) -> Tensor:
    """Trajectory balance with a learned log Z (scalar or [B]): mean over the batch of
    (log Z + sum_{k<=n} log_pf_k + log_pterm_n - logR_n)^2. Only the complete trajectory is balanced."""
    _check_shapes(log_pf, log_pterm, log_reward, lengths, "tb_loss")
    check_log_reward(log_reward, "tb_loss", lengths)
    L = log_pf.shape[1]
    total_pf = torch.where(sequence_mask(lengths, L), log_pf, torch.zeros_like(log_pf)).sum(dim=1)
    end = lengths.long()[:, None]
    final_pterm = log_pterm.gather(1, end).squeeze(1)
    final_r = floor_log_reward(log_reward.gather(1, end).squeeze(1), min_log_reward)
    residual = log_z + total_pf + final_pterm - final_r
    return balance_penalty(residual, huber_delta).mean()


def reward_temperature(step: int, t_start: float, t_end: float, horizon: int) -> float:
    """Linear annealing from t_start to t_end over `horizon` optimizer steps, constant afterwards
    (horizon <= 0 means t_end from the start)."""
    if horizon <= 0 or step >= horizon:
        return float(t_end)
    return float(t_start + (t_end - t_start) * max(step, 0) / horizon)
