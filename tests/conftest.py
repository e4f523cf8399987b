import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import pytest  # noqa: E402
import torch  # noqa: E402

torch.set_num_threads(min(2, os.cpu_count() or 1))


@pytest.fixture(scope="session")
def tiny():
    from gfnbench.models import build_tiny

    return build_tiny("llama")


@pytest.fixture(scope="session")
def tiny_gpt2():
    from gfnbench.models import build_tiny

    return build_tiny("gpt2")
