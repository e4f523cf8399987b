"""Where a profile's runs go: one results folder per set of things that change the numbers, so a table never mixes
models, data, precisions or budgets, and runs of different settings never collide.

The folder is the base profile's (`results`, `results/smoke`, `results/paper`) plus one component for each thing
that differs from that profile's defaults, in this order:

    profile-<field>-<value>[__<field>-<value>...]   numbers other than the base profile's (train_steps, ...)
    model-<model>                                   a model other than the profile's ('/' written '--')
    precision-<precision>                           a precision other than 32-true
    data-<file name>-<sha256[:8]>                   the task's data from --data (records.data_results_dir)

so `results/runs/<task>/...` is the cpu profile on the embedded model, built-in data, fp32 (the committed runs),
and e.g. `--profile smoke --model embedded` goes to `results/smoke/model-embedded/`. `--results_dir` is used as it
is. `elsewhere_hint` turns a folder back into the options that name it, for a leaderboard that finds no runs.
"""
from __future__ import annotations

import hashlib
import json
import os
from dataclasses import replace
from pathlib import Path

from gfnbench.names import name_problem
from gfnbench.profiles import PROFILES, Profile, base_profile, number_changes, resolve_profile
from gfnbench.records import results_root

FLAG_FIELDS = ("train_steps", "eval_questions")     # the number fields that have a flag of their own
LABEL_LIMIT = 100                                   # longer component labels become a hash


def model_label(model: str) -> str:
    """A model as one folder name: a hub id with '/' as '--' (hub ids never hold '--'), a local folder by its
    name and the hash of its absolute path (two folders of one name stay apart)."""
    if Path(model).exists():
        path = str(Path(model).resolve())
        return f"local-{safe(Path(path).name)}-{hashlib.sha256(path.encode()).hexdigest()[:8]}"
    label = model.replace("/", "--")
    return label if name_problem(label) is None and len(label) <= LABEL_LIMIT else f"hash-{short_hash(model)}"


def safe(text: str) -> str:
    """`text` with every character a folder name may not hold replaced by '_'."""
    return "".join(c if name_problem(c) is None else "_" for c in text) or "_"


def short_hash(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()[:8]


def profile_component(prof: Profile, base: Profile) -> str | None:
    """'profile-train_steps-5__eval_questions-10' for the numbers `prof` changes from `base` (None: none)."""
    changes = number_changes(prof, base)
    if not changes:
        return None
    label = "__".join(f"{k}-{json.dumps(v)}" for k, v in changes.items())
    if name_problem(label) is not None or len(label) > LABEL_LIMIT:
        label = f"hash-{short_hash(json.dumps(changes, sort_keys=True))}"
    return f"profile-{label}"


def key_components(prof: Profile) -> list[str]:
    """The folder components that set `prof`'s runs apart from its base profile's default runs."""
    base = base_profile(prof)
    parts = [profile_component(prof, base)]
    if prof.model != base.model:
        parts.append(f"model-{model_label(prof.model)}")
    if prof.precision not in ("32-true", "32"):
        parts.append(f"precision-{prof.precision}")
    return [p for p in parts if p]


def keyed(prof: Profile) -> Profile:
    """`prof` with `results_dir` its own folder: its base profile's, plus a component per difference (module
    doc). Idempotent: the folder is always built from the base profile's."""
    return replace(prof, results_dir=str(Path(base_profile(prof).results_dir, *key_components(prof))))


def table_profile(profile: str | Profile = "cpu", model: str | None = None, precision: str | None = None,
                  **overrides) -> Profile:
    """The profile whose folder a table reads: what `run` and `bench` would write with the same options (without
    their compute checks, which load torch)."""
    from gfnbench.precision import resolve_precision

    prof = resolve_profile(profile, **overrides)
    prof = replace(prof, model=model or prof.model)
    return keyed(replace(prof, precision=resolve_precision(precision or prof.precision, prof.accelerator)))


# --------------------------------------------------------------------------- finding a task's runs elsewhere

def search_root() -> Path:
    """The folder that holds every built-in profile's results (`results`)."""
    return Path(os.path.commonpath([str(Path(p.results_dir)) for p in PROFILES.values()]))


def roots_with_runs(task: str, top: Path) -> list[Path]:
    """Every results folder under `top` that holds a run record of `task` (runs/ folders are not searched)."""
    found = []
    for folder, subfolders, _ in os.walk(top):
        if "runs" in subfolders and any((Path(folder) / "runs" / task).glob("*/seed*/record.json")):
            found.append(Path(folder))
        subfolders[:] = sorted(d for d in subfolders if d != "runs" and not d.startswith("."))
    return found


def options_for(root: Path) -> str:
    """The options that make `run`, `bench` and `leaderboard` use `root` (the inverse of `keyed`)."""
    bases = [(name, Path(p.results_dir)) for name, p in PROFILES.items()]
    inside = [(name, path) for name, path in bases if path == root or path in root.parents]
    if not inside:
        return f"--results_dir {root}"
    name, path = max(inside, key=lambda item: len(item[1].parts))
    options = [] if name == "cpu" else [f"--profile {name}"]
    for part in root.parts[len(path.parts):]:
        kind, _, label = part.partition("-")
        if kind == "profile" and not label.startswith("hash-"):
            pairs = dict(pair.split("-", 1) for pair in label.split("__"))
            flags = [f"--{k} {v}" for k, v in pairs.items() if k in FLAG_FIELDS]
            rest = {k: v for k, v in pairs.items() if k not in FLAG_FIELDS}
            options += flags + ([f"--profile FILE.yaml (base: {name}, {rest})"] if rest else [])
        elif kind == "model" and not label.startswith(("hash-", "local-")):
            options.append(f"--model {label.replace('--', '/')}")
        elif kind == "precision":
            options.append(f"--precision {label}")
        elif kind == "data":
            options.append(f"--data <the file {label.rsplit('-', 1)[0]}>")
        else:
            return f"--results_dir {root}"
    return " ".join(options) if options else "the default options"


def elsewhere_hint(task: str, root: Path) -> str | None:
    """When `root` has no runs of `task` but other results folders do: one line naming them and their options."""
    top = search_root()
    others = [r for r in roots_with_runs(task, top) if r.resolve() != Path(root).resolve()] if top.is_dir() else []
    if not others:
        return None
    where = "; ".join(f"{r} (pass {options_for(r)})" for r in others)
    return f"no run records under {Path(root) / 'runs' / task}; runs of task {task} are under {where}"


def table_root(profile: str, model: str | None, data: str | None, precision: str | None, **overrides) -> Path:
    """The results folder `run` and `bench` write with the same options, for `leaderboard` and `load_table`."""
    if data is not None and not Path(data).exists():
        raise ValueError(f"data path {data} does not exist (pass the --data the runs were made with)")
    return results_root(table_profile(profile, model, precision, **overrides), None, data)


def check_runs_found(task: str, root: str | Path) -> None:
    """No record of `task` under the options' folder `root` but some in another results folder: one line naming
    that folder and the options that read it (`--profile smoke` after a smoke bench). Not for a --results_dir
    given: that folder is the user's choice, and its own 'no run records' error says so."""
    if any((Path(root) / "runs" / task).glob("*/seed*/record.json")):
        return
    hint = elsewhere_hint(task, Path(root))
    if hint:
        raise ValueError(hint)
