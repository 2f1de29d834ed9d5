"""API behaviour: argument validation, layouts and strides, autograd, torch.compile, threads."""

from __future__ import annotations

import threading

import numpy as np
import pytest
import torch

import flashattn_ext as fa
import oracle
from attn_testing import assert_close, needs_kernel, randn

F32, F64 = torch.float32, torch.float64


def qkv(gen, b=2, sq=11, sk=13, hq=4, hkv=2, d=16, dtype=F32):
    return (randn(gen, b, sq, hq, d, dtype=dtype), randn(gen, b, sk, hkv, d, dtype=dtype),
            randn(gen, b, sk, hkv, d, dtype=dtype))


# ---- validation: every error path names the argument --------------------------------------

def test_rejects_mixed_torch_and_numpy(gen):
    q, k, v = qkv(gen)
    with pytest.raises(TypeError, match="q, k, v must all be torch tensors or all numpy arrays; got q is torch, k is numpy"):
        fa.attention(q, k.numpy(), v)


def test_rejects_non_arrays(gen):
    q, k, v = qkv(gen)
    with pytest.raises(TypeError, match="v: expected a torch.Tensor or numpy.ndarray, got list"):
        fa.attention(q, k, v.tolist())


def test_rejects_wrong_rank(gen):
    q, k, v = qkv(gen)
    with pytest.raises(ValueError, match=r"q: expected 2 or 3 or 4 dimensions"):
        fa.attention(q[None], k[None], v[None])
    with pytest.raises(ValueError, match="k: expected 4 dimensions like q"):
        fa.attention(q, k[0], v)
    with pytest.raises(ValueError, match=r"q: expected 4 dimensions, \(B, S, H, D\); got shape \(11, 4, 16\)"):
        fa.flash_attn_func(q[0], k[0], v[0])


def test_rejects_dtype_problems(gen):
    q, k, v = qkv(gen)
    with pytest.raises(TypeError, match="k: dtype float64 differs from q's float32"):
        fa.attention(q, k.double(), v)
    with pytest.raises(TypeError, match="q: dtype int32 is not supported"):
        fa.attention(q.int(), k.int(), v.int())
    with pytest.raises(TypeError, match="q: dtype complex64 is not supported"):
        fa.attention(*(x.numpy().astype(np.complex64) for x in (q, k, v)))


def test_rejects_shape_mismatches(gen):
    q, k, v = qkv(gen)
    with pytest.raises(ValueError, match="k, v: head_dim must equal q's 16"):
        fa.attention(q, k[..., :8], v[..., :8])
    with pytest.raises(ValueError, match="v: shape .* must match k's"):
        fa.attention(q, k, v[:, :5])
    with pytest.raises(ValueError, match="k: batch size 1 differs from q's 2"):
        fa.attention(q, k[:1], v[:1])
    with pytest.raises(ValueError, match="k: number of heads 3 must divide q's number of heads 4"):
        fa.attention(q, randn(gen, 2, 13, 3, 16), randn(gen, 2, 13, 3, 16))
    with pytest.raises(ValueError, match="key: 2 heads differ from query's 4; pass enable_gqa=True"):
        fa.scaled_dot_product_attention(*(x.transpose(1, 2) for x in (q, k, v)))


def test_rejects_zero_size_and_big_head_dim(gen):
    q, k, v = qkv(gen)
    with pytest.raises(ValueError, match=r"k: zero-size dimension in shape \(2, 0, 2, 16\)"):
        fa.attention(q, k[:, :0], v[:, :0])
    big = [randn(gen, 1, 3, 1, 264) for _ in range(3)]
    with pytest.raises(ValueError, match="q: head_dim 264 is not supported; head_dim must be 1..256"):
        fa.attention(*big)


def test_rejects_non_contiguous_last_dim(gen):
    q, k, v = qkv(gen, d=32)
    with pytest.raises(ValueError, match="q: the last .* dimension must be contiguous"):
        fa.attention(q[..., ::2], k[..., ::2], v[..., ::2])


def test_rejects_bad_scale_and_unsupported_arguments(gen):
    q, k, v = qkv(gen)
    with pytest.raises(ValueError, match="scale: expected a finite float"):
        fa.attention(q, k, v, scale=float("nan"))
    with pytest.raises(NotImplementedError, match="dropout_p=0.1"):
        fa.flash_attn_func(q, k, v, dropout_p=0.1)
    with pytest.raises(NotImplementedError, match="softcap=30.0"):
        fa.flash_attn_func(q, k, v, softcap=30.0)
    with pytest.raises(NotImplementedError, match="alibi_slopes"):
        fa.flash_attn_func(q, k, v, alibi_slopes=torch.ones(4))
    with pytest.raises(ValueError, match="window_size: expected"):
        fa.flash_attn_func(q, k, v, window_size=(1, 2, 3))
    t = [x.transpose(1, 2) for x in (q, k, v)]
    with pytest.raises(NotImplementedError, match="attn_mask"):
        fa.scaled_dot_product_attention(*t, attn_mask=torch.ones(11, 13, dtype=torch.bool))
    with pytest.raises(NotImplementedError, match="dropout_p=0.5"):
        fa.scaled_dot_product_attention(*t, dropout_p=0.5, enable_gqa=True)


