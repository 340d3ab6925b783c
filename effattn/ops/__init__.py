"""Pure attention ops (no parameters): one folder per mechanism, each with naive / recurrent / chunk impls.

Conventions (DESIGN.md): q, k, v [B, T, H, D]; recurrent state [B, H, K, V] float32; gates in log space;
`impl='auto' | 'naive' | 'recurrent' | 'chunk' | ...`; linear-family ops return (o, final_state).
"""
from effattn.ops.agent_attention import agent_attention
from effattn.ops.delta_rule import delta_rule
from effattn.ops.gated_delta_rule import gated_delta_rule
from effattn.ops.gla import gla
from effattn.ops.linear_attn import linear_attn
from effattn.ops.sigmoid_attention import sigmoid_attention
from effattn.ops.simple_gla import simple_gla
from effattn.ops.softmax_attention import softmax_attention

__all__ = ['agent_attention', 'delta_rule', 'gated_delta_rule', 'gla', 'linear_attn', 'sigmoid_attention', 'simple_gla',
           'softmax_attention']
