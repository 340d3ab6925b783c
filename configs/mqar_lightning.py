"""MQAR (Zoology; vocab 8192, 64 tokens, 4 key-value pairs) with a 2-layer lightning LM on CPU.

Lightning attention (TransNormerLLM layer): constant per-layer decay, SRMSNorm, output gate.
Same model and training settings as configs/default.py (no MLP, no weight decay), other mixer.

  python train.py --config=configs/mqar_lightning.py --workdir=runs/mqar_lightning
"""

from configs import default


def get_config():
    c = default.get_config()
    c.name = 'mqar-lightning'
    c.model.attention.kind = 'lightning'
    return c
