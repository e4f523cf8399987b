"""Exact metrics enumerate only a network a method declared it samples from; otherwise they are n/a, with why."""
from __future__ import annotations

import pytest

from gfnbench.baselines.grpo import GRPOMethod
from gfnbench.catalog import get_method
from gfnbench.evaluation import exact_metrics, exact_metrics_na
from gfnbench.methods import Method, RunContext, declared_exact_sampler
from gfnbench.models import build_tiny
from gfnbench.policy import sample_policy
from gfnbench.profiles import PROFILES
from gfnbench.tasks import get_task

CTX = RunContext(seed=0, profile=PROFILES["smoke"])


class Undeclared(Method):
    """A new method that samples the base model but says nothing about it."""

    def sample(self, examples, n, generator):
        return sample_policy(self.task, self.lm.model, self.lm, examples, n, generator)


class PickyGRPO(GRPOMethod):
    """A trained row's subclass that replaces `sample` (as a best-of-n built on examples/reinforce.py would)."""

    def sample(self, examples, n, generator):
        return super().sample(examples, 2 * n, generator).select(list(range(0, 2 * n * len(examples), 2)))


@pytest.fixture(scope="module")
def rng_and_lm():
    return get_task("rng"), build_tiny("llama")


def test_a_new_method_gets_no_exact_metrics_but_a_reason(rng_and_lm):
    task, lm = rng_and_lm
    method = Undeclared(task, lm, CTX)
    assert exact_metrics(method, task, task.examples("test")) == {}
    names = set(task.exact_metrics(lm.model, lm.tokenizer, task.prompt(task.examples("test")[0]), 1.0))
    na = exact_metrics_na(method, task)
    assert set(na) == names and {"tv_exact", "valid_exact", "js_exact"} <= names
    assert all("does not declare" in reason for reason in na.values())


def test_overriding_sample_below_a_declaration_undeclares_it(rng_and_lm):
    task, lm = rng_and_lm
    declared, reason = declared_exact_sampler(PickyGRPO(task, lm, CTX))
    assert declared is None and "PickyGRPO overrides sample() below PolicyMethod" in reason
    assert declared_exact_sampler(GRPOMethod(task, build_tiny("llama"), CTX))[0] is not None


def test_builtin_samplers_declare_and_keep_their_numbers(rng_and_lm):
    task, lm = rng_and_lm
    temperature = get_method("temperature").factory(task, lm, CTX)
    declared, _ = declared_exact_sampler(temperature)
    assert declared.network is lm.model and declared.temperature == 1.0
    prompt = temperature.prompt_for(task.examples("test")[0])
    assert exact_metrics(temperature, task, task.examples("test")) == \
        pytest.approx(task.exact_metrics(lm.model, lm.tokenizer, prompt, 1.0))
    assert exact_metrics_na(temperature, task) == {}
    gflownet = get_method("gflownet").factory(task, build_tiny("llama"), CTX)
    declared, _ = declared_exact_sampler(gflownet)
    assert declared.network is gflownet.policy and declared.temperature == task.eval_temperature


@pytest.mark.parametrize("method, words", [("greedy", "argmax"), ("nucleus", "top-p"), ("beam", "most likely")])
def test_decoding_rows_that_are_not_ancestral_say_why(rng_and_lm, method, words):
    task, lm = rng_and_lm
    declared, reason = declared_exact_sampler(get_method(method).factory(task, lm, CTX))
    assert declared is None and words in reason
