"""Liger (Lan et al. 2025, arXiv 2503.01496): softmax LM -> `liger_gla`, gated linear attention whose
gate is the pretrained key projection (g = logsigmoid(x W_k) / 16, no new parameters) mixed 0.5 / 0.5
with 64-token sliding-window softmax; no attention transfer, one LoRA stage (r=8, alpha=16 on q, k,
v; lr 1e-3 as configs/liger_gla.yaml), merged into a plain `liger_gla` run folder.

  python scripts/make_corpus.py
  python train.py --config=configs/lm_text.py:steps=200 --workdir=runs/lm_text
  python -m effattn.linearize --config=configs/linearize_liger.py --teacher=runs/lm_text \\
      --workdir=runs/lm_liger
  python eval.py --workdir=runs/lm_liger
  # pure GLA (no sliding window): --config.window=0
"""

from effattn.train.linearize import default_config


def get_config():
    c = default_config()
    c.method = 'liger'
    c.kind = 'liger_gla'
    c.window = 64
    c.attention_transfer.steps = 0
    c.finetune.steps = 400
    c.finetune.lr = 1e-3
    c.finetune.lora_rank = 8
    c.finetune.lora_alpha = 16.0
    c.finetune.lora_targets = 'wq,wk,wv'
    return c
