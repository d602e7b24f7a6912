"""The output head and its loss: the plain head (whole logits, then the loss kernels of
trainers/kernels.py) against the fused, chunked one (trainers/fused_head.py, resources.fused_head).

One forward + backward of head and loss (features [rows, d] -> mean loss -> gradients of features,
weight and bias), float32 on one CPU thread, for the two loss shapes the families use:
cross-entropy (AR, MDLM, Eso-LM) and Duo's NELBO. Each measurement is a fresh child process, so
its peak memory is its own: `peak_mib` is the resident-set high-water mark above what the process
held before the first step (inputs included). Variants are interleaved round by round; figures are
medians.

    python benchmarks/fused_head.py                          # demo, 113M-head-on-a-CPU shapes
    python benchmarks/fused_head.py --shapes 1024x256x32001 --rounds 5

Prints a line per (loss, shape, variant), then `time_ratio_<loss>_<shape> <plain / fused>` (above
1: fused is faster) and `memory_ratio_<loss>_<shape> <plain / fused peak>`.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_SHAPES = ("1024x32x512", "1024x256x32001", "4096x256x32001")  # rows x d x K; the first: demo


def child(loss: str, shape: str, variant: str, steps: int) -> dict:
    sys.path.insert(0, str(ROOT))
    from trainers.dist import keep_freed_memory

    keep_freed_memory()  # as every training process does
    import resource
    import time

    import torch
    import torch.nn.functional as F

    from trainers import kernels
    from trainers.families.duo import duo_rows
    from trainers.fused_head import cross_entropy_rows, fused_head_loss

    torch.set_num_threads(1)
    rows, d, k = (int(v) for v in shape.split("x"))
    forbid = k - 1
    g = torch.Generator().manual_seed(0)
    x = torch.randn(rows, d, generator=g, requires_grad=True)
    w = (torch.randn(k, d, generator=g) * d ** -0.5).requires_grad_()
    b = torch.zeros(k, requires_grad=True)
    xt, x0 = torch.randint(0, k - 1, (rows,), generator=g), torch.randint(0, k - 1, (rows,), generator=g)
    alpha = torch.rand(rows, generator=g) * 0.9 + 0.05
    dalpha = -torch.ones(rows)

    def plain() -> torch.Tensor:
        logits = F.linear(x, w, b)
        if loss == "ce":
            return kernels.cross_entropy_without(logits, xt, forbid).mean()
        return kernels.duo_nelbo_from_logits(logits[:, None], xt[:, None], x0[:, None], alpha[:, None],
                                             dalpha[:, None], k - 1, forbid).mean()

    def fused() -> torch.Tensor:
        request = (cross_entropy_rows(xt, forbid, 1.0 / rows) if loss == "ce"
                   else duo_rows(xt, x0, alpha, dalpha, k - 1, forbid, 1.0 / rows))
        return fused_head_loss(x, w, b, request).loss

    step = plain if variant == "plain" else fused
    base_kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    times = []
    for i in range(steps + 1):  # the first is warm-up
        t0 = time.perf_counter()
        value = step()
        value.backward()
        if i:
            times.append(time.perf_counter() - t0)
        x.grad = w.grad = b.grad = None
    peak_kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return {"ms": 1e3 * statistics.median(times), "peak_mib": (peak_kib - base_kib) / 1024,
            "loss": float(value)}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--losses", nargs="+", default=["ce", "duo"], choices=("ce", "duo"))
    p.add_argument("--shapes", nargs="+", default=list(DEFAULT_SHAPES), help="rows x d x K")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--steps", type=int, default=5, help="timed steps per child")
    p.add_argument("--child", nargs=3, metavar=("LOSS", "SHAPE", "VARIANT"), help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.child:
        print(json.dumps(child(*args.child, args.steps)))
        return 0
    results: dict = {}
    for _ in range(args.rounds):
        for loss in args.losses:
            for shape in args.shapes:
                for variant in ("plain", "fused"):
                    out = subprocess.run([sys.executable, __file__, "--steps", str(args.steps), "--child",
                                          loss, shape, variant], capture_output=True, text=True, check=True)
                    results.setdefault((loss, shape, variant), []).append(json.loads(out.stdout.splitlines()[-1]))
    for (loss, shape, variant), runs in results.items():
        ms = statistics.median(r["ms"] for r in runs)
        mib = statistics.median(r["peak_mib"] for r in runs)
        print(f"{loss} {shape} {variant:5s} {ms:9.1f} ms  peak {mib:8.1f} MiB  loss {runs[0]['loss']:.6f}")
    for loss in args.losses:
        for shape in args.shapes:
            plain, fused = (results[(loss, shape, v)] for v in ("plain", "fused"))
            ratio = statistics.median(a["ms"] / b["ms"] for a, b in zip(plain, fused))
            memory = statistics.median(a["peak_mib"] for a in plain) / max(
                statistics.median(b["peak_mib"] for b in fused), 1e-9)
            print(f"time_ratio_{loss}_{shape} {ratio:.3f}")
            print(f"memory_ratio_{loss}_{shape} {memory:.2f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
