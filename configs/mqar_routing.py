"""MQAR (Zoology) with a 2-layer Routing Transformer LM on CPU, no download.

Routing attention (Roy et al. 2021): one local head (causal window 8) and one routing head per
layer (online k-means, 4 clusters, causal argmax routing; ALGORITHMS.md 8). The centroids' EMA
decay is lowered from the paper's 0.999 so that they move within a short CPU run. Everything else as
configs/default.py.

python train.py --config=configs/mqar_routing.py --workdir=runs/mqar_routing
python train.py --config=configs/mqar_routing.py --workdir=/tmp/routing --config.train.steps=300
"""

from configs import default


def get_config():
    c = default.get_config()
    c.name = 'mqar-routing'
    c.model.attention.kind = 'routing'
    c.model.attention.local_heads = 1
    c.model.attention.window = 8
    c.model.attention.num_clusters = 4
    c.model.attention.commitment_weight = 1e-4
    c.model.attention.centroid_decay = 0.99
    return c
