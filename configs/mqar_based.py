"""MQAR (Zoology; vocab 8192, 64 tokens, 4 key-value pairs) with Zoology's 2-layer Based model on CPU.

As in Zoology's Based MQAR runs (arxiv24_based_figure2 configs: Hybrid([BaseConv, Based])):
layer 0 a gated short convolution (`base_conv`, kernel 3), layer 1 Taylor linear attention
(`based`, q/k projected to feature_dim 16 per head, feature width 273). Same training settings as
configs/default.py (no MLP, no weight decay).

  python train.py --config=configs/mqar_based.py --workdir=runs/mqar_based
"""

from configs import default


def get_config():
    c = default.get_config()
    c.name = 'mqar-based'
    c.model.attention.kind = 'based'
    c.model.layers = 'base_conv,based'
    c.model.attention.feature_dim = 16
    c.model.attention.conv_size = 3
    return c
