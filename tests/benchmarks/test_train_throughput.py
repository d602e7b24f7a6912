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


def _diagnostics():
    sys.path.insert(0, str(REPO / "benchmarks"))
    try:
        import gpu_diagnostics
    finally:
        sys.path.remove(str(REPO / "benchmarks"))
    return gpu_diagnostics


def test_the_gpu_diagnostics_sort_kernels_by_name():
    kernel_category = _diagnostics().kernel_category
    assert kernel_category("flash_fwd_kernel") == "attention"
    assert kernel_category("sm90_xmma_gemm_bf16bf16") == "matmul"
    assert kernel_category("multi_tensor_apply_kernel") == "optimizer"
    assert kernel_category("triton_poi_fused_gelu") == "other (elementwise, norms, copies)"


def test_the_kernel_table_lists_every_kernel_per_micro_batch(tmp_path):
    rows = [("nvjet_sm90_tst_192x192", 24_000.0, 48), ("triton_red_fused_gelu_backward_sum_41", 1_500.0, 24)]
    path = tmp_path / "kernels.csv"
    _diagnostics().write_kernel_table(str(path), rows, n_micro=2)
    assert path.read_text().splitlines() == [
        "kernel,category,ms_per_micro_batch,launches_per_micro_batch",
        "nvjet_sm90_tst_192x192,matmul,12.0000,24",
        "triton_red_fused_gelu_backward_sum_41,\"other (elementwise, norms, copies)\",0.7500,12"]
