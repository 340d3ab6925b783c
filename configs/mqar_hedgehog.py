"""MQAR (Zoology; vocab 8192, 64 tokens, 4 key-value pairs) with a 2-layer hedgehog LM on CPU.

Hedgehog (Zhang et al. 2024): linear attention with learned per-head feature maps
[softmax(x W), softmax(-x W)] (W starts as the identity), RoPE'd q and k, no sliding window
(configs/hedgehog_window.py adds LoLCATs' window). Same model and training settings as
configs/default.py (no MLP, no weight decay), other mixer.

  python train.py --config=configs/mqar_hedgehog.py --workdir=runs/mqar_hedgehog
"""

from configs import default


def get_config():
    c = default.get_config()
    c.name = 'mqar-hedgehog'
    c.model.attention.kind = 'hedgehog'
    return c
