"""`Trajectories`: one batch of sampled continuations, shared by sampler, rewards, losses, buffer and metrics.

A trajectory is a prompt followed by a *state* sequence: the tokens the policy chose (actions) interleaved with
tokens a tool inserted (not actions). State s_j is everything up to, not including, action j+1, so the tool's
answer to action j belongs to s_j. Stopping is an action too, but it adds no token to the state.
"""
from __future__ import annotations

from dataclasses import dataclass, field, replace

import torch
from torch import Tensor


def left_pad(seqs: list[list[int]], pad_id: int, device: torch.device | str = "cpu") -> tuple[Tensor, Tensor]:
    """(ids, mask) [N, width], built on the CPU row by row and moved to `device` once."""
    width = max((len(s) for s in seqs), default=0)
    ids = torch.full((len(seqs), width), pad_id, dtype=torch.long, device="cpu")
    mask = torch.zeros((len(seqs), width), dtype=torch.long, device="cpu")
    for i, s in enumerate(seqs):
        if s:
            ids[i, width - len(s):] = torch.tensor(s, device="cpu")
            mask[i, width - len(s):] = 1
    return ids.to(device), mask.to(device)


def right_pad(seqs: list[list], pad, dtype=torch.long, device: torch.device | str = "cpu") -> Tensor:
    width = max((len(s) for s in seqs), default=0)
    out = torch.full((len(seqs), width), pad, dtype=dtype, device="cpu")
    for i, s in enumerate(seqs):
        if len(s):
            out[i, : len(s)] = torch.tensor(s, dtype=dtype, device="cpu")
    return out.to(device)


@dataclass(frozen=True)
class Trajectories:
    """B sampled continuations. Shapes: P prompt width, S state width, L max number of (non-stop) actions.

    Frozen and shape-checked when built: a batch with rewards is a new batch (`with_log_reward`), so no code can
    hand on a batch whose rewards belong to other rows or were never set."""

    prompts: list[str]        # [B] policy prompt text of each row
    group: Tensor             # [B] index of the example (question) each row belongs to
    prompt_ids: Tensor        # [B, P] left-padded
    prompt_mask: Tensor       # [B, P]
    state_ids: Tensor         # [B, S] right-padded: actions and tool-inserted tokens
    state_mask: Tensor        # [B, S]
    is_action: Tensor         # [B, S] bool: False for tool-inserted tokens
    lengths: Tensor           # [B] n = number of non-stop actions
    stopped: Tensor           # [B] bool: took the stop action (False: forced stop at max length)
    log_pf: Tensor            # [B, L] log q(a_t | s_{t-1}) of the t-th action, sampling-time values
    log_pterm: Tensor         # [B, L+1] log q(stop | s_j); 0 at s_n when the stop was forced
    texts: list[str]          # [B] decoded state text
    log_reward: Tensor | None = None   # [B, L+1] untempered log R(s_j stop), from the task (`with_log_reward`)
    extras: dict = field(default_factory=dict)

    def __post_init__(self):
        problems = shape_problems(self)
        if problems:
            raise ValueError(f"Trajectories: {'; '.join(problems)}")

    def with_log_reward(self, log_reward: Tensor) -> Trajectories:
        """The same batch with its rewards: [B, L+1], the log reward of stopping at every prefix state."""
        return replace(self, log_reward=log_reward)

    def __len__(self) -> int:
        return len(self.texts)

    @property
    def device(self) -> torch.device:
        return self.state_ids.device

    def to(self, device: torch.device | str) -> Trajectories:
        """The same batch with every tensor on `device` (extras too)."""
        move = lambda x: x.to(device) if isinstance(x, Tensor) else x  # noqa: E731
        fields = ("group", "prompt_ids", "prompt_mask", "state_ids", "state_mask", "is_action", "lengths",
                  "stopped", "log_pf", "log_pterm", "log_reward")
        return replace(self, **{f: move(getattr(self, f)) for f in fields},
                       extras={k: move(v) for k, v in self.extras.items()})

    @property
    def max_actions(self) -> int:
        return self.log_pf.shape[1]

    def action_positions(self) -> Tensor:
        """[B, L] index into the state sequence of the t-th action (S where there is none)."""
        B, S = self.is_action.shape
        dev = self.device
        order = torch.where(self.is_action, torch.arange(S, device=dev).expand(B, S),
                            torch.full((B, S), S, device=dev))
        pos = order.sort(dim=1).values[:, : self.max_actions]
        if pos.shape[1] < self.max_actions:
            pos = torch.cat([pos, torch.full((B, self.max_actions - pos.shape[1]), S, device=dev)], dim=1)
        return pos

    def state_ends(self) -> Tensor:
        """[B, L+1] number of state tokens in s_j: the position of action j+1, or the full length for s_n."""
        pos = self.action_positions()
        total = self.state_mask.sum(dim=1, keepdim=True)
        ends = torch.cat([pos, total], dim=1)
        j = torch.arange(self.max_actions + 1, device=self.device).expand_as(ends)
        return torch.where(j < self.lengths[:, None], ends, total)

    def action_mask(self) -> Tensor:
        """[B, L] True for real (non-stop) actions."""
        return torch.arange(self.max_actions, device=self.device)[None, :] < self.lengths[:, None]

    def select(self, index: Tensor | list[int]) -> Trajectories:
        index = torch.as_tensor(index, dtype=torch.long, device=self.device)
        pick = lambda xs: [xs[i] for i in index.tolist()]  # noqa: E731
        return replace(
            self,
            prompts=pick(self.prompts), group=self.group[index], prompt_ids=self.prompt_ids[index],
            prompt_mask=self.prompt_mask[index], state_ids=self.state_ids[index],
            state_mask=self.state_mask[index], is_action=self.is_action[index], lengths=self.lengths[index],
            stopped=self.stopped[index], log_pf=self.log_pf[index], log_pterm=self.log_pterm[index],
            texts=pick(self.texts),
            log_reward=None if self.log_reward is None else self.log_reward[index],
        )

    def with_prompts(self, prompts: list[str], tokenizer) -> Trajectories:
        """The same state sequences after other prompts: e.g. to score every method under one plain prompt."""
        ids = [tokenizer(p, add_special_tokens=False)["input_ids"] for p in prompts]
        prompt_ids, prompt_mask = left_pad(ids, tokenizer.pad_token_id, self.device)
        return replace(self, prompts=list(prompts), prompt_ids=prompt_ids, prompt_mask=prompt_mask)


