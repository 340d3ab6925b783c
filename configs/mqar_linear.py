"""MQAR (Zoology; vocab 8192, 64 tokens, 4 key-value pairs) with a 2-layer linear LM on CPU.

Linear attention (Katharopoulos et al. 2020): elu+1 feature map, normalised.
Same model and training settings as configs/default.py (no MLP, no weight decay), other mixer.

  python train.py --config=configs/mqar_linear.py --workdir=runs/mqar_linear
"""

from configs import default


def get_config():
    c = default.get_config()
    c.name = 'mqar-linear'
    c.model.attention.kind = 'linear'
    return c
