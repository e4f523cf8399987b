"""A model's tokenizer and context length, read from its tokenizer and config files only (never its weights):
what preflight measures every prompt against."""
from __future__ import annotations

import json
import os
from functools import lru_cache
from pathlib import Path


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


class BytesTokenizer:
    """An upper bound of a byte-level BPE tokenizer: one token per UTF-8 byte, plus one special token."""

    def __call__(self, texts, add_special_tokens: bool = True):
        one = isinstance(texts, str)
        ids = [list(range(len(t.encode("utf-8")) + int(add_special_tokens))) for t in ([texts] if one else texts)]
        return {"input_ids": ids[0] if one else ids}


def gguf_tokenizer():
    from transformers import AutoTokenizer

    from gfnbench.models import embedded_gguf_path

    gguf = embedded_gguf_path()
    return AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)


def _local_tokenizer(name: str, label: str):
    from transformers import AutoConfig, AutoTokenizer

    from gfnbench.models import local_files_only

    offline = local_files_only(name)
    config = AutoConfig.from_pretrained(name, local_files_only=offline)
    tokenizer = AutoTokenizer.from_pretrained(name, local_files_only=offline)
    context = None
    for key in ("max_position_embeddings", "n_positions", "n_ctx"):
        if getattr(config, key, None):
            context = int(getattr(config, key))
            break
    return tokenizer, context or 2048, label
