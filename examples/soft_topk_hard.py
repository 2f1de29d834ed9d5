"""Soft against top-k against hard attention: the tiny vision transformer of vit_digits.py trained
three times, with ordinary softmax attention, with top-k attention (each query keeps its k_top
best patches; the gradient of the restricted softmax) and with hard attention (each query takes
one patch; straight-through gradient). Prints test accuracy and speed side by side.

    python examples/soft_topk_hard.py [--steps 250] [--k-top 4]
"""

from __future__ import annotations

import argparse
import time

import torch

from vit_digits import ViT, accuracy, digits, train


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--steps", type=int, default=250, help="training steps per model (batch 64)")
    ap.add_argument("--k-top", type=int, default=4, help="patches each query keeps in top-k attention")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    torch.set_num_threads(1)  # the model is tiny: torch's own matmuls are fastest on one thread
    xte = digits(args.seed)[2]
    rows = []
    for mode in ("soft", "topk", "hard"):
        torch.manual_seed(args.seed)  # the same initial weights for the three models
        model = ViT(mode=mode, k_top=args.k_top)
        per_step = train(model, args.steps, args.seed, log=False)
        model.eval()
        with torch.no_grad():
            model(xte)  # warm-up
            t0 = time.perf_counter()
            model(xte)
            infer = time.perf_counter() - t0
        rows.append((mode if mode != "topk" else f"top-{args.k_top}", accuracy(model, args.seed), per_step, infer))
        print(f"{rows[-1][0]}: done")
    print(f"\n{'attention':>10}  {'test accuracy':>13}  {'train ms/step':>13}  {'inference ms (297 images)':>25}")
    for name, acc, per_step, infer in rows:
        print(f"{name:>10}  {acc:13.3f}  {1000 * per_step:13.1f}  {1000 * infer:25.1f}")


if __name__ == "__main__":
    main()
