"""MQAR with Zoology's settings (Arora et al. 2024, arxiv24_based_figure2 configs): a GPU-sized run.

  python train.py --config=configs/mqar_zoology.py --workdir=runs/zoology
  for lr in 1e-4 4.6e-4 2.2e-3 1e-2; do   # Zoology's learning-rate sweep (LR_SWEEP)
    python train.py --config=configs/mqar_zoology.py --workdir=runs/zoology-lr$lr --config.train.lr=$lr
  done

Train mixture (seq_len, kv_pairs, examples): (64,4,100k), (128,8,20k), (256,16|32|64, 20k each),
weighted by example counts; test 1k each of (64,4), (64,8), (64,16), (128,32), (256,64), (512,128),
(1024,256); 2 layers, batch 256, vocab 8192, 64 epochs of the 180k training examples.
"""
import numpy as np

from configs import base

LR_SWEEP = tuple(float(x) for x in np.logspace(-4, -2, 4))
TRAIN = ((64, 4, 100_000), (128, 8, 20_000), (256, 16, 20_000), (256, 32, 20_000), (256, 64, 20_000))
TEST = ((64, 4), (64, 8), (64, 16), (128, 32), (256, 64), (512, 128), (1024, 256))


def get_config():
    c = base.get_config()
    c.name = 'mqar-zoology'
    c.model.attention.kind = 'softmax'
    c.model.d_model = 128
    c.model.num_layers = 2
    c.model.attention.num_heads = 2
    c.data.vocab_size = c.model.vocab_size = 8192
    c.data.train_settings = tuple((L, kv) for L, kv, _ in TRAIN)
    c.data.train_weights = tuple(n for _, _, n in TRAIN)
    c.data.eval_settings = TEST
    c.data.seq_len = 256
    c.data.eval_examples = 1000
    c.train.batch_size = 256
    c.train.steps = 64 * sum(n for *_, n in TRAIN) // 256
    c.train.lr = 1e-3
    c.train.warmup_steps = 1000
    c.train.eval_every = 2000
    c.checkpoint.every = 2000
    return c
