"""Sequence to sequence with flashattn_ext.nn: a small encoder-decoder (self-attention, causal
decoder self-attention, cross-attention, all flashattn_ext.nn.MultiHeadAttention) learns to
reverse digit sequences. Prints token and sequence accuracy of greedy decoding and saves the
cross-attention of one example as a heatmap: the learned alignment is the anti-diagonal (output
position i reads input position L - 1 - i).

    python examples/seq2seq_reversal.py [--steps 400] [--out seq2seq_cross_attention.png]
"""

from __future__ import annotations

import argparse
import time

import torch
import torch.nn.functional as F
from torch import nn

from flashattn_ext import inspect
from flashattn_ext.nn import MultiHeadAttention

LENGTH, DIGITS, BOS = 8, 10, 10


class Block(nn.Module):
    """Pre-norm transformer block: self-attention, optional cross-attention, MLP."""

    def __init__(self, dim: int, heads: int, causal: bool, cross: bool):
        super().__init__()
        self.norm1, self.norm2, self.norm3 = nn.LayerNorm(dim), nn.LayerNorm(dim), nn.LayerNorm(dim)
        self.self_attn = MultiHeadAttention(dim, heads, causal=causal)
        self.cross_attn = MultiHeadAttention(dim, heads) if cross else None
        self.mlp = nn.Sequential(nn.Linear(dim, 4 * dim), nn.GELU(), nn.Linear(4 * dim, dim))

    def forward(self, x: torch.Tensor, memory: torch.Tensor = None) -> torch.Tensor:
        x = x + self.self_attn(self.norm1(x))
        if self.cross_attn is not None:
            x = x + self.cross_attn(self.norm2(x), memory)
        return x + self.mlp(self.norm3(x))


class Seq2Seq(nn.Module):
    def __init__(self, dim: int = 64, heads: int = 4, layers: int = 2):
        super().__init__()
        self.embed = nn.Embedding(DIGITS + 1, dim)
        self.pos = nn.Parameter(0.02 * torch.randn(LENGTH, dim))
        self.encoder = nn.ModuleList(Block(dim, heads, causal=False, cross=False) for _ in range(layers))
        self.decoder = nn.ModuleList(Block(dim, heads, causal=True, cross=True) for _ in range(layers))
        self.norm = nn.LayerNorm(dim)
        self.head = nn.Linear(dim, DIGITS)

    def forward(self, src: torch.Tensor, tgt_in: torch.Tensor) -> torch.Tensor:
        memory = self.embed(src) + self.pos
        for block in self.encoder:
            memory = block(memory)
        x = self.embed(tgt_in) + self.pos[: tgt_in.shape[1]]
        for block in self.decoder:
            x = block(x, memory)
        return self.head(self.norm(x))

    @torch.no_grad()
    def greedy(self, src: torch.Tensor) -> torch.Tensor:
        out = torch.full((src.shape[0], 1), BOS, dtype=torch.long)
        for _ in range(LENGTH):
            nxt = self(src, out)[:, -1].argmax(-1, keepdim=True)
            out = torch.cat([out, nxt], dim=1)
        return out[:, 1:]


def batch(n: int, gen: torch.Generator):
    src = torch.randint(0, DIGITS, (n, LENGTH), generator=gen)
    tgt = src.flip(1)
    return src, tgt, torch.cat([torch.full((n, 1), BOS), tgt[:, :-1]], dim=1)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--steps", type=int, default=400, help="training steps (batch 64)")
    ap.add_argument("--out", default="seq2seq_cross_attention.png", help="heatmap PNG")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    torch.set_num_threads(1)  # the model is tiny: torch's own matmuls are fastest on one thread
    torch.manual_seed(args.seed)
    gen = torch.Generator().manual_seed(args.seed)
    model = Seq2Seq()
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=0.01)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=3e-3, total_steps=max(args.steps, 1))
    t0 = time.perf_counter()
    for step in range(args.steps):
        src, tgt, tgt_in = batch(64, gen)
        loss = F.cross_entropy(model(src, tgt_in).flatten(0, 1), tgt.flatten())
        opt.zero_grad()
        loss.backward()
        opt.step()
        sched.step()
        if step % 100 == 0 or step == args.steps - 1:
            print(f"step {step:4d}  loss {loss.item():.4f}")
    print(f"training: {args.steps} steps in {time.perf_counter() - t0:.1f} s")

    model.eval()
    src, tgt, _ = batch(512, gen)
    pred = model.greedy(src)
    print(f"token accuracy {(pred == tgt).float().mean().item():.3f}, "
          f"sequence accuracy {(pred == tgt).all(1).float().mean().item():.3f} (512 fresh sequences)")

    # The cross-attention of the last decoder layer for one example, averaged over heads.
    src, tgt, tgt_in = batch(1, gen)
    with inspect.capture(model, layers="decoder.1.cross_attn") as cap:
        model(src, tgt_in)
    weights = cap["decoder.1.cross_attn"][0][0].mean(0)  # (output positions, input positions)
    fig = inspect.plot(weights, [f"out{i}={d}" for i, d in enumerate(tgt[0].tolist())],
                       [f"in{j}={d}" for j, d in enumerate(src[0].tolist())],
                       title="cross-attention (last decoder layer, mean over heads)")
    fig.savefig(args.out, dpi=100, bbox_inches="tight")
    print(f"saved {args.out}")


if __name__ == "__main__":
    main()
