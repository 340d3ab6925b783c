"""Several hosts (GPU nodes or a TPU pod slice): FSDP over every device of every host.

config.mesh.multihost=True makes effattn call jax.distributed.initialize() before it builds the
mesh; the cluster is detected from the environment (SLURM, Open MPI, Cloud TPU), or set
JAX_COORDINATOR_ADDRESS=host:port, JAX_NUM_PROCESSES and JAX_PROCESS_ID on every host. Run the same
command on every host; each feeds its own shards of the (deterministic) global batch. The mesh
spans all hosts: fsdp=-1 takes all devices not used by data.

  # SLURM, one task per host:
  srun python train.py --config=configs/mesh_multihost.py --workdir=/shared/runs/multihost
  # by hand, on each of 2 hosts (process id 0 and 1):
  JAX_COORDINATOR_ADDRESS=host0:1234 JAX_NUM_PROCESSES=2 JAX_PROCESS_ID=0 \
      python train.py --config=configs/mesh_multihost.py --workdir=/shared/runs/multihost
"""

from configs import mesh_fsdp


def get_config():
    c = mesh_fsdp.get_config()
    c.name = 'mqar-softmax-multihost'
    c.train.batch_size = 256
    c.mesh.data = 1
    c.mesh.fsdp = -1
    c.mesh.multihost = True
    return c
