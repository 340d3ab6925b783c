"""ListOps classification (LRA; Tay et al. 2021) with any attention kind.

  python train.py --config=configs/listops.py --workdir=runs/listops
  python train.py --config=configs/listops.py:kind=gla --workdir=runs/listops-gla
  python train.py --config=configs/listops.py:lra --workdir=runs/listops-lra   # LRA lengths (GPU)

The default is CPU-sized: trees of 64 < length < 256 tokens (LRA: 500 < length < 2000, padded to
2000, 4 layers of width 512). The generator, operators, depth and arity are LRA's in both.
"""

from configs import base


def get_config(arg=None):
    opts = dict(item.partition('=')[::2] for item in filter(None, (arg or '').split(',')))
    c = base.get_config()
    c.name = f'listops-{opts.get("kind", "softmax")}'
    c.model.attention.kind = opts.get('kind', 'softmax')
    c.model.head = 'classify'
    c.model.num_classes = 10
    c.model.pool = 'mean'
    c.model.vocab_size = c.data.vocab_size = 16
    c.model.d_model = 64
    c.model.num_layers = 2
    c.model.attention.num_heads = 2
    c.data.kind = 'listops'
    c.data.min_length, c.data.max_length, c.data.seq_len = 64, 256, 256
    c.data.eval_examples = 500
    c.train.steps = 1500
    c.train.batch_size = 32
    c.train.lr = 1e-3
    c.train.warmup_steps = 100
    c.train.eval_every = 250
    if 'lra' in opts:
        c.data.min_length, c.data.max_length, c.data.seq_len = 500, 2000, 2000
        c.model.d_model, c.model.num_layers, c.model.attention.num_heads = 512, 4, 8
        c.train.steps, c.train.batch_size, c.train.lr = 5000, 32, 5e-4
    return c
