"""MQAR (Zoology) with a 2-layer agent-attention LM on CPU, no download.

Agent attention (Han et al. 2024) in our causal adaptation: learned agents per head, agent biases,
causal depthwise conv on v (ALGORITHMS.md 7). Everything else as configs/default.py.

python train.py --config=configs/mqar_agent.py --workdir=runs/mqar_agent
python train.py --config=configs/mqar_agent.py --workdir=/tmp/agent --config.train.steps=300
"""

from configs import default


def get_config():
    c = default.get_config()
    c.name = 'mqar-agent'
    c.model.attention.kind = 'agent'
    c.model.attention.num_agents = 16
    c.model.attention.conv_size = 4
    return c
