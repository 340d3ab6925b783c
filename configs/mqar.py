"""MQAR associative recall with any attention kind, sized by a preset string (big_vision style).

  python train.py --config=configs/mqar.py --workdir=runs/mqar
  python train.py --config=configs/mqar.py:kind=sigmoid,size=small --workdir=runs/mqar-sigmoid
  python train.py --config=configs/mqar.py:kind=softmax,size=tiny --config.train.steps=100

Presets: kind=<any registered kind>; size=tiny (smoke test) | small (default) | base.
"""
from configs import base

SIZES = {  # d_model, num_layers, num_heads, train (seq_len, kv_pairs), steps, batch
    'tiny': (32, 2, 2, ((64, 4),), 200, 32),
    'small': (128, 2, 2, ((64, 4), (128, 8)), 3000, 64),
    'base': (128, 2, 2, ((64, 4), (128, 8), (256, 16)), 10000, 128),
}


def parse(arg: str | None) -> dict:
    out = {'kind': 'softmax', 'size': 'small'}
    for item in filter(None, (arg or '').split(',')):
        key, _, value = item.partition('=')
        if key not in out:
            raise ValueError(f'configs/mqar.py: unknown preset {key!r}; known: {", ".join(out)}')
        out[key] = value
    if out['size'] not in SIZES:
        raise ValueError(f'configs/mqar.py: unknown size {out["size"]!r}; known: {", ".join(SIZES)}')
    return out


def get_config(arg=None):
    p = parse(arg)
    d_model, layers, heads, settings, steps, batch = SIZES[p['size']]
    c = base.get_config()
    c.name = f'mqar-{p["kind"]}-{p["size"]}'
    c.model.attention.kind = p['kind']
    c.model.d_model = d_model
    c.model.num_layers = layers
    c.model.attention.num_heads = heads
    c.data.train_settings = settings
    c.data.eval_settings = settings
    c.data.seq_len = max(s[0] for s in settings)
    c.data.eval_examples = 500
    c.train.steps = steps
    c.train.batch_size = batch
    c.model.mlp = 'none'  # Zoology's MQAR blocks: sequence mixer only (see configs/default.py)
    c.train.lr = 3e-3
    c.train.weight_decay = 0.0
    c.train.eval_every = 500
    return c
