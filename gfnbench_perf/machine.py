"""Facts about the machine and this process that every ratio in the report is read against: CPU and versions,
the same-run matmul peak and read bandwidth, FLOP counts, and the peak resident set."""
from __future__ import annotations

import os
import platform
import time
from pathlib import Path

import torch
from torch.utils.flop_counter import FlopCounterMode


def machine() -> dict:
    import transformers

    flags, model_name = [], ""
    try:
        text = Path("/proc/cpuinfo").read_text()
        for line in text.splitlines():
            if line.startswith("model name") and not model_name:
                model_name = line.split(":", 1)[1].strip()
            if line.startswith("flags"):
                flags = sorted({f for f in line.split(":", 1)[1].split()
                                if f.startswith(("avx512", "amx", "avx2", "fma", "avx_vnni"))})
                break
    except OSError:
        pass
    return {"cpu": model_name or platform.processor(), "cores": os.cpu_count(), "cpu_flags": flags,
            "torch": torch.__version__, "transformers": transformers.__version__,
            "torch_threads": torch.get_num_threads(), "interop_threads": torch.get_num_interop_threads(),
            "python": platform.python_version(),
            "env": {k: os.environ[k] for k in ("OMP_NUM_THREADS", "OMP_WAIT_POLICY", "MKL_NUM_THREADS")
                    if k in os.environ}}


def matmul_peak(n: int = 2048, repeats: int = 5, dtype: torch.dtype = torch.float32) -> float:
    """GFLOP/s of one n^3 matmul in `dtype`, best of `repeats` (the same run's FLOP limit at that precision)."""
    a, b = torch.randn(n, n, dtype=dtype), torch.randn(n, n, dtype=dtype)
    a @ b
    best = float("inf")
    for _ in range(repeats):
        t = time.perf_counter()
        a @ b
        best = min(best, time.perf_counter() - t)
    return 2 * n ** 3 / best / 1e9


def count_flops(fn) -> float:
    with FlopCounterMode(display=False) as counter:
        fn()
    return float(counter.get_total_flops())


def read_bandwidth(n_bytes: int = 1 << 30, repeats: int = 3) -> float:
    """GB/s of one streaming read (a sum) over a tensor larger than the last-level cache, best of `repeats`:
    the rate at which a decode step can at best read weights that do not stay in cache from step to step."""
    x = torch.ones(n_bytes // 4)
    best = float("inf")
    for _ in range(repeats + 1):
        t = time.perf_counter()
        x.sum()
        best = min(best, time.perf_counter() - t)
    return n_bytes / best / 1e9


def vm_hwm_mb() -> float | None:
    """Peak resident set (VmHWM) of this process in MB, from /proc (Linux); None elsewhere."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        return None
    return None


def reset_hwm() -> bool:
    """Reset the peak-RSS counter (Linux: write 5 to /proc/self/clear_refs), so the step's own peak is measured
    and not the model load's (loading the checkpoint briefly holds extra copies of the weights)."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False
