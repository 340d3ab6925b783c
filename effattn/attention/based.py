"""Based's linear attention layer: Taylor feature map on narrow q, k (ALGORITHMS.md section 3)."""

from __future__ import annotations

from flax import nnx

from effattn.attention import feature_maps, linear_family
from effattn.attention.linear import LinearAttention
from effattn.attention.registry import register
from effattn.config import Config, ModelConfig
from effattn.ops.linear_attn import REGISTRY


@register('based')
class BasedAttention(LinearAttention):
    """Taylor linear attention (Arora et al. 2024, ICML, "Simple linear attention language models
    balance the recall-throughput tradeoff"; HazyResearch/based `LinearAttention` + `TaylorExp`).

    q, k = x W_q, x W_k projected to F' = attention.feature_dim per head (0: 16, the paper's
    choice), v = x W_v (head_dim per head); phi = [1, x / F'^(1/4), vec(x x^T) / sqrt(2 F')] (width
    1 + F' + F'^2 = 273 for F' = 16), so phi(q).phi(k) = 1 + q.k / sqrt(F') + (q.k)^2 / (2 F');
    o_t = phi(q_t) S_t / (phi(q_t) . z_t + eps), scale 1, always normalised (phi(q).phi(k) >= 1/2);
    then W_o. No RoPE, no output norm, as in the reference.

    The Based *model* is an inter-layer hybrid (based-360m.yaml: of every 5 layers, one of this
    kind, one sliding-window softmax layer with RoPE, window 256, and three gated short-conv
    `base_conv` layers), so the sliding window and the short convolution are separate kinds here:
    configs/based.py stacks them with `config.model.layers`; configs/mqar_based.py is Zoology's
    2-layer MQAR Based (base_conv, based). Decoding carries the fp32 state [B, H, 1+F'+F'^2, V+1].
    """

    default_feature_dim = 16

    def __init__(self, cfg: ModelConfig, layer_idx: int, *, train_len: int, rngs: nnx.Rngs):
        del layer_idx, train_len
        head_k = cfg.attention.feature_dim or self.default_feature_dim
        self._build(cfg, rngs, head_k, 'taylor', normalize=True, scale=1.0)

    @classmethod
    def validate_config(cls, cfg: Config) -> None:
        linear_family.validate_common(cfg, 'based', REGISTRY)
        feature_maps.check_feature_dim(cfg)
