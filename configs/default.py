"""The embedded default run: MQAR (Zoology; vocab 8192, 64 tokens, 4 key-value pairs) with a 2-layer
softmax LM on CPU, no download. Stops early once the evaluation accuracy reaches 0.99.

  python train.py                      # uses this file, workdir under ./runs/
  python train.py --config=configs/default.py --workdir=runs/default

As in Zoology's MQAR models, the blocks have no MLP (sequence mixer only) and no weight decay: on
CPU-sized budgets this learns the recall circuit within ~1000 steps, where the same model with a
SwiGLU MLP and weight decay 0.1 was still at ~20% accuracy after 2000 steps.
"""

from configs import base


def get_config():
    c = base.get_config()
    c.name = 'mqar-softmax'
    c.model.attention.kind = 'softmax'
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
