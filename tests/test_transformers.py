"""Hugging Face transformers models on flashattn_ext (integrations.transformers) against the same
models on their own eager attention: small random configurations built here (no downloads),
float32 logits and every parameter gradient (docs/semantics.md section 7), greedy generation
with a KV cache on left-padded batches, packed sequences against each sequence alone, attention
weights, and what falls back or is refused."""

from __future__ import annotations

import copy
import os
import warnings
from typing import Callable, Dict, Optional

import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # nothing here may reach the hub
transformers = pytest.importorskip(
    "transformers", reason="transformers is not installed (pip install flashattn_ext[transformers])")

from attn_testing import assert_close  # noqa: E402
from flashattn_ext import _dispatch, _torch_ops  # noqa: E402
from flashattn_ext.integrations.transformers import ATTENTION_NAME, register  # noqa: E402

VOCAB = 97
# The initialiser scale: at 0.5 the logits reach 50 to 60 and the float32 models turn chaotic, so
# that one float32 attention against another is a ratio of two amplified noise samples (torch's
# own sdpa erred up to 3.4x eager on BERT gradients); at 0.2 the worst ratio of our error to the
# tolerance below was 0.37 over 48 padded and unpadded runs of BERT, BART and Llama.
INIT = 0.2
COMMON = dict(vocab_size=VOCAB, hidden_size=64, intermediate_size=96, num_hidden_layers=2,
              num_attention_heads=4, max_position_embeddings=128, initializer_range=INIT,
              pad_token_id=0, bos_token_id=1, eos_token_id=2)

CONFIGS: Dict[str, Callable[[], "transformers.PreTrainedConfig"]] = {
    "llama": lambda: transformers.LlamaConfig(num_key_value_heads=2, **COMMON),
    "qwen2": lambda: transformers.Qwen2Config(num_key_value_heads=2, use_sliding_window=True,
                                              sliding_window=5, max_window_layers=1, **COMMON),
    "mistral": lambda: transformers.MistralConfig(num_key_value_heads=1, sliding_window=6,
                                                  **COMMON),
    "bert": lambda: transformers.BertConfig(vocab_size=VOCAB, hidden_size=64, num_hidden_layers=2,
                                            num_attention_heads=4, intermediate_size=96,
                                            hidden_dropout_prob=0.0, initializer_range=INIT,
                                            attention_probs_dropout_prob=0.0, pad_token_id=0),
    "bart": lambda: transformers.BartConfig(vocab_size=VOCAB, d_model=64, encoder_layers=2,
                                            decoder_layers=2, encoder_attention_heads=4,
                                            decoder_attention_heads=4, encoder_ffn_dim=96,
                                            decoder_ffn_dim=96, dropout=0.0, init_std=INIT,
                                            attention_dropout=0.0, activation_dropout=0.0,
                                            max_position_embeddings=128, pad_token_id=0,
                                            bos_token_id=1, eos_token_id=2,
                                            decoder_start_token_id=2, forced_eos_token_id=None),
}
MODELS = {"llama": "LlamaForCausalLM", "qwen2": "Qwen2ForCausalLM",
          "mistral": "MistralForCausalLM", "bert": "BertForMaskedLM",
          "bart": "BartForConditionalGeneration"}


@pytest.fixture(scope="module", autouse=True)
def registered():
    return register()


def pair(name: str, gen: torch.Generator):
    """The model on eager attention and an exact copy on flashattn_ext (float32)."""
    torch.manual_seed(int(torch.randint(0, 2**31, (1,), generator=gen)))
    cls = getattr(transformers, MODELS[name])
    eager = cls._from_config(CONFIGS[name](), attn_implementation="eager", dtype=torch.float32)
    ours = copy.deepcopy(eager)
    ours.set_attn_implementation(ATTENTION_NAME)
    assert ours.config._attn_implementation == ATTENTION_NAME
    assert eager.config._attn_implementation == "eager"
    return eager.eval(), ours.eval()


