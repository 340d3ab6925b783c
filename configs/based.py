"""The Based architecture (Arora et al. 2024) as a hybrid stack, on MQAR.

Layer pattern of HazyResearch/based train/configs/experiment/reference/based-360m.yaml, period 5:
gated short conv (`base_conv`, kernel 3), Taylor linear attention (`based`, feature_dim 16),
sliding-window softmax with RoPE (`softmax`, window 16 here for 64-token sequences; 256 at 2048
tokens in the reference), then two more `base_conv` layers; every layer followed by a SwiGLU MLP.
10 layers = the pattern twice. The window applies to the softmax layers only (based and base_conv
ignore it). Data and training otherwise as configs/default.py (MQAR 64 tokens / 4 pairs).

  python train.py --config=configs/based.py --workdir=runs/based
"""

from configs import default


def get_config():
    c = default.get_config()
    c.name = 'based'
    c.model.attention.kind = 'based'
    c.model.layers = 'base_conv,based,softmax,base_conv,base_conv'
    c.model.num_layers = 10
    c.model.mlp = 'swiglu'
    c.model.attention.feature_dim = 16
    c.model.attention.conv_size = 3
    c.model.attention.window = 16
    return c
