"""Evaluation: every method is sampled and scored the same way, question by question.

Log-likelihood is always scored by the base model (adapters off) given the task's plain prompt, whatever prompt
or decoding the method used, so the column means the same thing in every row.
"""
from __future__ import annotations

import torch
from tqdm.auto import tqdm

from gfnbench.devices import derived_seed, gather, model_device, rank, seeded_generator, world_size
from gfnbench.methods import Method, declared_exact_sampler
from gfnbench.metrics import mean
from gfnbench.models import adapters_off
from gfnbench.profiles import Profile
from gfnbench.sampling import sequence_log_likelihoods
from gfnbench.tasks import Example, Task
from gfnbench.trajectories import Trajectories


def batch_generator(seed: int, split: str, batch_index: int, device: torch.device | str = "cpu") -> torch.Generator:
    """Each evaluation batch draws from its own seeded stream, so its samples do not depend on which process
    draws it or in what order (a sharded evaluation gathers to exactly the one-process samples). It lives on
    the model's device (the sampler draws there)."""
    return seeded_generator(derived_seed(f"{seed}/{split}/{batch_index}"), device)


def reference_log_likelihood(method: Method, task: Task, traj: Trajectories, examples: list[Example]) -> torch.Tensor:
    """[B] log p_base(sample | task prompt): the one likelihood every row of a table is scored with."""
    tok = method.lm.tokenizer
    groups = traj.group.tolist()
    prompts = {g: tok(task.prompt(examples[g]), add_special_tokens=False)["input_ids"] for g in set(groups)}
    states = [traj.state_ids[b, : int(traj.state_mask[b].sum())].tolist() for b in range(len(traj))]
    with torch.no_grad(), adapters_off(method.policy) as base:
        return sequence_log_likelihoods(base, [prompts[g] for g in groups], states, tok.pad_token_id)


def exact_metrics(method: Method, task: Task, examples: list[Example]) -> dict:
    """Tasks with an enumerable support report the method's exact distance to the target (mean over prompts), of
    the network the method declared it samples ancestrally (`Method.exact_sampler`); nothing when undeclared
    (`exact_metrics_na` says why)."""
    declared, _ = declared_exact_sampler(method)
    if declared is None:
        return {}
    declared.network.eval()
    per = [task.exact_metrics(declared.network, method.lm.tokenizer, method.prompt_for(ex), declared.temperature)
           for ex in examples]
    if per[0] is None:
        return {}
    return {k: mean([p[k] for p in per]) for k in per[0]}


def exact_outcomes(method: Method, task: Task, profile: Profile) -> dict:
    """{split: {question id: {outcome: probability}}} of the declared exact sampler, on tasks whose exact metrics
    come from such a distribution (rng): what a reader needs to re-check those metrics ({} otherwise)."""
    declared, _ = declared_exact_sampler(method)
    if declared is None:
        return {}
    declared.network.eval()
    out = {}
    with torch.no_grad():
        for split in task.eval_splits:
            for ex in task.examples(split)[: eval_questions(profile, task)]:
                dist = task.exact_outcomes(declared.network, method.lm.tokenizer, method.prompt_for(ex),
                                           declared.temperature)
                if dist is None:
                    return {}
                out.setdefault(split, {})[ex.id] = dist
    return out


def exact_metrics_na(method: Method, task: Task) -> dict[str, str]:
    """{exact metric: why it is n/a} for a method that does not declare its exact sampler, on a task that has exact
    metrics ({} otherwise). The metric names come from one enumeration of the base model (its numbers unused)."""
    declared, reason = declared_exact_sampler(method)
    if declared is not None:
        return {}
    example = task.examples(task.eval_splits[0])[0]
    with torch.no_grad():
        names = task.exact_metrics(method.lm.model, method.lm.tokenizer, task.prompt(example), 1.0)
    return {name: reason for name in names or {}}


def model_scores(method: Method, task: Task, texts: list[str], ex: Example) -> dict:
    """Metrics that need a model (e.g. subj's label predicted from each rationale): the base model, adapters off.

    A method's own hook wins over the task's (subj's prompting baselines sample a label, not a rationale)."""
    with torch.no_grad(), adapters_off(method.policy) as base:
        scores = method.score_with_model(base, method.lm.tokenizer, texts, ex)
        return task.score_with_model(base, method.lm.tokenizer, texts, ex) if scores is None else scores


