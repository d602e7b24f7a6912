"""Which head is off in float32 on a GPU: the plain head, the fused head (compiled and eager chunk
kernels) and each against a float64 reference of the same model and batch. Prints, per family, the
relative differences of the training loss, the validation nats and the worst parameter gradient
(relative in norm); a configuration that raises is reported in one line and the rest go on.
`PYTHONPATH=. python benchmarks/fused_head_gpu_diag.py [--device cuda:0] [--families ar duo]`."""

from __future__ import annotations

import argparse
import copy

import torch

from tests.trainers.conftest import randomize_
from tests.trainers.test_fused_head import family_outputs
from trainers import kernels
from trainers.backbone import build_model
from trainers.families.registry import get_entry

VOCAB, MASK = 1001, 1000


def run(model, name, options, device, tokens, t, compile_on, fused):
    """The GPU test's outputs (tests/trainers/test_fused_head.py) for one head and compile choice."""
    kernels.configure(compile_on, device, fused_head=fused)
    try:
        loss, grads, nats = family_outputs(name, options, model, tokens, t)
    finally:
        kernels.configure(False, "cpu")
    return loss.double(), [g.double() for g in grads], nats.double()


def differences(a, b, names):
    (la, ga, na), (lb, gb, nb) = a, b
    worst = max(((x - y).norm() / (y.norm() + 1e-30), n) for x, y, n in zip(ga, gb, names))
    return (f"loss {float(abs(la - lb) / abs(lb)):.2e}  nats {float((na - nb).norm() / nb.norm()):.2e}  "
            f"worst grad {float(worst[0]):.2e} ({worst[1]})")


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--device", default="cuda:0" if torch.cuda.is_available() else "cpu")
    p.add_argument("--families", nargs="*", default=["ar", "mdlm", "duo", "esolm"])
    args = p.parse_args()
    matmul = torch.backends.cuda.matmul
    print(f"torch {torch.__version__}; allow_tf32 {matmul.allow_tf32}; "
          f"fp32_precision {getattr(matmul, 'fp32_precision', 'n/a')}; "
          f"float32_matmul_precision {torch.get_float32_matmul_precision()}")
    for name in args.families:
        torch.manual_seed(0)
        model = build_model(2, 64, 2, VOCAB, get_entry(name).attention, MASK)
        model = randomize_(model, 0, 0.1).eval().to(args.device)
        names = [n for n, _ in model.named_parameters()]
        tokens = torch.randint(0, MASK, (4, 128), generator=torch.Generator().manual_seed(2)).to(args.device)
        t = torch.tensor([0.1, 0.4, 0.7, 0.95], device=args.device)
        ref = run(copy.deepcopy(model).double(), name, {}, args.device, tokens, t.double(), False, False)
        got = {}
        for c in (False, True):
            for f in (False, True):
                label = f"{'compiled' if c else 'eager':8s} {'fused' if f else 'plain':5s}"
                try:
                    got[(c, f)] = run(model, name, {}, args.device, tokens, t, c, f)
                except Exception as err:  # noqa: BLE001 - a diagnosis reports every failure and goes on
                    first = str(err).strip().splitlines()[0] if str(err).strip() else ""
                    print(f"{name:5s} {label} FAILED: {type(err).__name__}: {first[:300]}")
                    continue
                print(f"{name:5s} {label} vs float64: {differences(got[(c, f)], ref, names)}")
        if (True, True) in got and (True, False) in got:
            print(f"{name:5s} compiled fused vs compiled plain: "
                  f"{differences(got[(True, True)], got[(True, False)], names)}")


if __name__ == "__main__":
    main()
