"""Everything a run or a bench needs, checked before any folder is created or any model weight is loaded.

Checked, in this order: profile, task (a task file's syntax and import errors as one `file:line` line), data path
(exists, a file or a folder as the task expects, UTF-8 and well-formed: the task's reader), methods (known and
applicable), seeds (non-negative, distinct integers), model (its tokenizer and config only, never the weights),
every example's prompt length against the model's context, and the results folder (writable, without creating
it). Each failure is one `InputError` (a ValueError) whose message is one line.
"""
from __future__ import annotations

import json
import os
import re
import sys
from functools import lru_cache
from pathlib import Path

from gfnbench.usercode import user_code_error


class InputError(ValueError):
    """A user error found before any work: the CLI prints it as one `gfnbench: error:` line."""


# --------------------------------------------------------------------------- user code (task files)

# --------------------------------------------------------------------------- seeds, methods

def check_seeds(seeds) -> list[int]:
    seeds = list(seeds)
    if not seeds:
        raise InputError("no seeds given: pass e.g. --seeds '[0,1,2]'")
    seen = set()
    for seed in seeds:
        if not isinstance(seed, int) or isinstance(seed, bool) or seed < 0:
            raise InputError(f"seed must be a non-negative integer, got {seed!r} (seeds {seeds})")
        if seed in seen:
            raise InputError(f"seed {seed} is listed twice (seeds {seeds})")
        seen.add(seed)
    return seeds


def check_methods(task_name: str, methods) -> list[str]:
    from gfnbench.catalog import get_method, methods_for

    methods = list(methods)
    if not methods:
        raise InputError(f"no methods given; methods for {task_name}: {', '.join(methods_for(task_name))}")
    names = []
    for name in methods:
        if not isinstance(name, str):
            raise InputError(f"method names are strings, got {name!r}")
        spec = get_method(name)
        if not spec.applies_to(task_name):
            raise InputError(f"method {spec.name!r} does not apply to task {task_name!r}; "
                             f"methods for it: {', '.join(methods_for(task_name))}")
        if spec.name in names:
            raise InputError(f"method {spec.name!r} is listed twice (methods {methods})")
        names.append(spec.name)
    return names


# --------------------------------------------------------------------------- task and data

def task_class(task: str):
    """The task's class (importing a task file), without constructing it."""
    from gfnbench.tasks.base import get_task_class

    try:
        return get_task_class(task)
    except InputError:
        raise
    except ValueError as err:
        raise InputError(str(err)) from None


def check_data_path(cls, data: str) -> None:
    import inspect

    params = inspect.signature(cls.__init__).parameters
    if "data" not in params and not any(p.kind is p.VAR_KEYWORD for p in params.values()):
        raise InputError(f"task {cls.name} does not read a data file (--data)")
    path = Path(data)
    kind = cls.data_kind
    what = {"file": "a file", "folder": "a folder"}.get(kind, "a file or folder")
    if not path.exists():
        raise InputError(f"data path {data} does not exist (task {cls.name} expects {what})")
    if kind == "file" and path.is_dir():
        raise InputError(f"data path {data} is a folder; task {cls.name} expects a file")
    if kind == "folder" and not path.is_dir():
        raise InputError(f"data path {data} is a file; task {cls.name} expects a folder")


def build_task(task: str, data: str | None):
    """The constructed task (its data read and validated by the task's own reader)."""
    cls = task_class(task)
    if data is not None:
        check_data_path(cls, data)
    kwargs = {"data": data} if data is not None else {}
    try:
        return cls(**kwargs)
    except (ValueError, OSError):
        raise
    except Exception as err:  # a user task's constructor failing: one line naming its file and line
        module_file = getattr(sys.modules.get(cls.__module__), "__file__", None) or "?"
        file = Path(task) if task.endswith(".py") else Path(module_file)
        raise InputError(f"task {cls.name} could not be built: {user_code_error(err, file)}") from err


# --------------------------------------------------------------------------- model: tokenizer and context only

@lru_cache(maxsize=4)
def model_tokenizer(name: str):
    """(tokenizer, context length, description) of a model, read from its tokenizer and config files only."""
    from gfnbench.models import ModelNotAvailable, build_tiny_tokenizer, embedded_cache_dir, embedded_gguf_path

    if name in ("tiny", "tiny-llama"):
        return build_tiny_tokenizer(), 2048, "tiny-llama"
    if name == "tiny-gpt2":
        return build_tiny_tokenizer(), 512, "tiny-gpt2"
    if name == "embedded":
        embedded_gguf_path()   # the package must be there (ModelNotAvailable otherwise)
        target = embedded_cache_dir()
        if not (target / "config.json").is_file() or not (target / "tokenizer.json").is_file():
            return None, EMBEDDED_CONTEXT, "embedded SmolLM2"   # its tokenizer is read only when needed
        return _local_tokenizer(str(target), "embedded SmolLM2")
    from gfnbench.models import hub_preflight

    hub_preflight(name)   # local directory, local cache, or a reachable hub: fails fast otherwise
    if Path(name).expanduser().is_dir():
        check_safetensors(Path(name).expanduser())
    try:
        return _local_tokenizer(name, name)
    except ModelNotAvailable:
        raise
    except (OSError, ValueError) as err:
        local = Path(name).expanduser()
        where = "the local directory" if local.exists() else (
            "the local Hugging Face cache (offline)" if os.environ.get("HF_HUB_OFFLINE") == "1" else "the hub")
        raise ModelNotAvailable(
            f"could not load model {name!r} from {where}: {str(err).splitlines()[0] if str(err) else err!r}. "
            f"Pass --model embedded (offline default), a directory written by save_pretrained, or a hub name on a "
            f"machine with a hub") from err


