"""benchmarks/train_throughput.py runs and prints its figures (issue 3's `ratio`). The benchmark is
run on a GPU lease that cannot be repeated, so its CPU part, which shares the set-up, the loops and
the timer A/B with the GPU part, is kept working here; the figures themselves are not asserted."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def test_the_cpu_part_prints_both_rates_and_their_ratio():
    out = subprocess.run(
        [sys.executable, str(REPO / "benchmarks" / "train_throughput.py"), "--part", "cpu",
         "--rounds", "1", "--steps", "2", "--warmup-steps", "1", "--batch", "4", "--seq", "32",
         "--timer-ab", "--fused-head", "on"],
        capture_output=True, text=True, timeout=300, cwd=REPO)
    assert out.returncode == 0, out.stderr[-2000:]
    figures = dict(re.findall(r"^(\w+) ([\d.]+)$", out.stdout, re.M))
    assert set(figures) == {"deepspeed_tokens_per_s", "plain_tokens_per_s", "ratio"}, out.stdout
    assert float(figures["ratio"]) > 0


def test_the_gpu_diagnostics_sort_kernels_by_name():
    sys.path.insert(0, str(REPO / "benchmarks"))
    try:
        from gpu_diagnostics import kernel_category
    finally:
        sys.path.remove(str(REPO / "benchmarks"))
    assert kernel_category("flash_fwd_kernel") == "attention"
    assert kernel_category("sm90_xmma_gemm_bf16bf16") == "matmul"
    assert kernel_category("multi_tensor_apply_kernel") == "optimizer"
    assert kernel_category("triton_poi_fused_gelu") == "other (elementwise, norms, copies)"
