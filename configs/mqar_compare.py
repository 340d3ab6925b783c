"""The comparison sweep of issue "architecture comparison": every kind on MQAR (256 tokens, 16 pairs).

  python -m effattn.compare configs/mqar_compare.py --workdir=runs/compare
  python -m effattn.compare configs/mqar_compare.py --kinds=softmax,gla --workdir=runs/compare

Small models as in Zoology's MQAR figures (Arora et al. 2023): d_model 64, two layers without MLP, the
first a BaseConv (gated short convolution; `layers = 'base_conv,*'`, '*' = the compared kind), which
gives every kind the previous-token information an induction head needs, so that the one attention
layer can learn recall in a CPU-sized budget. Training rows mix (64, 4) and (256, 16) examples
(padded to 256); evaluation is on (256, 16) alone. Softmax keeps the whole KV cache and recalls every
pair; fixed-state kinds recall fewer as their state shrinks.

Measured on 2 CPU cores (benchmarks/results/mqar_compare.md): the 11 kinds take about 25 minutes.
Softmax reached 0.989 after 1000 steps; with `data.mix_per_batch` (one setting per batch, half the
tokens per step) it reached 0.871 after 1000 and 0.919 after 2000 steps, so rows stay mixed. Without
the BaseConv layer (`layers=''`) softmax stayed at 0.04 after 1000 steps, and at lr 1e-2 at 0.01
(an H200 sweep, where this config itself gave 0.64 at step 1000: when recall is learned varies by a
few hundred steps between runs).
"""

from configs import default

COMPARE_KINDS = ('softmax', 'sigmoid', 'linear', 'lightning', 'gla', 'deltanet', 'gated_deltanet',
                 'hedgehog', 'based', 'agent', 'routing')


def get_config():
    c = default.get_config()
    c.name = 'compare'
    c.compare_kinds = COMPARE_KINDS
    c.model.d_model = 64
    c.model.layers = 'base_conv,*'
    c.data.vocab_size = c.model.vocab_size = 512
    c.data.train_settings = ((64, 4), (256, 16))
    c.data.mix_per_batch = False  # measured: row mixing learns faster here (see the docstring)
    c.data.eval_settings = ((256, 16),)
    c.data.seq_len = 256
    c.data.eval_examples = 256
    c.train.steps = 1000
    c.train.batch_size = 32
    c.train.lr = 3e-3
    c.train.eval_every = 0
    c.train.stop_at_accuracy = 0.0
    c.checkpoint.every = 1000
    return c
