"""sigmoid_attention impl='kernel': FlashSigmoid (Ramapuram et al. 2024, arXiv 2409.04431, Sec. 3)
as the Pallas flash kernel shared with softmax_attention (softmax_attention/pallas.py), with the
sigmoid score o = (sigma(s QK^T + b) M) V, band-limited loops and a custom VJP (db included)."""

from __future__ import annotations

from effattn.ops.softmax_attention.pallas import flash_attention


def sigmoid_attention_kernel(
    q, k, v, *, causal, scale, bias, window, segment_ids, config=None, interpret=None
):
    if segment_ids is not None:
        raise NotImplementedError('the sigmoid attention kernel does not take segment_ids')
    return flash_attention(
        q,
        k,
        v,
        score='sigmoid',
        causal=causal,
        scale=scale,
        window=window,
        bias=bias,
        config=config,
        interpret=interpret,
    )
