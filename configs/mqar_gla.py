"""MQAR (Zoology; vocab 8192, 64 tokens, 4 key-value pairs) with a 2-layer gla LM on CPU.

GLA (Yang et al. 2024): low-rank data-dependent decay, gated RMSNorm output.
Same model and training settings as configs/default.py (no MLP, no weight decay), other mixer.

  python train.py --config=configs/mqar_gla.py --workdir=runs/mqar_gla
"""

from configs import default


def get_config():
    c = default.get_config()
    c.name = 'mqar-gla'
    c.model.attention.kind = 'gla'
    return c