def chunks(items: list, size: int) -> list[list]:
    return [items[i: i + size] for i in range(0, len(items), size)]


def eval_questions(profile: Profile, task: Task) -> int | None:
    """Questions per evaluation split: the profile's cap, raised to the task's floor on profiles that honour it
    (cpu); None means all."""
    if profile.eval_questions is None or not profile.task_eval_floor:
        return profile.eval_questions
    return max(profile.eval_questions, task.min_eval_questions)


def questions_per_batch(method: Method, profile: Profile, n: int) -> int:
    """The profile's eval_batch questions, or more for a method that returns fewer than n rows a question
    (greedy), up to the same eval_batch x n rows. Only a method that draws nothing has fewer rows, so every
    sampling method keeps its batches, and with them each batch's seeded stream."""
    return profile.eval_batch * max(1, n // max(1, method.rows_per_question(n)))


def question_scores(method: Method, task: Task, traj: Trajectories, examples: list[Example],
                    split: str) -> tuple[list[dict], list[dict]]:
    """Each question's metrics over its n samples, and the samples' rows for samples.jsonl."""
    ref = reference_log_likelihood(method, task, traj, examples)
    scores, samples = [], []
    for i, ex in enumerate(examples):
        rows = (traj.group == i).nonzero().flatten().tolist()
        texts = [traj.texts[r] for r in rows]
        q = {**task.score(texts, ex), **model_scores(method, task, texts, ex)}
        q["logp_ref"] = mean([float(ref[r]) for r in rows])
        if task.report_logp_ref_max:
            q["logp_ref_max"] = max(float(ref[r]) for r in rows)
        scores.append(q)
        samples += [{"split": split, "id": ex.id, "prompt": traj.prompts[r], **task.sample_fields(ex),
                     "sample": k, "text": traj.texts[r], "logp_ref": float(ref[r]),
                     "stopped": bool(traj.stopped[r])} for k, r in enumerate(rows)]
    return scores, samples


def evaluate(method: Method, task: Task, profile: Profile, seed: int,
             label: str = "") -> tuple[dict, list[dict], dict]:
    """Metrics per evaluation split (means over questions), every sample drawn, and each question's metrics
    ({split: {"ids": [...], metric: [...]}}: what the leaderboard's question-level bootstrap resamples)."""
    n = profile.eval_samples or task.eval_samples
    metrics, samples, per_question = {}, [], {}
    for split in task.eval_splits:
        examples = task.examples(split)[: eval_questions(profile, task)]
        if not examples:
            raise ValueError(f"split {split!r} of task {task.name} has no examples")
        batches = chunks(examples, questions_per_batch(method, profile, n))
        scores, split_samples = evaluate_batches(method, task, batches, n, seed, split, f"{label} {split}".strip())
        samples += split_samples
        per_question[split] = {"ids": [ex.id for ex in examples],
                               **{key: [q[key] for q in scores] for key in scores[0]}}
        metrics[split] = {key: mean(per_question[split][key]) for key in scores[0]}
        metrics[split].update(exact_metrics(method, task, examples))
    return metrics, samples, per_question


def evaluate_batches(method: Method, task: Task, batches: list[list[Example]], n: int, seed: int, split: str,
                     label: str) -> tuple[list[dict], list[dict]]:
    """Each question's metrics and every sample, in batch order. Process r of W samples and scores batches r,
    r + W, ... and the shares are gathered: every batch has its own generator, so any number of processes gives
    exactly the one-process samples and metrics."""
    device = model_device(method.policy)
    mine = {}
    for i in tqdm(range(rank(), len(batches), world_size()), desc=label, leave=False):
        with torch.no_grad():
            traj = method.sample(batches[i], n, batch_generator(seed, split, i, device))
        mine[i] = question_scores(method, task, traj, batches[i], split)
    done = {i: share for part in gather(mine) for i, share in part.items()}
    scores, samples = [], []
    for i in range(len(batches)):
        scores += done[i][0]
        samples += done[i][1]
    return scores, samples
