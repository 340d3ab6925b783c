"""Hedgehog linear attention with LoLCATs' sliding-window softmax (Zhang et al. 2025), on MQAR.

Each query sees its last `window` keys (itself included) through softmax scores and every earlier
key through Hedgehog feature maps, all under one normaliser with a learned per-head window factor
(sigmoid, starts at 0.1). With an 8-token window most key-value pairs of the 64-token MQAR
sequences lie outside it and must be recalled through the linear part. Otherwise
configs/default.py (no MLP, no weight decay).

  python train.py --config=configs/hedgehog_window.py --workdir=runs/hedgehog_window
  python train.py --config=configs/hedgehog_window.py --config.model.attention.window=16
"""

from configs import default


def get_config():
    c = default.get_config()
    c.name = 'hedgehog-window'
    c.model.attention.kind = 'hedgehog'
    c.model.attention.window = 8
    return c
