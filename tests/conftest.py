import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import pytest  # noqa: E402
import torch  # noqa: E402

# GFNBENCH_TEST_THREADS=1 keeps a test run from starving a benchmark running beside it on the same 2 cores
torch.set_num_threads(int(os.environ.get("GFNBENCH_TEST_THREADS", min(2, os.cpu_count() or 1))))


@pytest.fixture(scope="session")
def tiny():
    from gfnbench.models import build_tiny

    return build_tiny("llama")


@pytest.fixture(scope="session")
def tiny_gpt2():
    from gfnbench.models import build_tiny

    return build_tiny("gpt2")
