"""The schema's defaults (effattn/config.py); every other config starts from these.

python train.py --config=configs/base.py --workdir=runs/base
"""

from effattn.config import default_config


def get_config():
    return default_config()