def token_ids(gen: torch.Generator, b: int, s: int) -> torch.Tensor:
    return torch.randint(3, VOCAB, (b, s), generator=gen)


def padding_mask(b: int, s: int, pads) -> torch.Tensor:
    """A (B, S) attention mask: positive pads on the left, negative on the right."""
    mask = torch.ones(b, s, dtype=torch.long)
    for i, p in enumerate(pads):
        if p > 0:
            mask[i, :p] = 0
        elif p < 0:
            mask[i, p:] = 0
    return mask


class KernelCalls:
    """Counts flashattn_ext's kernel calls (``count``, of which ``varlen`` variable-length ones)
    and turns its fallback warnings into errors."""

    def __init__(self, monkeypatch):
        self.count = self.varlen = 0
        apply, apply_varlen = _torch_ops.apply, _torch_ops.apply_varlen

        def counted(*args, **kwargs):
            self.count += 1
            return apply(*args, **kwargs)

        def counted_varlen(*args, **kwargs):
            self.count += 1
            self.varlen += 1
            return apply_varlen(*args, **kwargs)

        monkeypatch.setattr(_torch_ops, "apply", counted)
        monkeypatch.setattr(_torch_ops, "apply_varlen", counted_varlen)

    def __enter__(self):
        self._warnings = warnings.catch_warnings()
        self._warnings.__enter__()
        warnings.filterwarnings("error", message="flashattn_ext")
        return self

    def __exit__(self, *exc):
        self._warnings.__exit__(*exc)


def forward(model, name: str, ids: torch.Tensor, mask: Optional[torch.Tensor],
            dec_ids: torch.Tensor, dec_mask: Optional[torch.Tensor], **kw):
    if name == "bart":
        return model(input_ids=ids, attention_mask=mask, decoder_input_ids=dec_ids,
                     decoder_attention_mask=dec_mask, **kw)
    return model(input_ids=ids, attention_mask=mask, **kw)


def test_register_name_and_set_attn_implementation(gen):
    """register() returns ATTENTION_NAME; from_config and set_attn_implementation take it. A
    name containing "flash" is read by transformers as a FlashAttention or hub-kernel request
    and refused offline, which is why the name holds none."""
    assert register() == ATTENTION_NAME and "flash" not in ATTENTION_NAME
    model = transformers.AutoModelForCausalLM.from_config(CONFIGS["llama"](),
                                                          attn_implementation=ATTENTION_NAME)
    assert model.config._attn_implementation == ATTENTION_NAME
    model.set_attn_implementation("eager")
    model.set_attn_implementation(ATTENTION_NAME)
    assert model.config._attn_implementation == ATTENTION_NAME
    flash_name = "flashattn_ext"
    from transformers.masking_utils import AttentionMaskInterface, sdpa_mask
    transformers.AttentionInterface.register(flash_name, lambda *a, **k: None)
    AttentionMaskInterface.register(flash_name, sdpa_mask)
    try:
        with pytest.raises(ValueError, match="flash attention implementation"):
            transformers.AutoModelForCausalLM.from_config(CONFIGS["llama"](),
                                                          attn_implementation=flash_name)
    finally:
        transformers.AttentionInterface._global_mapping.pop(flash_name)
        AttentionMaskInterface._global_mapping.pop(flash_name)


def assert_model_close(ours: torch.Tensor, naive: torch.Tensor, ref64: torch.Tensor,
                       what: str) -> None:
    """docs/semantics.md section 7's rule for a whole model: against the float64 reference, the
    float32 model on flashattn_ext errs at most twice as much as the same float32 model on its
    own eager attention, plus the float32 tolerance 2e-5 * mag."""
    ref = ref64.double()
    err = (ours.double() - ref).abs().max().item()
    err_naive = (naive.double() - ref).abs().max().item()
    tol = 2 * err_naive + 2e-5 * max(1.0, ref.abs().max().item())
    assert err <= tol, f"{what}: max error {err:.3e} > tolerance {tol:.3e} (eager: {err_naive:.3e})"


