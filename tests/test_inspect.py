"""nn.MultiHeadAttention(need_weights=True), inspect.capture, inspect.plot and inspect.rollout."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

import flashattn_ext as fa
import interp_oracle as io
from attn_testing import assert_close, needs_kernel, randn
from flashattn_ext import _capture, inspect
from flashattn_ext.nn import MultiHeadAttention

F64 = torch.float64


@pytest.mark.parametrize("average", [True, False])
def test_need_weights_matches_torch(gen, average):
    torch.manual_seed(int(torch.randint(0, 2**31, (1,), generator=gen)))
    mha = nn.MultiheadAttention(48, 6, batch_first=True, dtype=F64)
    m = MultiHeadAttention.from_torch(mha)
    x, ctx = randn(gen, 3, 10, 48, dtype=F64), randn(gen, 3, 13, 48, dtype=F64)
    y, w = m(x, ctx, need_weights=True, average_attn_weights=average)
    ref_y, ref_w = mha(x, ctx, ctx, need_weights=True, average_attn_weights=average)
    assert w.shape == ref_w.shape and w.dtype == F64
    assert_close(y, ref_y, None, "y")
    assert_close(w, ref_w, None, "weights")


def test_need_weights_gqa_causal(gen):
    m = MultiHeadAttention(64, 8, num_kv_heads=2, causal=True)
    x = randn(gen, 2, 11, 64)
    y, w = m(x, need_weights=True, average_attn_weights=False)
    assert torch.equal(y, m(x))
    q, k, _ = (t.view(2, 11, -1, 8) for t in m._project(x, None, None))
    assert_close(w, io.probabilities(q, k, causal=True), None, "weights")


class _Custom(nn.Module):
    """Attention routed through the functional API, not the library's module."""

    def forward(self, x):
        return fa.attention(x, x, x, causal=True)


class _Model(nn.Module):
    def __init__(self):
        super().__init__()
        self.enc = MultiHeadAttention(32, 4)
        self.dec = MultiHeadAttention(32, 2, causal=True)
        self.raw = _Custom()

    def forward(self, x, mem):
        h = self.enc(mem)
        return self.raw(self.dec(x, h) + self.dec(x))


def test_capture_records_every_call(gen):
    torch.manual_seed(int(torch.randint(0, 2**31, (1,), generator=gen)))
    model = _Model()
    x, mem = randn(gen, 2, 7, 32), randn(gen, 2, 9, 32)
    plain = model(x, mem)
    with inspect.capture(model) as cap:
        out = model(x, mem)
    assert torch.equal(out, plain), "capturing changed the forward"
    assert not _capture.recorders, "the hook stays installed after the block"
    assert cap.layers == ["enc", "dec", "raw"] and len(cap) == 4
    assert [r.weights.shape for r in cap.records] == [(2, 4, 9, 9), (2, 2, 7, 9), (2, 2, 7, 7), (2, 1, 7, 7)]
    q, k, _ = (t.view(2, 9, 4, 8) for t in model.enc._project(mem, None, None))
    assert_close(cap["enc"][0], io.probabilities(q, k), None, "enc weights")
    with inspect.capture(model, layers=[1], heads=[1]) as cap:
        model(x, mem)
    assert cap.layers == ["dec"] and [w.shape for w in cap["dec"]] == [(2, 1, 7, 9), (2, 1, 7, 7)]
    with inspect.capture(model, layers="raw") as cap:
        model(x, mem)
    assert cap.layers == ["raw"]
    fa.attention(x, x, x)  # outside the model's forward
    with inspect.capture(model) as cap:
        fa.attention(x, x, x)
    assert len(cap) == 0


