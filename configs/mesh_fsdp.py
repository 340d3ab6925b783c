"""Several GPUs on one host: data + FSDP parallelism on MQAR (8 devices: data=2 x fsdp=4).

FSDP shards every parameter matrix and its AdamW moments 4 ways (each device holds ~1/4 of them)
and splits the batch 8 ways (over data and fsdp). The product of the mesh axes must equal the
number of devices; set one axis to -1 to take whatever the others leave.

  python train.py --config=configs/mesh_fsdp.py --workdir=runs/mesh_fsdp
  python train.py --config=configs/mesh_fsdp.py --config.mesh.data=-1 --config.mesh.fsdp=8
  # on CPU, 8 emulated devices:
  XLA_FLAGS=--xla_force_host_platform_device_count=8 python train.py \
      --config=configs/mesh_fsdp.py --workdir=/tmp/mesh_fsdp --config.train.steps=50
"""

from configs import base


def get_config():
    c = base.get_config()
    c.name = 'mqar-softmax-fsdp'
    c.model.attention.kind = 'softmax'
    c.model.d_model = 256
    c.model.num_layers = 4
    c.model.attention.num_heads = 4
    c.data.train_settings = ((256, 16),)
    c.data.eval_settings = ((256, 16),)
    c.data.seq_len = 256
    c.data.eval_examples = 512
    c.train.batch_size = 64  # a multiple of data * fsdp = 8
    c.train.steps = 5000
    c.train.eval_every = 500
    c.mesh.data = 2
    c.mesh.fsdp = 4
    return c