def joined(parts):
    """The reference of a batch from its sequences run alone: their logits concatenated, their
    parameter gradients summed."""
    ref = torch.cat([p[0] for p in parts])
    return ref, [None if g[0] is None else sum(g) for g in zip(*[p[1] for p in parts])]


def assert_logits_and_gradients_close(model, got, grads, naive, naive_grads, ref, ref_grads):
    """assert_model_close on the logits and on every parameter's gradient."""
    assert_model_close(got, naive, ref, "logits")
    for (pname, _), g, n, r in zip(model.named_parameters(), grads, naive_grads, ref_grads):
        assert (g is None) == (r is None), pname
        if g is not None:
            assert_model_close(g, n, r, pname)


PADS = {"llama": (3, -2, 0), "qwen2": (3, -2, 0), "mistral": (4, 0, -3),  # left, right, none
        "bert": (-3, -2, 0), "bart": (-3, -2, 0)}  # absolute positions: right padding only


def run(model, name: str, ids, mask, dec_ids, dec_mask, weight):
    """Logits at the real tokens (N, V) and the gradients of sum(logits * weight)."""
    logits = forward(model, name, ids, mask, dec_ids, dec_mask).logits
    real = dec_mask if name == "bart" else mask
    real = torch.ones(logits.shape[:2], dtype=torch.bool) if real is None else real.bool()
    loss = (logits * (weight * real[..., None]).to(logits.dtype)).sum()
    return logits[real], torch.autograd.grad(loss, list(model.parameters()), allow_unused=True)


@pytest.mark.parametrize("name", list(MODELS))
@pytest.mark.parametrize("padded", [False, True], ids=["unpadded", "padded"])
def test_logits_and_gradients_match_eager(gen, monkeypatch, name, padded):
    """Logits at every real token and the gradient of every parameter, float32, against the
    model in float64 on its eager attention (the reference) with the same model in float32 on
    eager attention as the naive computation. Padded batches mix left padding, right padding
    and none (right only where positions are absolute; BART: its encoder and decoder inputs);
    their reference is each sequence run alone, unpadded, in float64, which is what padding
    must not change (rotary positions are relative, so left padding keeps it)."""
    eager, ours = pair(name, gen)
    if name == "llama":  # a scale other than 1/sqrt(head_dim) reaches the kernels too
        for m in (eager, ours):
            for layer in m.model.layers:
                layer.self_attn.scaling = 0.37
    eager64 = copy.deepcopy(eager).double()
    b, s, s_dec = 3, 11, 7
    ids, dec_ids = token_ids(gen, b, s), token_ids(gen, b, s_dec)
    mask = padding_mask(b, s, PADS[name]) if padded else None
    dec_mask = padding_mask(b, s_dec, (0, -3, -1)) if padded and name == "bart" else None
    weight = torch.randn(b, s_dec if name == "bart" else s, VOCAB, generator=gen)
    args = (ids, mask, dec_ids, dec_mask, weight)
    with KernelCalls(monkeypatch) as calls:
        got, grads = run(ours, name, *args)
    assert calls.count > 0
    naive, naive_grads = run(eager, name, *args)
    if not padded:
        ref, ref_grads = run(eager64, name, *args)
    else:  # each sequence alone, without padding; the gradients of the batch are their sum
        parts = []
        for i in range(b):
            keep = mask[i].bool()
            if name == "bart":
                dec_keep = dec_mask[i].bool()
                one = (ids[i:i + 1, keep], None, dec_ids[i:i + 1, dec_keep], None,
                       weight[i:i + 1, dec_keep])
            else:
                one = (ids[i:i + 1, keep], None, None, None, weight[i:i + 1, keep])
            parts.append(run(eager64, name, *one))
        ref, ref_grads = joined(parts)
    assert_logits_and_gradients_close(ours, got, grads, naive, naive_grads, ref, ref_grads)


