"""A hybrid stack on MQAR: three GLA layers then one softmax layer, repeated (3:1 linear:softmax).

`config.model.layers` names the kind of each layer and repeats to num_layers (here 4 layers:
gla, gla, gla, softmax). Each layer decodes with its own cache (GLA: recurrent state; softmax: KV
cache). Otherwise configs/default.py (MQAR 64 tokens / 4 pairs, no MLP, no weight decay).

  python train.py --config=configs/hybrid_gla_softmax.py --workdir=runs/hybrid_gla_softmax
  python train.py --config=configs/hybrid_gla_softmax.py --config.model.num_layers=8   # 6 gla + 2 softmax
"""

from configs import default


def get_config():
    c = default.get_config()
    c.name = 'hybrid-gla-softmax'
    c.model.attention.kind = 'gla'
    c.model.layers = 'gla,gla,gla,softmax'
    c.model.num_layers = 4
    return c
