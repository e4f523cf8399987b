"""The evaluation harness: every method is sampled and scored the same way, and each run leaves a record.

Log-likelihood is always scored by the base model (adapters off) given the task's plain prompt, whatever prompt
or decoding the method used, so the column means the same thing in every row.
"""
from __future__ import annotations

import hashlib
import random
import time
from dataclasses import asdict
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from gfnbench import locks
from gfnbench.catalog import get_method, methods_for
from gfnbench.checkpoints import remove_checkpoints
from gfnbench.methods import Method, MethodSpec, RunContext
from gfnbench.metrics import mean
from gfnbench.models import LanguageModel, adapters_off, load_model
from gfnbench.preflight import check_bench, check_run
from gfnbench.profiles import Profile, get_profile
from gfnbench.records import (
    check_writable,
    data_fingerprint,
    git_commit,
    machine,
    package_versions,
    results_root,
    run_dir,
    write_run,
)
from gfnbench.sampling import state_token_log_probs
from gfnbench.tasks import Example, Task, get_task
from gfnbench.trajectories import Trajectories


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def batch_generator(seed: int, split: str, batch_index: int) -> torch.Generator:
    """Each evaluation batch draws from its own seeded stream, so its samples do not depend on which process
    draws it or in what order (a sharded evaluation gathers to exactly the one-process samples)."""
    key = hashlib.sha256(f"{seed}/{split}/{batch_index}".encode()).digest()
    return torch.Generator().manual_seed(int.from_bytes(key[:8], "little") >> 1)


def reference_log_likelihood(method: Method, task: Task, traj: Trajectories, examples: list[Example]) -> torch.Tensor:
    """[B] log p_base(sample | task prompt): the one likelihood every row of a table is scored with."""
    plain = traj.with_prompts([task.prompt(examples[g]) for g in traj.group.tolist()], method.lm.tokenizer)
    with torch.no_grad(), adapters_off(method.policy) as base:
        return state_token_log_probs(base, plain).sum(-1)