def check_safetensors(folder: Path) -> None:
    """Every .safetensors file in a model folder is whole: its header parses and the file is as long as the
    header says (a truncated copy or download), read from the header alone."""
    import struct

    from gfnbench.models import ModelNotAvailable

    for file in sorted(folder.glob("*.safetensors")):
        size = file.stat().st_size
        try:
            with open(file, "rb") as f:
                (n,) = struct.unpack("<Q", f.read(8))
                if n > size - 8:
                    raise ValueError("its header runs past the end of the file")
                header = json.loads(f.read(n))
            end = max((int(v["data_offsets"][1]) for k, v in header.items() if k != "__metadata__"), default=0)
        except (struct.error, ValueError, KeyError, TypeError, IndexError) as err:
            raise ModelNotAvailable(f"{file} is damaged ({err}): copy or save the model again "
                                    f"(save_pretrained)") from None
        if size < 8 + n + end:
            raise ModelNotAvailable(f"{file} is truncated ({size} bytes, {8 + n + end} expected): copy or save the "
                                    f"model again (save_pretrained)")


EMBEDDED_CONTEXT = 8192   # SmolLM2-135M's max_position_embeddings


class _BytesTokenizer:
    """An upper bound of a byte-level BPE tokenizer: one token per UTF-8 byte, plus one special token."""

    def __call__(self, texts, add_special_tokens: bool = True):
        one = isinstance(texts, str)
        ids = [list(range(len(t.encode("utf-8")) + int(add_special_tokens))) for t in ([texts] if one else texts)]
        return {"input_ids": ids[0] if one else ids}


def _gguf_tokenizer():
    from transformers import AutoTokenizer

    from gfnbench.models import embedded_gguf_path

    gguf = embedded_gguf_path()
    return AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)


def _local_tokenizer(name: str, label: str):
    from transformers import AutoConfig, AutoTokenizer

    from gfnbench.models import _CACHE_ONLY

    offline = Path(name).expanduser().exists() or os.environ.get("HF_HUB_OFFLINE") == "1" or name in _CACHE_ONLY
    config = AutoConfig.from_pretrained(name, local_files_only=offline)
    tokenizer = AutoTokenizer.from_pretrained(name, local_files_only=offline)
    context = None
    for key in ("max_position_embeddings", "n_positions", "n_ctx"):
        if getattr(config, key, None):
            context = int(getattr(config, key))
            break
    return tokenizer, context or 2048, label


# --------------------------------------------------------------------------- every example against the context

def _splits(task) -> dict[str, list]:
    names = task.split_names()
    out = {}
    for name in names:
        try:
            out[name] = task.examples(name)
        except (ValueError, KeyError):
            continue
    return out


def locate(ex, data: str | None, split: str) -> str:
    """Where an example came from: `file, line n` when it can be told, else its id and split."""
    if data:
        path = Path(data)
        m = re.fullmatch(r"(?:.*@)?line(\d+)", ex.id)
        if m and path.is_file():
            return f"{data}, line {m.group(1)}"
        m = re.fullmatch(r"(obj|sub)(\d+)", ex.id)
        if m and path.is_dir():
            try:
                from gfnbench.tasks.subj import FILES
                name = FILES["objective" if m.group(1) == "obj" else "subjective"]
                return f"{path / name}, line {m.group(2)}"
            except (ImportError, KeyError):
                pass
        if path.is_file():
            probe = ex.question[:40]
            try:
                for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
                    if line.startswith(ex.id + ",") or (probe and probe in " ".join(line.split())):
                        return f"{data}, line {number}"
            except (OSError, UnicodeDecodeError):
                pass
    return f"example {ex.id!r} (split {split})"


def _shots_prefix(task, methods, first, tokenizer) -> tuple[int, str]:
    """(tokens, what) of the longest demonstration prefix any of `methods` puts before a prompt."""
    from gfnbench.tasks.base import LabelledClassification

    best, what = 0, ""
    plain = len(tokenizer(task.prompt(first))["input_ids"])
    for name in methods:
        if name == "few_shot":
            k = (task.few_shot_k if isinstance(task, LabelledClassification) else None) or 3
            build = task.classifier_prompt if isinstance(task, LabelledClassification) else task.shots_prompt
        elif name == "zero_shot":
            continue
        else:
            k, build = task.default_shots, task.shots_prompt
        if not k:
            continue
        try:
            extra = len(tokenizer(build(first, k))["input_ids"]) - plain
        except (NotImplementedError, ValueError, AttributeError):
            continue
        if extra > best:
            best, what = extra, f"{name}'s {k}-shot prefix ({extra} tokens)"
    return best, what