def test_capture_without_model_and_numpy(gen):
    q = randn(gen, 12, 16).numpy()
    with inspect.capture() as cap:
        fa.attention(q, q, q, causal=True)
        fa.scaled_dot_product_attention(torch.from_numpy(q)[None], torch.from_numpy(q)[None],
                                        torch.from_numpy(q)[None], is_causal=True)
    assert len(cap) == 2 and cap.layers == [""]
    ref = io.probabilities(torch.from_numpy(q)[None, :, None], torch.from_numpy(q)[None, :, None], causal=True)
    assert isinstance(cap[""][0], np.ndarray)
    assert_close(torch.from_numpy(cap[""][0]), ref, None, "weights")
    assert_close(cap[""][1], ref, None, "weights (sdpa)")


@pytest.mark.parametrize("numpy", [False, True], ids=["torch", "numpy"])
def test_capture_with_softcap_and_alibi(backend, gen, numpy):
    """Calls with softcap and ALiBi record the probabilities of the transformed scores, against
    the float64 oracle; with dropout, the weights the output was computed with (weights . V gives
    the call's output)."""
    dtype = torch.float32 if backend == "cpu" else torch.bfloat16
    needs_kernel(backend, dtype)
    if numpy and backend != "cpu":
        pytest.skip("numpy arrays run on the CPU backend")
    q, k, v = (randn(gen, 2, s, 3, 16, dtype=dtype) for s in (11, 19, 19))
    slopes = torch.rand(3, generator=gen) * 0.5
    args = tuple(x.numpy() for x in (q, k, v)) if numpy else (q, k, v)
    with inspect.capture() as cap:
        fa.attention(*args, causal=True, softcap=3.0, alibi_slopes=slopes.numpy() if numpy else slopes)
    ref = io.probabilities(q, k, causal=True, softcap=3.0, alibi_slopes=slopes)
    got = torch.from_numpy(cap[""][0]) if numpy else cap[""][0]
    naive = None if dtype == torch.float32 else io.probabilities(q, k, causal=True, softcap=3.0,
                                                                 alibi_slopes=slopes, dtype=dtype)
    assert len(cap) == 1 and got.shape == ref.shape
    assert_close(got, ref, naive, "weights")
    if backend != "cpu":
        return
    # dropout: the weights the output was computed with, kept ones / (1 - p), dropped ones 0
    with inspect.capture() as cap:
        out = fa.attention(*args, causal=True, softcap=3.0, alibi_slopes=slopes.numpy() if numpy else slopes,
                           dropout_p=0.3, seed=3)
    w = torch.from_numpy(cap[""][0]) if numpy else cap[""][0]
    out = torch.from_numpy(out) if numpy else out
    kept = w != 0
    assert 0.6 < kept[ref != 0].double().mean() < 0.8
    assert_close(w, torch.where(kept, ref / (1 - 0.3), 0.0), None, "dropped weights")
    assert_close(out, torch.einsum("bhqk,bkhd->bqhd", w.double(), v.double()), None, "weights . V")
    if not numpy:  # no seed: the generator's draw (dropout_rng), read back for the keep mask
        with inspect.capture() as cap:
            out = fa.attention(q, k, v, dropout_p=0.2)
        w = cap[""][0]
        assert_close(out, torch.einsum("bhqk,bkhd->bqhd", w.double(), v.double()), None, "drawn seed")