@pytest.mark.parametrize("name", ["llama", "qwen2", "mistral", "bart"])
def test_greedy_generation_with_kv_cache_matches_eager(gen, monkeypatch, name):
    """Left-padded batches (right-padded encoder input for BART): prefill, then one query per
    step against the cache; windows of 5 and 6 tokens are passed by the 18 tokens of Qwen2 and
    Mistral."""
    eager, ours = pair(name, gen)
    ids = token_ids(gen, 3, 10)
    pads = (0, -3, -1) if name == "bart" else (0, 3, 6)
    mask = padding_mask(3, 10, pads)
    kw = dict(max_new_tokens=8, do_sample=False, use_cache=True, min_new_tokens=8,
              pad_token_id=0)
    with KernelCalls(monkeypatch) as calls:
        got = ours.generate(ids, attention_mask=mask, **kw)
    assert calls.count > 0
    assert torch.equal(got, eager.generate(ids, attention_mask=mask, **kw))


def test_output_attentions_are_the_softmax(gen, monkeypatch):
    eager, ours = pair("llama", gen)
    ids, mask = token_ids(gen, 3, 9), padding_mask(3, 9, (2, -3, 0))
    with KernelCalls(monkeypatch):
        got = ours(input_ids=ids, attention_mask=mask, output_attentions=True).attentions
    ref = eager(input_ids=ids, attention_mask=mask, output_attentions=True).attentions
    assert len(got) == len(ref) == 2
    rows = mask.bool()[:, None, :, None]  # padded query rows: eager spreads them, ours are 0
    for a, r in zip(got, ref):
        assert_close(torch.where(rows, a, 0), torch.where(rows, r, 0), None, "weights")


# Rows of sequences packed back to back (the lengths sum to the row's length): windows of 5
# (Qwen2's second layer) and 6 (Mistral) are passed by the longer sequences.
PACKS = {"llama": [(4, 9, 6)], "qwen2": [(8, 3, 7)], "mistral": [(9, 4), (2, 6, 5)]}


def packed_positions(rows) -> torch.Tensor:
    return torch.stack([torch.cat([torch.arange(n) for n in row]) for row in rows])


@pytest.mark.parametrize("name", list(PACKS))
def test_packed_sequences_match_each_sequence_alone(gen, monkeypatch, name):
    """position_ids restarting at 0 inside a row, no attention_mask and no cache (transformers'
    packed format): transformers' block-diagonal mask runs as one variable-length call per
    layer, and the logits and every parameter gradient (float32) match each sequence run alone
    in float64 on eager attention, as closely as the packed float32 model on eager does."""
    eager, ours = pair(name, gen)
    if name == "llama":
        for m in (eager, ours):
            for layer in m.model.layers:
                layer.self_attn.scaling = 0.37
    eager64 = copy.deepcopy(eager).double()
    rows = PACKS[name]
    pos = packed_positions(rows)
    ids = token_ids(gen, *pos.shape)
    weight = torch.randn(*pos.shape, VOCAB, generator=gen)

    def run_packed(model, ids, pos, weight):
        logits = model(input_ids=ids, position_ids=pos, use_cache=False).logits
        loss = (logits * weight.to(logits.dtype)).sum()
        return logits.flatten(0, 1), torch.autograd.grad(loss, list(model.parameters()),
                                                         allow_unused=True)

    with KernelCalls(monkeypatch) as calls:
        got, grads = run_packed(ours, ids, pos, weight)
    assert calls.varlen == calls.count == len(ours.model.layers)
    naive, naive_grads = run_packed(eager, ids, pos, weight)
    parts = []
    for r, row in enumerate(rows):
        start = 0
        for n in row:
            one = slice(start, start + n)
            parts.append(run_packed(eager64, ids[r:r + 1, one], pos[r:r + 1, one],
                                    weight[r:r + 1, one]))
            start += n
    assert_logits_and_gradients_close(ours, got, grads, naive, naive_grads, *joined(parts))