def shape_problems(traj: Trajectories) -> list[str]:
    """What disagrees with the shapes the fields document (empty: a consistent batch)."""
    B, P, S, L = len(traj.texts), traj.prompt_ids.shape[-1], traj.state_ids.shape[-1], traj.log_pf.shape[-1]
    rows, prompt, state, steps = ("[B]", (B,)), ("[B, P]", (B, P)), ("[B, S]", (B, S)), ("[B, L+1]", (B, L + 1))
    expected = {"group": rows, "prompt_ids": prompt, "prompt_mask": prompt, "state_ids": state, "state_mask": state,
                "is_action": state, "lengths": rows, "stopped": rows, "log_pf": ("[B, L]", (B, L)),
                "log_pterm": steps, **({"log_reward": steps} if traj.log_reward is not None else {})}
    problems = [f"{name} must be {letters} = {list(shape)}, got {list(getattr(traj, name).shape)}"
                for name, (letters, shape) in expected.items() if tuple(getattr(traj, name).shape) != shape]
    if len(traj.prompts) != B:
        problems.append(f"{len(traj.prompts)} prompts for {B} rows")
    return problems


def from_rows(prompts: list[str], group: list[int], prompt_ids: list[list[int]], states: list[list[int]],
              is_action: list[list[bool]], stopped: list[bool], log_pf: list[list[float]],
              log_pterm: list[list[float]], texts: list[str], pad_id: int,
              device: torch.device | str = "cpu") -> Trajectories:
    """Assemble per-row Python lists (as a sampler or a replay buffer holds them) into padded tensors on
    `device` (the model's: everything downstream computes where the batch is)."""
    pid, pmask = left_pad(prompt_ids, pad_id)
    lengths = torch.tensor([len(x) for x in log_pf], dtype=torch.long, device="cpu")
    L = int(lengths.max()) if len(lengths) else 0
    return Trajectories(
        prompts=list(prompts), group=torch.tensor(group, dtype=torch.long, device="cpu"), prompt_ids=pid,
        prompt_mask=pmask, state_ids=right_pad(states, pad_id), state_mask=right_pad([[1] * len(s) for s in states], 0),
        is_action=right_pad(is_action, False, torch.bool), lengths=lengths,
        stopped=torch.tensor(stopped, dtype=torch.bool, device="cpu"),
        log_pf=_pad_to(right_pad(log_pf, 0.0, torch.float32), L),
        log_pterm=_pad_to(right_pad(log_pterm, 0.0, torch.float32), L + 1),
        texts=list(texts),
    ).to(device)


def _pad_to(x: Tensor, width: int) -> Tensor:
    if x.shape[1] >= width:
        return x[:, :width]
    return torch.cat([x, x.new_zeros(x.shape[0], width - x.shape[1])], dim=1)


def make_trajectories(*, prompt_ids: list[list[int]], states: list[list[int]], pad_id: int,
                      is_action: list[list[bool]] | None = None, stopped: list[bool] | None = None,
                      prompts: list[str] | None = None, group: list[int] | None = None,
                      texts: list[str] | None = None, log_pf: list[list[float]] | None = None,
                      log_pterm: list[list[float]] | None = None, log_reward: Tensor | None = None) -> Trajectories:
    """A batch built by keyword, for tests and custom methods; every row's lists are checked against each other.

    Defaults: every state token is an action, every row stopped by choice, one group per row, empty texts,
    zero log-probs (recomputed by teacher forcing anyway). `log_reward`, when given, must be [B, L+1]."""
    B = len(states)
    is_action = is_action if is_action is not None else [[True] * len(s) for s in states]
    n_actions = [sum(map(bool, a)) for a in is_action]
    log_pf = log_pf if log_pf is not None else [[0.0] * n for n in n_actions]
    log_pterm = log_pterm if log_pterm is not None else [[0.0] * (n + 1) for n in n_actions]
    columns = {"prompt_ids": prompt_ids, "is_action": is_action, "stopped": stopped, "prompts": prompts,
               "group": group, "texts": texts, "log_pf": log_pf, "log_pterm": log_pterm}
    for name, column in columns.items():
        if column is not None and len(column) != B:
            raise ValueError(f"make_trajectories: {name} has {len(column)} rows, states has {B}")
    for b in range(B):
        if len(is_action[b]) != len(states[b]):
            raise ValueError(f"make_trajectories: row {b} has {len(states[b])} state tokens but "
                             f"{len(is_action[b])} is_action flags")
        if len(log_pf[b]) != n_actions[b] or len(log_pterm[b]) != n_actions[b] + 1:
            raise ValueError(f"make_trajectories: row {b} has {n_actions[b]} actions, so log_pf needs "
                             f"{n_actions[b]} and log_pterm {n_actions[b] + 1} entries")
    traj = from_rows(prompts or [""] * B, group if group is not None else list(range(B)), prompt_ids, states,
                     is_action, stopped if stopped is not None else [True] * B, log_pf, log_pterm,
                     texts or [""] * B, pad_id)
    return traj if log_reward is None else traj.with_log_reward(log_reward)
