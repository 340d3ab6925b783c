"""MQAR (Zoology; vocab 8192, 64 tokens, 4 key-value pairs) with a 2-layer deltanet LM on CPU.

DeltaNet (Yang et al. 2024): delta rule, short conv, L2-normalised q and k.
Same model and training settings as configs/default.py (no MLP, no weight decay), other mixer,
and up to 8000 steps (it stops at 0.99). On the H100 this config reached eval accuracy 1.00 at step
400 and stopped there.

  python train.py --config=configs/mqar_deltanet.py --workdir=runs/mqar_deltanet
"""

from configs import default


def get_config():
    c = default.get_config()
    c.name = 'mqar-deltanet'
    c.model.attention.kind = 'deltanet'
    c.train.steps = 8000
    return c
