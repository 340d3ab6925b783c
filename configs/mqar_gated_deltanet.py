"""MQAR (Zoology; vocab 8192, 64 tokens, 4 key-value pairs) with a 2-layer gated_deltanet LM on CPU.

Gated DeltaNet (Yang et al. 2025): gated delta rule, short conv, output gate.
Same model and training settings as configs/default.py (no MLP, no weight decay), other mixer,
and up to 8000 steps (it stops at 0.99). On the H100 this config reached eval accuracy 0.99 at step
1300 and stopped there.

  python train.py --config=configs/mqar_gated_deltanet.py --workdir=runs/mqar_gated_deltanet
"""

from configs import default


def get_config():
    c = default.get_config()
    c.name = 'mqar-gated-deltanet'
    c.model.attention.kind = 'gated_deltanet'
    c.train.steps = 8000
    return c
