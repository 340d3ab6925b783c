"""The comparison sweep of issue "architecture comparison": every kind on MQAR (256 tokens, 16 pairs).

  python -m effattn.compare configs/mqar_compare.py --workdir=runs/compare
  python -m effattn.compare configs/mqar_compare.py --kinds=softmax,gla --workdir=runs/compare

Small models (d_model 64, 2 layers, no MLP) as in Zoology's MQAR figures, where the recurrent-state
size separates the kinds: softmax keeps the whole KV cache and recalls every pair; fixed-state kinds
recall fewer as their state shrinks.
"""

from configs import default


def get_config():
    c = default.get_config()
    c.name = 'compare'
    c.model.d_model = 64
    c.data.train_settings = ((256, 16),)
    c.data.eval_settings = ((256, 16),)
    c.data.seq_len = 256
    c.data.eval_examples = 256
    c.train.steps = 600
    c.train.batch_size = 32
    c.train.eval_every = 0
    c.train.stop_at_accuracy = 0.0
    c.checkpoint.every = 600
    return c
