"""A tiny vision transformer on the 8x8 digit images scikit-learn ships
(sklearn.datasets.load_digits, no download): 2x2-pixel patches, a class token, two attention
layers through flashattn_ext. Prints test accuracy and saves, for a few test images, the
attention of the class token over the patches (last layer) and the attention rollout across
both layers (flashattn_ext.inspect).

    python examples/vit_digits.py [--steps 300] [--out vit_digits_attention.png]

The model's attention is pluggable (``mode``): "soft" (flashattn_ext.attention), "topk"
(topk_attention, each query keeps its k_top best patches) or "hard" (hard_attention with the
straight-through gradient); examples/soft_topk_hard.py compares them.
"""

from __future__ import annotations

import argparse
import time
from typing import Tuple

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

import flashattn_ext as fa
from flashattn_ext import inspect

PATCH, SIDE = 2, 8
TOKENS = (SIDE // PATCH) ** 2 + 1  # 16 patches and the class token


def digits(seed: int = 0) -> Tuple[torch.Tensor, ...]:
    """Train / test patches (N, 16, 4), labels, and the test images (N, 8, 8)."""
    from sklearn.datasets import load_digits

    data = load_digits()
    images = torch.tensor(data.images / 16.0, dtype=torch.float32)
    labels = torch.tensor(data.target)
    patches = images.unfold(1, PATCH, PATCH).unfold(2, PATCH, PATCH).reshape(len(images), -1, PATCH * PATCH)
    order = torch.randperm(len(images), generator=torch.Generator().manual_seed(seed))
    train, test = order[:1500], order[1500:]
    return patches[train], labels[train], patches[test], labels[test], images[test]


class Attention(nn.Module):
    """Multi-head self-attention whose attention runs through flashattn_ext's functions."""

    def __init__(self, dim: int, heads: int, mode: str = "soft", k_top: int = 4):
        super().__init__()
        self.heads, self.mode, self.k_top = heads, mode, k_top
        self.qkv, self.out = nn.Linear(dim, 3 * dim), nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, s, d = x.shape
        q, k, v = self.qkv(x).view(b, s, 3, self.heads, d // self.heads).unbind(2)
        if self.mode == "soft":
            o = fa.attention(q, k, v)
        elif self.mode == "topk":
            o = fa.topk_attention(q, k, v, self.k_top)
        else:
            o = fa.hard_attention(q, k, v, straight_through=True)[0]
        return self.out(o.reshape(b, s, d))

    @torch.no_grad()
    def key_weights(self, x: torch.Tensor) -> torch.Tensor:
        """The weight (B, H, S, S) each query gives each key: the softmax, or for top-k and hard
        attention the softmax restricted to the keys the query kept (one key: weight 1)."""
        b, s, d = x.shape
        q, k, v = self.qkv(x).view(b, s, 3, self.heads, d // self.heads).unbind(2)
        p = fa.attention_weights(q, k)
        if self.mode == "soft":
            return p
        index = fa.topk_attention(q, k, v, self.k_top if self.mode == "topk" else 1, return_index=True)[1]
        p = p * torch.zeros_like(p).scatter_(-1, index.transpose(1, 2), 1.0)
        return p / p.sum(-1, keepdim=True)


class Block(nn.Module):
    def __init__(self, dim: int, heads: int, mode: str, k_top: int):
        super().__init__()
        self.norm1, self.norm2 = nn.LayerNorm(dim), nn.LayerNorm(dim)
        self.attn = Attention(dim, heads, mode, k_top)
        self.mlp = nn.Sequential(nn.Linear(dim, 2 * dim), nn.GELU(), nn.Linear(2 * dim, dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.norm1(x))
        return x + self.mlp(self.norm2(x))


class ViT(nn.Module):
    def __init__(self, dim: int = 64, heads: int = 4, layers: int = 2, mode: str = "soft", k_top: int = 4):
        super().__init__()
        self.patch = nn.Linear(PATCH * PATCH, dim)
        self.cls = nn.Parameter(torch.zeros(1, 1, dim))
        self.pos = nn.Parameter(0.02 * torch.randn(TOKENS, dim))
        self.blocks = nn.ModuleList(Block(dim, heads, mode, k_top) for _ in range(layers))
        self.norm, self.head = nn.LayerNorm(dim), nn.Linear(dim, 10)

    def forward(self, patches: torch.Tensor) -> torch.Tensor:
        x = torch.cat([self.cls.expand(len(patches), -1, -1), self.patch(patches)], dim=1) + self.pos
        for block in self.blocks:
            x = block(x)
        return self.head(self.norm(x[:, 0]))


def train(model: nn.Module, steps: int, seed: int = 0, log: bool = True) -> float:
    """Trains on the training split (batch 64, AdamW); returns the seconds per step."""
    xtr, ytr = digits(seed)[:2]
    gen = torch.Generator().manual_seed(seed)
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=0.05)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=3e-3, total_steps=max(steps, 1))
    t0 = time.perf_counter()
    for step in range(steps):
        idx = torch.randint(0, len(xtr), (64,), generator=gen)
        loss = F.cross_entropy(model(xtr[idx]), ytr[idx])
        opt.zero_grad()
        loss.backward()
        opt.step()
        sched.step()
        if log and (step % 100 == 0 or step == steps - 1):
            print(f"step {step:4d}  loss {loss.item():.4f}")
    return (time.perf_counter() - t0) / max(steps, 1)


@torch.no_grad()
def accuracy(model: nn.Module, seed: int = 0) -> float:
    _, _, xte, yte, _ = digits(seed)
    return (model(xte).argmax(-1) == yte).float().mean().item()


def save_maps(model: ViT, path: str, count: int = 6, seed: int = 0) -> None:
    """Test images, the class token's last-layer attention over the patches, and the rollout."""
    import matplotlib.pyplot as plt

    _, _, xte, yte, images = digits(seed)
    with torch.no_grad(), inspect.capture(model) as cap:
        pred = model(xte[:count]).argmax(-1)
    layers = [cap[f"blocks.{i}.attn"][0] for i in range(len(model.blocks))]  # (B, H, 17, 17) each
    last = layers[-1].mean(1)[:, 0, 1:]
    rolled = inspect.rollout(layers)[:, 0, 1:]
    side = SIDE // PATCH
    fig, axes = plt.subplots(3, count, figsize=(1.6 * count, 5))
    for i in range(count):
        for row, (img, name) in enumerate(((images[i], "image"), (last[i].reshape(side, side), "last layer"),
                                           (rolled[i].reshape(side, side), "rollout"))):
            ax = axes[row, i]
            ax.imshow(np.asarray(img), cmap="gray" if row == 0 else "magma")
            ax.set_xticks([])
            ax.set_yticks([])
            if i == 0:
                ax.set_ylabel(name)
        axes[0, i].set_title(f"{yte[i].item()} -> {pred[i].item()}")
    fig.suptitle("class-token attention over 2x2 patches")
    fig.savefig(path, dpi=100, bbox_inches="tight")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--steps", type=int, default=300, help="training steps (batch 64)")
    ap.add_argument("--out", default="vit_digits_attention.png", help="attention maps PNG")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    torch.set_num_threads(1)  # the model is tiny: torch's own matmuls are fastest on one thread
    torch.manual_seed(args.seed)
    model = ViT()
    per_step = train(model, args.steps, args.seed)
    print(f"training: {args.steps} steps, {1000 * per_step:.1f} ms per step")
    model.eval()
    print(f"test accuracy {accuracy(model, args.seed):.3f} (297 images)")
    save_maps(model, args.out, seed=args.seed)
    print(f"saved {args.out}")


if __name__ == "__main__":
    main()
