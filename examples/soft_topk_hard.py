"""Soft against top-k against hard attention: the tiny vision transformer of vit_digits.py trained
three times, with ordinary softmax attention, with top-k attention (each query keeps its k_top
best patches; the gradient of the restricted softmax) and with hard attention (each query takes
one patch; straight-through gradient). Prints test accuracy and speed side by side and saves,
for a few test images, the patches each model's class token attends to in the last layer (top-k
and hard: the weights of the kept patches, averaged over the heads).

    python examples/soft_topk_hard.py [--steps 250] [--k-top 4] [--out soft_topk_hard.png]
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch

from vit_digits import PATCH, SIDE, ViT, accuracy, digits, train


def class_token_maps(model: ViT, patches: torch.Tensor) -> torch.Tensor:
    """(N, 4, 4): the last layer's class-token weights over the patches, mean over the heads."""
    attn = model.blocks[-1].attn
    seen = []
    hook = attn.register_forward_hook(lambda m, inputs, out: seen.append(m.key_weights(inputs[0])))
    with torch.no_grad():
        model(patches)
    hook.remove()
    side = SIDE // PATCH
    return seen[0].mean(1)[:, 0, 1:].reshape(-1, side, side)


def save_maps(models: list[tuple[str, ViT]], path: str, count: int = 6, seed: int = 0) -> None:
    import matplotlib.pyplot as plt

    _, _, xte, yte, images = digits(seed)
    fig, axes = plt.subplots(1 + len(models), count, figsize=(1.6 * count, 1.7 * (1 + len(models))))
    rows = [("image", images[:count])] + [(name, class_token_maps(m, xte[:count])) for name, m in models]
    for r, (name, maps) in enumerate(rows):
        for i in range(count):
            ax = axes[r, i]
            ax.imshow(np.asarray(maps[i]), cmap="gray" if r == 0 else "magma")
            ax.set_xticks([])
            ax.set_yticks([])
        axes[r, 0].set_ylabel(name)
    for i in range(count):
        axes[0, i].set_title(str(yte[i].item()))
    fig.suptitle("class-token attention over 2x2 patches, last layer")
    fig.savefig(path, dpi=100, bbox_inches="tight")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--steps", type=int, default=250, help="training steps per model (batch 64)")
    ap.add_argument("--k-top", type=int, default=4, help="patches each query keeps in top-k attention")
    ap.add_argument("--out", default="soft_topk_hard.png", help="class-token attention maps PNG")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    torch.set_num_threads(1)  # the model is tiny: torch's own matmuls are fastest on one thread
    xte = digits(args.seed)[2]
    rows, models = [], []
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
        models.append((rows[-1][0], model))
        print(f"{rows[-1][0]}: done")
    print(f"\n{'attention':>10}  {'test accuracy':>13}  {'train ms/step':>13}  {'inference ms (297 images)':>25}")
    for name, acc, per_step, infer in rows:
        print(f"{name:>10}  {acc:13.3f}  {1000 * per_step:13.1f}  {1000 * infer:25.1f}")
    save_maps(models, args.out, seed=args.seed)
    print(f"saved {args.out}")


if __name__ == "__main__":
    main()
