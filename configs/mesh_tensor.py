"""Tensor (Megatron) + FSDP + data parallelism: mesh fsdp=2 x tensor=2 x data=(the rest).

tensor=2 splits the heads (wq, wk, wv by output, wo by input) and the SwiGLU hidden (w1, w3 by
output, w2 by input) over 2 devices; the head count and MLP width must divide by it (dimensions
that do not stay whole, which is correct but slower). data=-1 takes the remaining devices
(2 on 8 GPUs). Same model on one device: drop the mesh settings.

  python train.py --config=configs/mesh_tensor.py --workdir=runs/mesh_tensor
  XLA_FLAGS=--xla_force_host_platform_device_count=8 python train.py \
      --config=configs/mesh_tensor.py --workdir=/tmp/mesh_tensor --config.train.steps=50
"""

from configs import base


def get_config():
    c = base.get_config()
    c.name = 'mqar-gla-tensor'
    c.model.attention.kind = 'gla'
    c.model.d_model = 256
    c.model.num_layers = 4
    c.model.attention.num_heads = 4  # divisible by tensor
    c.data.train_settings = ((256, 16),)
    c.data.eval_settings = ((256, 16),)
    c.data.seq_len = 256
    c.data.eval_examples = 512
    c.train.batch_size = 64
    c.train.steps = 5000
    c.train.eval_every = 500
    c.mesh.data = -1
    c.mesh.fsdp = 2
    c.mesh.tensor = 2
    return c
