"""Long sequences split over devices: a GLA/softmax hybrid on 4096-token MQAR, mesh sequence=4.

With config.mesh.sequence > 1 every attention op runs sequence-parallel: linear-family layers with
LASP-2 (one all-gather of per-device states, whose size does not depend on T), softmax layers by
all-gathering K and V. config.data.seq_len must be a multiple of mesh.sequence. data=-1 uses the
remaining devices for the batch (2 on 8 GPUs).

  python train.py --config=configs/mesh_sequence.py --workdir=runs/mesh_sequence
  XLA_FLAGS=--xla_force_host_platform_device_count=8 python train.py \
      --config=configs/mesh_sequence.py --workdir=/tmp/mesh_sequence \
      --config.data.seq_len=256 --config.data.train_settings='((256,16),)' \
      --config.data.eval_settings='((256,16),)' --config.train.steps=20
"""

from configs import base


def get_config():
    c = base.get_config()
    c.name = 'mqar-hybrid-sequence'
    c.model.attention.kind = 'gla'
    c.model.layers = 'gla,gla,gla,softmax'
    c.model.d_model = 256
    c.model.num_layers = 4
    c.model.attention.num_heads = 4
    c.data.train_settings = ((4096, 256),)
    c.data.eval_settings = ((4096, 256),)
    c.data.seq_len = 4096
    c.data.eval_examples = 256
    c.train.batch_size = 16
    c.train.steps = 5000
    c.train.eval_every = 500
    c.mesh.data = -1
    c.mesh.sequence = 4
    return c
