"""Tensors are made where the model is: with torch's default device pointing elsewhere (`meta`), the sampler,
every task's reward, the teacher-forced passes, losses, buffers and beam search still run on the model's device
and give the same numbers. And no trainer is pinned to the CPU any more."""
from __future__ import annotations

import re
from pathlib import Path

import pytest
import torch

from gfnbench.beam import beam_search
from gfnbench.buffer import BufferItem, ReplayBuffer
from gfnbench.devices import check_compute, rank_seed, seeded_generator
from gfnbench.losses import subtb_terms
from gfnbench.objectives import replay_probabilities
from gfnbench.policy import sample_task
from gfnbench.sampling import policy_log_probs, state_token_log_probs
from gfnbench.tasks import TASKS, get_task

ROOT = Path(__file__).resolve().parents[1]
TASK_NAMES = sorted(n for n in TASKS if n != "infill_tuned")   # infill_tuned: infill's reward on a tuned copy


@torch.no_grad()
def pipeline(task_name: str, lm) -> list[torch.Tensor]:
    """Sample, score every prefix, recompute log-probs, take a SubTB loss, replay: the tensors of one step."""
    task = get_task(task_name)
    ex = task.examples("train")[:2]
    generator = seeded_generator(0)
    traj = sample_task(task, lm.model, lm.tokenizer, [task.prompt(e) for e in ex], 2, task.sampling(train=True),
                       context=lm.context_length, generator=generator)
    traj = traj.with_log_reward(task.log_reward(lm.model, lm.tokenizer, traj, ex))
    log_pf, log_pterm = policy_log_probs(lm.model, traj, task.allowed_tokens(lm.tokenizer), task.stop_id(lm.tokenizer))
    terms, weight = subtb_terms(log_pf, log_pterm, traj.log_reward, traj.lengths, lam=1.0, min_log_reward=-99.0,
                                min_len=task.min_len, log_root_flow=log_pf.new_zeros(len(traj)), huber_delta=1.0)
    buffer = ReplayBuffer(4, 0.0, "reward")
    for b in range(len(traj)):
        buffer.add("k", BufferItem((b,), float(traj.log_reward[b, 0].clamp(min=-99)), b))
    replayed = torch.tensor([i.payload for i in buffer.sample("k", 3, generator)], device="cpu")
    probs = replay_probabilities(traj.log_reward[:, 0].clamp(min=-99), traj.lengths, 2, 0.5)
    return [traj.state_ids, traj.log_reward, log_pf, log_pterm, terms, weight, replayed, probs,
            state_token_log_probs(lm.model, traj)]


@pytest.mark.parametrize("task_name", TASK_NAMES)
def test_no_tensor_is_made_on_the_default_device_instead_of_the_models(task_name, tiny):
    expected = pipeline(task_name, tiny)
    torch.set_default_device("meta")        # an implicit torch.zeros(...) now lands on meta and fails on use
    try:
        got = pipeline(task_name, tiny)
    finally:
        torch.set_default_device(None)
    for want, have in zip(expected, got, strict=True):
        assert have.device.type == "cpu"
        assert torch.equal(want, have)


@pytest.mark.parametrize("fixture", ["tiny", "tiny_gpt2"])
def test_beam_search_makes_its_tensors_on_the_models_device(fixture, request):
    lm = request.getfixturevalue(fixture)
    task = get_task("arith")
    prompts = [task.prompt(e) for e in task.examples("test_3op")[:2]]
    run = lambda: beam_search(lm.model, lm.tokenizer, prompts, 2, task.sampling(train=False), num_beams=2,  # noqa: E731
                              stop_id=task.stop_id(lm.tokenizer), allowed=task.allowed_tokens(lm.tokenizer))
    expected = run()
    torch.set_default_device("meta")
    try:
        got = run()
    finally:
        torch.set_default_device(None)
    assert torch.equal(expected.state_ids, got.state_ids) and got.extras["beam_score"].device.type == "cpu"


def test_a_generator_on_another_device_than_the_model_is_refused(tiny):
    task = get_task("rng")
    with pytest.raises(RuntimeError):
        sample_task(task, tiny.model, tiny.tokenizer, ["x"], 2, task.sampling(train=True), context=None,
                    generator=seeded_generator(0, "meta"))


def test_no_trainer_or_tensor_is_pinned_to_the_cpu_in_the_code():
    pinned = re.compile(r"""accelerator\s*=\s*["']cpu["']""")
    files = [p for d in ("gfnbench", "examples") for p in (ROOT / d).rglob("*.py")]
    assert files and not [str(p) for p in files if pinned.search(p.read_text())]


@pytest.mark.parametrize("settings,message", [
    (("tpu", 1, "auto", "32"), "--accelerator"), (("cpu", 0, "auto", "32"), "--devices"),
    (("cpu", 1, "deepspeed", "32"), "--strategy"), (("cpu", 1, "auto", "16"), "--precision"),
    (("cpu", 2, "auto", "32"), "needs --strategy ddp or fsdp"), (("cpu", 2, "fsdp", "32"), "fsdp needs GPUs"),
])
def test_compute_settings_are_checked_before_any_work(settings, message):
    with pytest.raises(ValueError, match=re.escape(message)):
        check_compute(*settings)


def test_process_seeds_keep_rank_zero_and_differ_elsewhere():
    assert rank_seed(7, 0) == 7
    assert len({rank_seed(7, r) for r in range(4)}) == 4 and rank_seed(7, 1) == rank_seed(7, 1)
