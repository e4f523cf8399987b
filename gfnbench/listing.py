"""What `gfnbench tasks` and `gfnbench methods` print, and the names the CLI checks before any heavy import.

Registering a built-in task or method imports torch and its stack (seconds); listing them, or refusing an
unknown name, must not. So the built-in names and their one-line descriptions are kept here as plain data, and
tests/test_cli.py checks them against the live registries: registering a new built-in task or method means
adding its line here (the test prints what to add).
"""
from __future__ import annotations

import sys

from gfnbench.names import check_name


def method_scope(spec) -> str:
    """Which tasks a registered method (a MethodSpec) applies to, as `gfnbench methods` says it."""
    if spec.applies is not None:
        return str(spec.applies)
    return "tasks that opt in" if spec.opt_in else ", ".join(spec.tasks) if spec.tasks else "all tasks"


# name -> description, as the task class states it
BUILTIN_TASKS = {
    "arith": "multi-operand +/- arithmetic with a two-term calculator; OOD: 5 operands",
    "continuation": "next-sentence continuation, target p(Z . | X)^(1/T): max log-likelihood vs diversity",
    "infill": "story infilling: the 4th sentence given sentences 1-3 and 5, target p(Z Y | X)",
    "infill_tuned": "story infilling with the reward LM first fine-tuned on the training stories (paper §4.2)",
    "rng": "a random integer in [0, 100]: exact TV/KL of the policy to the uniform target",
    "rng_peaked": "a random integer in [0, 100] with target ∝ exp(-|x - 30| / 10): exact TV/KL",
    "rng_eos": "rng with <|im_end|> as the stop action (the rule before issue 26): exact TV/KL",
    "rng_peaked_eos": "rng_peaked with <|im_end|> as the stop action (the rule before issue 26): exact TV/KL",
    "subj": "SUBJ objective/subjective with a 1-5 token latent rationale, 10 labelled examples",
    "subj20": "SUBJ objective/subjective with a 1-5 token latent rationale, 20 labelled examples",
    "subj50": "SUBJ objective/subjective with a 1-5 token latent rationale, 50 labelled examples",
}

# name -> "description [scope]", in registration order (the order of the rows in listings and tables)
BUILTIN_METHODS = {
    "greedy": "argmax decoding of the base model (one sample per prompt) [all tasks]",
    "temperature": "ancestral sampling of the base model at T = 1 [all tasks]",
    "tempered": "ancestral sampling of the base model at the task's final reward temperature (continuation: T = 0.8, "
                "the paper's 'LM tempered') [tasks that opt in]",
    "nucleus": "nucleus (top-p = 0.95) sampling of the base model [all tasks]",
    "beam": "beam search (beams = samples per prompt, length penalty 0), all beams returned [all tasks]",
    "diverse_beam": "diverse beam search (Hamming penalty 1.0, one group per 2 beams) [all tasks]",
    "flowrl": "FlowRL (Zhu et al. 2026): length-normalised TB to pi_ref x exp(beta r_hat), prompt-conditioned log Z, "
              "clipped importance weight [all tasks]",
    "grpo": "GRPO (LoRA, group-standardised terminal log reward, clipped ratio, k3 KL to the base model; Dr. GRPO as "
            "a setting) [all tasks]",
    "gflownet": "GFlowNet fine-tuning (LoRA, modified SubTB, lambda = 1, replay + tempered exploration) [all tasks]",
    "gflownet_tb": "GFlowNet fine-tuning with trajectory balance and a prompt-conditioned log Z [rng, rng_peaked, "
                   "rng_eos, rng_peaked_eos]",
    "gflownet_mstep": "GFlowNet rationales (E-step) read by a classifier fine-tuned on them (M-step) [tasks that opt "
                      "in]",
    "ppo": "PPO (LoRA, value head, adaptive KL penalty to the base model, terminal task log reward) [all tasks]",
    "zero_shot": "zero-shot prompting of the base model (task prompt only) [all tasks]",
    "few_shot": "3-shot prompting of the base model (arith: chain of thought; infill: gold middles; subj: all n "
                "labelled examples, direct classifier) [tasks that opt in]",
    "sft": "supervised fine-tuning (LoRA) on the task's gold targets (arith: rationales incl. tool outputs; rng: "
           "draws from the target; infill: gold middles; early-stopped on val NLL) or, for label tasks (subj), on the"
           " labels as a direct classifier [tasks that opt in]",
    "tb_vargrad": "VarGrad TB with recent/high-reward replay (TBA, Bartoldson et al. 2025): log Z estimated per "
                  "prompt from its samples [all tasks]",
    "sft_gflownet": "gflownet started from the same seed's SFT adapter (init: sft) [tasks where gflownet and "
                    "gold-target sft apply]",
    "sft_ppo": "ppo started from the same seed's SFT adapter (init: sft) [tasks where ppo and gold-target sft apply]",
    "sft_grpo": "grpo started from the same seed's SFT adapter (init: sft) [tasks where grpo and gold-target sft "
                "apply]",
    "sft_flowrl": "flowrl started from the same seed's SFT adapter (init: sft) [tasks where flowrl and gold-target "
                  "sft apply]",
    "sft_tb_vargrad": "tb_vargrad started from the same seed's SFT adapter (init: sft) [tasks where tb_vargrad and "
                      "gold-target sft apply]",
}


# --------------------------------------------------------------------------- names checked before any heavy import

def _registered(module: str) -> set[str]:
    """Names a registry already holds (a task or method file imported earlier in this process): only when that
    registry's module is loaded, so checking a name never imports it."""
    loaded = sys.modules.get(module)
    return set(getattr(loaded, "TASKS" if module.endswith("base") else "METHODS", {})) if loaded else set()


def known_tasks() -> list[str]:
    """The built-in task names and any registered since, sorted."""
    return sorted(set(BUILTIN_TASKS) | _registered("gfnbench.tasks.base"))


def known_methods() -> list[str]:
    """The built-in method names in row order, then any registered since."""
    return list(BUILTIN_METHODS) + sorted(_registered("gfnbench.methods") - set(BUILTIN_METHODS))


def check_task_name(task: str) -> None:
    """A task name that is safe and known, or a .py path (checked when imported): the task registry's own
    one-line error, said in milliseconds."""
    if task.endswith(".py"):
        return
    check_name(task, "task")
    if task not in known_tasks():
        raise ValueError(f"unknown task {task!r}; known tasks: {', '.join(known_tasks())} "
                         f"(or a path to a task .py file)")


def check_method_name(method: str) -> None:
    """A method name that is safe and known, or a .py path: the method registry's own one-line error."""
    if method.endswith(".py"):
        return
    check_name(method, "method")
    if method not in known_methods():
        raise ValueError(f"unknown method {method!r}; known methods: {', '.join(known_methods())} "
                         f"(or a path to a method .py file)")