def test_masks_neither_band_nor_packing_run_in_the_kernels(gen):
    """A 4-D (additive) mask passed by the caller that is block-diagonal with a causal block
    beside a bidirectional one is neither a band nor packed sequences under one band: the
    kernels read it as an explicit mask, with no fallback warning."""
    eager, ours = pair("llama", gen)
    ids = token_ids(gen, 2, 10)
    keep = torch.zeros(2, 1, 10, 10, dtype=torch.bool)
    keep[:, :, :4, :4] = torch.ones(4, 4, dtype=torch.bool).tril()
    keep[:, :, 4:, 4:] = True
    mask = torch.zeros(keep.shape).masked_fill(~keep, torch.finfo(torch.float32).min)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        got = ours(input_ids=ids, attention_mask=mask, use_cache=False).logits
    assert_close(got, eager(input_ids=ids, attention_mask=mask, use_cache=False).logits, None,
                 "logits")


@pytest.mark.skipif(_dispatch._emu_module() is None, reason="this build has no emulator")
def test_packed_sequences_run_on_the_emulated_cuda_kernels(gen, monkeypatch):
    """Packed sequences in float16 on the emulated CUDA variable-length kernels: no fallback
    warning, and logits within the float16 rule of the float64 model (against the error of the
    same model in float16 with transformers' eager attention)."""
    eager, ours = pair("llama", gen)
    pos = packed_positions(PACKS["llama"])
    ids = token_ids(gen, *pos.shape)
    ref = eager.double()(input_ids=ids, position_ids=pos, use_cache=False).logits
    naive = eager.half()(input_ids=ids, position_ids=pos, use_cache=False).logits
    monkeypatch.setenv("FLASHATTN_EXT_BACKEND", "emu")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        got = ours.half()(input_ids=ids, position_ids=pos, use_cache=False).logits
    assert_close(got, ref, naive, "logits")


def test_gemma2_softcap_matches_eager(gen, monkeypatch):
    """Gemma 2's attention softcap runs in the kernels: logits and parameter gradients against
    the model in float64 on eager attention (the float32 eager model is the naive computation).
    The softcap is small enough to bend the scores: ignoring it fails the comparison."""
    torch.manual_seed(int(torch.randint(0, 2**31, (1,), generator=gen)))
    cfg = transformers.Gemma2Config(num_key_value_heads=2, head_dim=16, query_pre_attn_scalar=1,
                                    attn_logit_softcapping=0.7, sliding_window=4, **COMMON)
    eager = transformers.Gemma2ForCausalLM._from_config(cfg, attn_implementation="eager",
                                                        dtype=torch.float32).eval()
    ours = copy.deepcopy(eager)
    ours.set_attn_implementation(ATTENTION_NAME)
    eager64 = copy.deepcopy(eager).double()
    ids = token_ids(gen, 2, 9)

    def run(model):
        logits = model(input_ids=ids).logits
        loss = (logits * torch.linspace(-1, 1, logits.shape[-1], dtype=logits.dtype)).sum()
        grads = torch.autograd.grad(loss, [p for p in model.parameters() if p.requires_grad],
                                    allow_unused=True)
        return logits, grads
    with KernelCalls(monkeypatch) as calls:
        got, got_grads = run(ours)
    assert calls.count > 0
    naive, naive_grads = run(eager)
    ref, ref_grads = run(eager64)
    assert_close(got, ref, naive, "logits", float32_naive=True)
    for i, (g, r, n) in enumerate(zip(got_grads, ref_grads, naive_grads)):
        if r is not None:
            assert_close(g, r, n, f"grad {i}", float32_naive=True)
