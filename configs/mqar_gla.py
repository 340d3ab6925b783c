"""MQAR (Zoology; vocab 8192, 64 tokens, 4 key-value pairs) with a 2-layer gla LM on CPU.

GLA (Yang et al. 2024): low-rank data-dependent decay, gated RMSNorm output.
Same model and training settings as configs/default.py (no MLP, no weight decay), other mixer,
and up to 8000 steps (it stops at 0.99). On the H100 this config reached eval accuracy 0.89 at step
5000, 0.91 at 5500 and 0.95 at 8000
(pure GLA needs the long schedule; ~1 s/step on 2 loaded CPU cores).

  python train.py --config=configs/mqar_gla.py --workdir=runs/mqar_gla
"""

from configs import default


def get_config():
    c = default.get_config()
    c.name = 'mqar-gla'
    c.model.attention.kind = 'gla'
    c.train.steps = 8000
    return c
