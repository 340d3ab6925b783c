"""The embedded default run: MQAR (Zoology) with a 2-layer softmax LM on CPU, no download.

python train.py                      # uses this file, workdir under ./runs/
python train.py --config=configs/default.py --workdir=runs/default
"""

from configs import base


def get_config():
    c = base.get_config()
    c.name = 'mqar-softmax'
    c.model.attention.kind = 'softmax'
    c.model.d_model = 64
    c.model.num_layers = 2
    c.model.attention.num_heads = 2
    c.data.train_settings = ((64, 4),)
    c.data.eval_settings = ((64, 4),)
    c.data.seq_len = 64
    c.train.steps = 2000
    c.train.batch_size = 64
    c.train.lr = 3e-3
    c.train.eval_every = 100
    c.train.stop_at_accuracy = 0.99
    c.data.eval_examples = 500
    return c