def exact_metrics(method: Method, task: Task, examples: list[Example]) -> dict:
    """Tasks with an enumerable support report the method's exact distance to the target (mean over prompts)."""
    if method.exact_temperature is None:
        return {}
    method.policy.eval()
    per = [task.exact_metrics(method.policy, method.lm.tokenizer, method.prompt_for(ex), method.exact_temperature)
           for ex in examples]
    if per[0] is None:
        return {}
    return {k: mean([p[k] for p in per]) for k in per[0]}


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
        samples += [{"split": split, "id": ex.id, "prompt": traj.prompts[r], "answer": ex.answer,
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
        scores = []
        batches = chunks(examples, profile.eval_batch)
        for i, batch in enumerate(tqdm(batches, desc=f"{label} {split}".strip(), leave=False)):
            with torch.no_grad():
                traj = method.sample(batch, n, batch_generator(seed, split, i))
            batch_scores, batch_samples = question_scores(method, task, traj, batch, split)
            scores += batch_scores
            samples += batch_samples
        per_question[split] = {"ids": [ex.id for ex in examples],
                               **{key: [q[key] for q in scores] for key in scores[0]}}
        metrics[split] = {key: mean(per_question[split][key]) for key in scores[0]}
        metrics[split].update(exact_metrics(method, task, examples))
    return metrics, samples, per_question


def load_task(task: str, data: str | None = None) -> Task:
    """The task, reading its examples from `data` (a file path) when given; tasks without data files refuse it."""
    if data is None:
        return get_task(task)
    try:
        return get_task(task, data=data)
    except TypeError as err:
        if "unexpected keyword argument 'data'" not in str(err):
            raise
        raise ValueError(f"task {task} does not read a data file (--data)") from None


def run(task: str, method: str, seed: int, profile: str = "smoke", results_dir: str | None = None,
        model: str | None = None, overwrite: bool = False, data: str | None = None,
        settings: dict | None = None, resume: bool = False, keep_checkpoints: bool = False,
        checkpoint_every: int = 10) -> Path:
    """Train (if the method trains), evaluate and write one run record. Returns the record's folder.

    `settings` maps method names to overrides of their settings ({"gflownet": {"lr": 3e-4}}). Training saves a
    checkpoint every `checkpoint_every` steps into the run folder; `resume` continues from it, and it is
    removed once the record is written unless `keep_checkpoints`."""
    check_run(task, method, seed, profile, results_dir, model, data)   # every input, before anything is created
    prof = get_profile(profile)
    task_obj = load_task(task, data)
    spec = get_method(method)
    method = spec.name
    others = sorted(set(settings or {}) - {method})
    if others:
        raise ValueError(f"settings given for {', '.join(others)}, but this run is {method}")
    overrides = settings_for(spec, settings)
    root = results_root(prof, results_dir, data)
    check_writable(root)
    out = run_dir(root, task_obj.name, method, seed)
    lock = locks.acquire(out)  # RunInProgress if another process has this run; released on return or exit
    if (out / "record.json").exists() and not overwrite:
        raise FileExistsError(f"{out / 'record.json'} exists: pass --overwrite true to replace it")
    seed_everything(seed)
    lm: LanguageModel = load_model(model or prof.model)
    started = time.time()
    ctx = RunContext(seed=seed, profile=prof, log_dir=out / "train", settings=overrides, method=method,
                     checkpoint_dir=out / "checkpoints", checkpoint_every=checkpoint_every, resume=resume)
    impl = spec.factory(task_obj, lm, ctx)
    extra = impl.fit()
    metrics, samples, per_question = evaluate(impl, task_obj, prof, seed, label=f"{method} seed {seed}")
    record = {
        "task": task_obj.name, "method": method, "seed": seed, "profile": prof.name,
        "model": lm.model_id, "scoring_model": f"{lm.model_id}, adapters off, given the task prompt",
        "data": task_obj.data_source, "data_sha256": data_fingerprint(data) if data else None,
        "metrics": metrics, "per_question": per_question, "metric_info": task_obj.metric_info,
        "metric_directions": task_obj.metric_directions, "task_version": task_obj.version,
        "settings": overrides, "budget": (budget := impl.budget()) and asdict(budget),
        "config": run_config(prof, impl, task_obj), "versions": package_versions(), "git_commit": git_commit(),
        "machine": machine(),
        "wall_time_s": time.time() - started, **extra,
    }
    write_run(out, record, samples, overwrite=overwrite)
    if not keep_checkpoints:
        remove_checkpoints(ctx.checkpoint_dir)
    lock.release()
    return out


def run_config(prof: Profile, impl: Method, task: Task) -> dict:
    """The settings a run record keeps: profile, method (as built), task and evaluation."""
    return {"profile": prof.as_dict(), "method": impl.config(), "task": type(task).__name__,
            "task_settings": task.config(), "eval_samples": prof.eval_samples or task.eval_samples,
            "eval_questions": eval_questions(prof, task), "eval_temperature": task.eval_temperature}


def settings_for(spec: MethodSpec, settings: dict | None) -> dict:
    """This method's overrides out of {method: overrides}, checked against its settings class."""
    return spec.check_settings(dict((settings or {}).get(spec.name) or {}))


def seeds_for(spec: MethodSpec, seeds: list[int]) -> list[int]:
    """A deterministic method (greedy, beam) gives the same record for every seed: it runs the first only."""
    return list(seeds[:1]) if spec.deterministic else list(seeds)


def default_methods(task: Task, prof: Profile) -> list[str]:
    """Every method for the task, less its `costly_methods` on profiles that skip them (said on stdout)."""
    names = methods_for(task.name)
    skipped = [m for m in names if prof.skip_costly and m in task.costly_methods]
    if skipped:
        print(f"[gfnbench] the {prof.name} profile skips {', '.join(skipped)} on {task.name} (too slow for its "
              f"time budget); run them with --methods {','.join(skipped)}")
    return [m for m in names if m not in skipped]


def bench(task: str, profile: str = "cpu", seeds: list[int] = (0, 1, 2), methods: list[str] | None = None,
          results_dir: str | None = None, model: str | None = None, overwrite: bool = False,
          data: str | None = None, settings: dict | None = None) -> list[Path]:
    """Every method registered for the task x seeds (runs that already have a record are kept), then tables."""
    from gfnbench.leaderboard import write_leaderboard

    check_bench(task, profile, seeds, methods, results_dir, model, data)   # every seed and method, before any run
    prof = get_profile(profile)
    task_obj = load_task(task, data)
    names = [get_method(m).name for m in methods] if methods else default_methods(task_obj, prof)
    unused = sorted(set(settings or {}) - set(names))
    if unused:
        raise ValueError(f"settings given for {', '.join(unused)}, which this bench does not run "
                         f"(its methods: {', '.join(names)})")
    for name in names:
        settings_for(get_method(name), settings)
    root = results_root(prof, results_dir, data)
    check_writable(root)
    print(f"[gfnbench] runs and tables go to {root}")
    for name in names:
        for seed in locks.claim(root, task_obj.name, name, seeds_for(get_method(name), seeds), overwrite):
            t0 = time.time()
            out = run(task_obj.name, name, seed, profile, str(root), model, overwrite, data,
                      {name: (settings or {}).get(name) or {}}, resume=True)   # an interrupted run continues
            print(f"[gfnbench] {task_obj.name}/{name}/seed{seed} done in {time.time() - t0:.1f}s -> {out}")
    return write_leaderboard(root, task_obj.name, method_order=names)
