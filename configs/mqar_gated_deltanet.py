"""MQAR (Zoology; vocab 8192, 64 tokens, 4 key-value pairs) with a 2-layer gated_deltanet LM on CPU.

Gated DeltaNet (Yang et al. 2025): gated delta rule, short conv, output gate.
Same model and training settings as configs/default.py (no MLP, no weight decay), other mixer.

python train.py --config=configs/mqar_gated_deltanet.py --workdir=runs/mqar_gated_deltanet
python train.py --config=configs/mqar_gated_deltanet.py --workdir=/tmp/gated_deltanet --config.train.steps=300
"""

from configs import base


def get_config():
    c = base.get_config()
    c.name = 'mqar-gated-deltanet'
    c.model.attention.kind = 'gated_deltanet'
    c.model.d_model = 128
    c.model.num_layers = 2
    c.model.mlp = 'none'
    c.model.attention.num_heads = 2
    c.data.train_settings = ((64, 4),)
    c.data.eval_settings = ((64, 4),)
    c.data.seq_len = 64
    c.data.eval_examples = 500
    c.train.steps = 3000
    c.train.batch_size = 64
    c.train.lr = 3e-3
    c.train.weight_decay = 0.0
    c.train.eval_every = 100
    c.train.stop_at_accuracy = 0.99
    return c