def check_lengths(task, data: str | None, tokenizer, context: int, model_label: str,
                  methods: list[str] | None = None) -> None:
    """Every example's prompt (with the methods' shots and the longest answer it may write) fits the context."""
    splits = _splits(task)
    written = max(int(task.max_len), int(task.eval_max_len))
    first = next((exs[0] for exs in splits.values() if exs), None)
    if first is None:
        return
    if methods is None:
        from gfnbench.catalog import methods_for

        methods = methods_for(task.name)
    shots, shots_what = _shots_prefix(task, methods, first, tokenizer)
    for split, examples in splits.items():
        if not examples:
            continue
        prompts = [task.prompt(ex) for ex in examples]
        extras = [f"{ex.answer or ''} {ex.rationale or ''}" for ex in examples]
        lengths = tokenizer(prompts, add_special_tokens=True)["input_ids"]
        extra_lengths = tokenizer(extras, add_special_tokens=False)["input_ids"]
        for ex, ids, extra in zip(examples, lengths, extra_lengths):
            need = len(ids) + shots + written + len(extra) + 8
            if need > context and need - shots <= context:
                raise InputError(
                    f"{shots_what} does not fit {model_label}'s context of {context} tokens: with the prompt of "
                    f"{locate(ex, data, split)} it needs {need}; run without that method or with a longer-context "
                    f"model")
            if need > context:
                raise InputError(
                    f"{locate(ex, data, split)}: the prompt is {len(ids)} tokens; with up to {written} written "
                    f"tokens and its answer it needs {need}, over {model_label}'s context of {context} tokens: "
                    f"shorten or remove it")


# --------------------------------------------------------------------------- results folder

def check_results_dir(root: str | Path) -> None:
    """Writable, or creatable in a writable folder, without creating anything."""
    path = Path(root)
    probe = path
    while not probe.exists():
        if probe.parent == probe:
            break
        probe = probe.parent
    if probe.exists() and not probe.is_dir():
        raise InputError(f"results directory {path} is not writable ({probe} is a file): choose a writable folder "
                         f"with --results_dir")
    if not os.access(probe, os.W_OK | os.X_OK):
        raise InputError(f"results directory {path} is not writable (permission denied on {probe}): choose a "
                         f"writable folder with --results_dir")


# --------------------------------------------------------------------------- entry points

def _check(task: str, methods, seeds, profile: str, results_dir: str | None, model: str | None,
           data: str | None):
    from gfnbench.profiles import get_profile

    prof = get_profile(profile)
    task_obj = build_task(task, data)
    names = None if methods is None else check_methods(task_obj.name, methods)
    check_seeds(seeds)
    model_name = model or prof.model
    tokenizer, context, label = model_tokenizer(model_name)
    key = (task_obj.name, data, model_name, None if names is None else tuple(names))
    if key not in _LENGTHS_OK:
        if tokenizer is None:
            try:   # bytes bound a byte-level BPE's tokens from above: the GGUF's tokenizer (~8 s) only if needed
                check_lengths(task_obj, data, _BytesTokenizer(), context, label, names)
            except InputError:
                check_lengths(task_obj, data, _gguf_tokenizer(), context, label, names)
        else:
            check_lengths(task_obj, data, tokenizer, context, label, names)
        _LENGTHS_OK.add(key)
    from gfnbench.records import results_root

    check_results_dir(results_root(prof, results_dir, data))
    return task_obj


_DONE: set = set()
_LENGTHS_OK: set = set()


def check_run(task: str, method: str, seed, profile: str = "smoke", results_dir: str | None = None,
              model: str | None = None, data: str | None = None) -> None:
    """All of a `run`'s inputs, before anything is created or loaded."""
    if not isinstance(method, str):
        raise InputError(f"method must be a name, got {method!r}")
    key = ("run", task, method, seed, profile, results_dir, model, data)
    if _hashable(key) and key in _DONE:
        return
    from gfnbench.catalog import get_method

    get_method(method)
    _check(task, [method], [seed], profile, results_dir, model, data)
    if _hashable(key):
        _DONE.add(key)


def check_bench(task: str, profile: str = "cpu", seeds=(0, 1, 2), methods=None, results_dir: str | None = None,
                model: str | None = None, data: str | None = None) -> None:
    """All of a `bench`'s inputs (every seed and method), before the first run."""
    if isinstance(seeds, (str, bytes)) or not hasattr(seeds, "__iter__"):
        raise InputError(f"seeds must be a list of integers, got {seeds!r}")
    if methods is not None and (isinstance(methods, (str, bytes)) or not hasattr(methods, "__iter__")):
        raise InputError(f"methods must be a list of names, got {methods!r}")
    _check(task, None if methods is None else list(methods), list(seeds), profile, results_dir, model, data)


def _hashable(key) -> bool:
    try:
        hash(key)
    except TypeError:
        return False
    return True


__all__ = ["InputError", "check_run", "check_bench", "check_seeds", "check_methods", "build_task",
           "check_results_dir", "check_lengths", "model_tokenizer"]