@pytest.mark.parametrize("kind", ["bool", "additive", "padding"])
def test_capture_with_an_explicit_mask(backend, gen, kind):
    """Calls with an explicit mask (with a window, softcap and ALiBi besides) record the
    probabilities of the masked scores, against the float64 oracle; masked keys are 0."""
    dtype = torch.float32 if backend == "cpu" else torch.bfloat16
    needs_kernel(backend, dtype)
    b, sq, sk, h, d = 2, 13, 21, 3, 16
    q, k, v = (randn(gen, b, s, h, d, dtype=dtype) for s in (sq, sk, sk))
    slopes = torch.rand(b, h, generator=gen) * 0.5
    if kind == "bool":
        mask = torch.rand(b, h, sq, sk, generator=gen) > 0.3
    elif kind == "additive":
        mask = randn(gen, 1, h, sq, sk) * 2
    else:  # key padding at the front: a (B, 1, 1, Sk) mask the kernels read
        mask = (torch.arange(sk) >= torch.tensor([[3], [5]]))[:, None, None]
    with inspect.capture(heads=[0, 2]) as cap:
        fa.attention(q, k, v, attn_mask=mask, softcap=2.5, alibi_slopes=slopes, window_size=(6, 4))
    s, ok = io.scores(q, k, window=(6, 4), causal=False, softcap=2.5, alibi_slopes=slopes)
    if mask.dtype == torch.bool:
        ok = ok & mask
    else:
        s = s + mask.double()
    s = s.masked_fill(~ok, float("-inf"))
    ref = torch.softmax(s, -1).nan_to_num(0.0)[:, [0, 2]]
    naive = None if dtype == torch.float32 else torch.softmax(s.to(dtype), -1).nan_to_num(0.0)[:, [0, 2]]
    assert len(cap) == 1 and cap[""][0].shape == ref.shape
    assert_close(cap[""][0], ref, naive, "weights")
    assert torch.equal(cap[""][0] == 0, ref == 0)
    if backend == "cpu":  # numpy arrays run on the CPU backend: the same call, numpy weights
        with inspect.capture(heads=[0, 2]) as cap_np:
            fa.attention(q.numpy(), k.numpy(), v.numpy(), attn_mask=mask.numpy(), softcap=2.5,
                         alibi_slopes=slopes.numpy(), window_size=(6, 4))
        got = cap_np[""][0]
        assert isinstance(got, np.ndarray) and got.dtype == np.float32 and got.shape == ref.shape
        assert_close(torch.from_numpy(got), ref, None, "numpy weights")
        assert torch.equal(torch.from_numpy(got) == 0, ref == 0)


def test_capture_bad_arguments():
    model = _Model()
    with pytest.raises(ValueError, match="layers: index 5 is out of range"):
        with inspect.capture(model, layers=5):
            pass
    with pytest.raises(ValueError, match="'nope' is not a module"):
        with inspect.capture(model, layers=["nope"]):
            pass
    with pytest.raises(ValueError, match="needs the model"):
        with inspect.capture(layers=0):
            pass


def test_rollout_by_hand():
    a1 = np.array([[1.0, 0.0], [0.5, 0.5]])
    a2 = np.array([[0.5, 0.5], [0.0, 1.0]])
    assert np.allclose(inspect.rollout([a1, a2], residual=False), [[0.75, 0.25], [0.5, 0.5]])
    # residual: 0.5 A + 0.5 I -> [[1, 0], [.25, .75]] and [[.75, .25], [0, 1]]
    assert np.allclose(inspect.rollout([a1, a2]), [[0.8125, 0.1875], [0.25, 0.75]])
    heads = torch.tensor([[[[1.0, 0.0], [0.0, 1.0]], [[0.0, 1.0], [1.0, 0.0]]]])  # (1, 2, 2, 2)
    r = inspect.rollout([heads], residual=False)
    assert isinstance(r, torch.Tensor) and torch.allclose(r, torch.full((1, 2, 2), 0.5, dtype=F64))
    with pytest.raises(ValueError, match="square"):
        inspect.rollout([np.ones((2, 3))])


def test_plot(gen):
    pytest.importorskip("matplotlib")
    import matplotlib

    matplotlib.use("Agg")
    w = fa.attention_weights(randn(gen, 5, 8), randn(gen, 6, 8))
    fig = inspect.plot(w[None], list("abcde"), list("uvwxyz"), title="t")
    (img, *_) = fig.axes[0].get_images()
    assert img.get_array().shape == (5, 6)
    assert [t.get_text() for t in fig.axes[0].get_xticklabels()] == list("uvwxyz")
    with pytest.raises(ValueError, match="key_labels: 2 labels for 6 key positions"):
        inspect.plot(w, None, ["a", "b"])
