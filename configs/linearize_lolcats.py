"""LoLCATs (Zhang et al. 2025, arXiv 2410.10254): softmax LM -> Hedgehog linear attention mixed with
a 64-token sliding-window softmax; stage 1 attention transfer (only the feature maps and window
factors train, MSE to the teacher's per-head outputs), stage 2 LoRA r=8, alpha=16 on q, k, v, o;
the LoRA is merged so the result is a plain `hedgehog` run folder.

  python scripts/make_corpus.py
  python train.py --config=configs/lm_text.py:steps=200 --workdir=runs/lm_text
  python -m effattn.linearize --config=configs/linearize_lolcats.py --teacher=runs/lm_text \\
      --workdir=runs/lm_lolcats
  python eval.py --workdir=runs/lm_lolcats
  python eval.py --workdir=runs/lm_lolcats --generate "Return the " --max_new_tokens=100
  # the ablation without attention transfer, same number of steps:
  python -m effattn.linearize --config=configs/linearize_lolcats.py --teacher=runs/lm_text \\
      --workdir=runs/lm_lora_only --config.attention_transfer.steps=0 --config.finetune.steps=400

Paper settings (Llama 3 8B) differ in scale only: stage 1 on 2 epochs of Alpaca-clean (lr 1e-2),
stage 2 lr 1e-4, feature_dim 64 for head_dim 128. The defaults here are sized for the byte-level
configs/lm_text.py teacher on CPU (a few minutes): 200 + 200 steps, LoRA lr 1e-4 as in the paper.
Eval perplexity per byte there: teacher 6.19, this config 6.12, the LoRA-only ablation 9.02
(README.md).
"""

from effattn.train.linearize import default_config


def get_config():
    c = default_config()
    c.method = 'lolcats'
    c.kind = 'hedgehog'
    c.window = 64
    c.feature_dim = 0  # 0 = head_dim features per half
    c.attention_transfer.steps = 200
    c.attention_transfer.lr = 1e-2
    c.attention_transfer.mse_factor = 1000.0
    c.finetune.steps = 200
    c.finetune.lr = 1e-4
    c.finetune.lora_rank = 8
    c.finetune.lora_alpha = 16.0
    c.finetune.lora_targets = 'wq,wk,wv,wo'
    return c