def test_rejects_unknown_backend(gen, monkeypatch):
    monkeypatch.setenv("FLASHATTN_EXT_BACKEND", "tpu")
    with pytest.raises(ValueError, match="FLASHATTN_EXT_BACKEND='tpu' is not available"):
        fa.attention(*qkv(gen))


def test_rejects_device_mismatch(gen):
    q, k, v = qkv(gen)
    with pytest.raises(ValueError, match="k: on device meta, but q is on cpu"):
        fa.attention(q, k.to("meta"), v)


def test_rejects_unsupported_device(gen):
    q, k, v = (x.to("meta") for x in qkv(gen))
    with pytest.raises(NotImplementedError, match="q: device meta is not supported by this build"):
        fa.attention(q, k, v)


ALL_ISAS = ("scalar", "avx2", "avx512", "avx512bf16", "avx512bf16-emu", "neon")


@pytest.mark.parametrize("isa", [*ALL_ISAS, "pentium"])
def test_cpu_isa_not_available_lists_the_available_ones(gen, monkeypatch, isa):
    available = fa.build_info()["cpu_isas"]
    if isa in available:
        pytest.skip(f"{isa} is available on this machine")
    monkeypatch.setenv("FLASHATTN_EXT_CPU_ISA", isa)
    with pytest.raises(ValueError) as info:
        fa.attention(*qkv(gen))
    message = str(info.value)
    assert message.startswith(f"FLASHATTN_EXT_CPU_ISA='{isa}' is not ")
    assert message.endswith(f"available here: auto, {', '.join(available)}")
    known = isa in ALL_ISAS
    assert ("not a known instruction set" in message) != known
    assert ("is not available on this machine" in message or "is not available in this build"
            in message) == known


def test_rejects_misaligned_numpy_strides(gen):
    raw = np.zeros(4 * 13 * 2 * 16 * 4 + 64, dtype=np.uint8)
    q = np.lib.stride_tricks.as_strided(raw.view(np.float32)[:4 * 13 * 2 * 16], (4, 13, 2, 16),
                                        (13 * 2 * 16 * 4 + 2, 2 * 16 * 4, 16 * 4, 4))
    k = randn(gen, 4, 13, 2, 16).numpy()
    with pytest.raises(ValueError, match="q: byte strides .* are not multiples of the item size"):
        fa.attention(q, k, k)


# ---- layouts and strides ---------------------------------------------------------------

def test_bhsd_views_and_strided_inputs_need_no_copy(backend, gen):
    """torch's (B, H, S, D) layout, sequence slices and expanded (stride-0) kv heads go in as
    they are; gradients keep each input's layout."""
    needs_kernel(backend, F64, backward=True)
    qb = randn(gen, 2, 4, 40, 16, dtype=F64).requires_grad_()   # (B, H, S, D)
    kb = randn(gen, 2, 2, 60, 16, dtype=F64)[:, :, ::2].requires_grad_()  # strided S
    vleaf = randn(gen, 2, 1, 30, 16, dtype=F64).requires_grad_()
    vb = vleaf.expand(2, 2, 30, 16)                                      # stride-0 heads
    out = fa.scaled_dot_product_attention(qb, kb, vb, is_causal=True, enable_gqa=True)
    assert out.shape == qb.shape and out.stride() == qb.stride()
    ref = oracle.attention(*(x.transpose(1, 2) for x in (qb, kb, vb)), causal=True,
                           bottom_right=False)[0].transpose(1, 2)
    assert_close(out, ref, None, "out")
    dout = randn(gen, 2, 40, 4, 16, dtype=F64).transpose(1, 2)  # non-contiguous dout
    grads = torch.autograd.grad(out, (qb, kb, vleaf), dout)
    ref_grads = torch.autograd.grad(ref, (qb, kb, vleaf), dout)
    for name, g, r in zip("qkv", grads, ref_grads):
        assert_close(g, r, None, "d" + name)


def test_numpy_strided_views(gen):
    q = randn(gen, 3, 50, 2, 8).numpy()[:, ::3]          # strided sequence
    k = randn(gen, 3, 2, 21, 8).numpy().swapaxes(1, 2)   # (B, H, S, D) memory
    v = np.ascontiguousarray(randn(gen, 3, 21, 2, 8).numpy())
    out = fa.attention(q, k, v)
    ref = oracle.attention(*(torch.from_numpy(np.ascontiguousarray(x)) for x in (q, k, v)))[0]
    assert_close(torch.from_numpy(out), ref, None, "out")


def test_gradient_of_sum_has_expanded_dout(gen):
    q, k, v = (x.requires_grad_() for x in qkv(gen, dtype=F64))
    fa.attention(q, k, v).sum().backward()  # dout is a stride-0 expanded tensor
    ref = oracle.attention(q, k, v)[0].sum()
    for x, g in zip((q, k, v), torch.autograd.grad(ref, (q, k, v))):
        assert_close(x.grad, g, None, "grad")


# ---- autograd, compile, determinism, threads ------------------------------------------

@pytest.mark.parametrize("causal", [False, True])
def test_gradcheck_float64(gen, causal):
    q, k, v = (x.requires_grad_() for x in qkv(gen, b=1, sq=5, sk=7, hq=2, hkv=1, d=4, dtype=F64))
    assert torch.autograd.gradcheck(lambda a, b, c: fa.attention(a, b, c, causal=causal),
                                    (q, k, v), eps=1e-6, atol=1e-8)


def test_gradcheck_with_lse(gen):
    q, k, v = (x.requires_grad_() for x in qkv(gen, b=1, sq=6, sk=4, hq=1, hkv=1, d=3, dtype=F64))
    f = lambda a, b, c: fa.attention(a, b, c, causal=True, return_lse=True)[1][..., 2:]
    assert torch.autograd.gradcheck(f, (q, k, v), eps=1e-6, atol=1e-8)


def test_torch_compile_fullgraph(gen):
    torch._dynamo.reset()

    def f(q, k, v):
        return (fa.flash_attn_func(q * 2, k, v, causal=True) + 1).sum()

    q, k, v = (x.requires_grad_() for x in qkv(gen))
    compiled = torch.compile(f, fullgraph=True, backend="aot_eager")
    loss = compiled(q, k, v)
    grads = torch.autograd.grad(loss, (q, k, v))
    ref_loss = f(q, k, v)
    ref_grads = torch.autograd.grad(ref_loss, (q, k, v))
    assert torch.equal(loss, ref_loss)
    for g, r in zip(grads, ref_grads):
        assert torch.equal(g, r)


def test_torch_compile_inductor(gen):
    """The default compiler (inductor) generates code around the opaque op, forward and backward."""
    torch._dynamo.reset()
    f = lambda q, k, v: fa.attention(q, k, v, causal=True).square().sum()
    q, k, v = (x.requires_grad_() for x in qkv(gen, dtype=F64))
    loss = torch.compile(f, fullgraph=True)(q, k, v)
    grads = torch.autograd.grad(loss, (q, k, v))
    ref = oracle.attention(q, k, v, causal=True)[0].square().sum()
    assert_close(loss, ref, None, "loss")
    for g, r in zip(grads, torch.autograd.grad(ref, (q, k, v))):
        assert_close(g, r, None, "grad")


def test_torch_library_opcheck(gen):
    q, k, v = (x.requires_grad_() for x in qkv(gen, dtype=F64))
    torch.library.opcheck(torch.ops.flashattn_ext.fwd.default, (q, k, v, 0.3, -1, 0, True))


def test_deterministic_bitwise(gen):
    q, k, v = (x.requires_grad_() for x in qkv(gen, b=1, sq=130, sk=200, hq=4, hkv=1, d=64))
    dout = randn(gen, 1, 130, 4, 64)
    runs = []
    for _ in range(3):
        out = fa.attention(q, k, v, causal=True)
        runs.append((out,) + torch.autograd.grad(out, (q, k, v), dout))
    for other in runs[1:]:
        for a, b in zip(runs[0], other):
            assert torch.equal(a, b)


def test_concurrent_calls_from_python_threads(gen):
    inputs = [qkv(gen, b=1, sq=77, sk=91, d=32) for _ in range(6)]
    expected = [fa.attention(*x, causal=True) for x in inputs]
    results = [None] * len(inputs)

    def work(i):
        for _ in range(3):
            results[i] = fa.attention(*inputs[i], causal=True)

    threads = [threading.Thread(target=work, args=(i,)) for i in range(len(inputs))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for r, e in zip(results, expected):
        assert torch.equal(r, e)


def test_thread_count_is_settable(gen):
    before = fa.get_num_threads()
    q, k, v = qkv(gen, b=1, sq=64, sk=64, hq=4, hkv=4, d=32)
    ref = fa.attention(q, k, v)
    try:
        fa.set_num_threads(1)
        assert fa.get_num_threads() == 1
        assert torch.equal(fa.attention(q, k, v), ref)
    finally:
        fa.set_num_threads(0)
    assert fa.get_num_threads() == before


def test_build_info():
    info = fa.build_info()
    assert info["version"] == fa.__version__
    assert isinstance(info["cuda_built"], bool) and info["num_threads"] >= 1
    assert info["cpu_isa"] in info["cpu_isas"] and "scalar" in info["cpu_isas"]
