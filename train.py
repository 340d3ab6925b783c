"""Trains an effattn model from a config file. Kept short: the logic lives in effattn.train.

  python train.py                                   # embedded default: MQAR on CPU, workdir under ./runs/
  python train.py --config=configs/mqar.py --workdir=runs/mqar --config.train.steps=2000
  python train.py --config=configs/mqar.py:kind=sigmoid --config.model.d_model=64

Rerunning the same command with the same --workdir resumes from the last checkpoint.
"""

import sys
import time

from absl import app, flags

from effattn.cli import config_value, define_config_flag, fail, parse_flags, resolve_workdir

_CONFIG = define_config_flag('configs/default.py')
_WORKDIR = flags.DEFINE_string(
    'workdir',
    None,
    'Run folder (checkpoints, tensorboard, config.json); default: a new folder under ./runs/.',
)


def main(argv):
    if len(argv) > 1:
        fail(f'unexpected arguments: {" ".join(argv[1:])}')
    from effattn import config as config_lib

    try:
        cfg = config_lib.validate(config_value(_CONFIG))
    except config_lib.ConfigError as e:
        fail(str(e))
    workdir = resolve_workdir(_WORKDIR.value, cfg.name, time.strftime('%Y%m%d-%H%M%S'))
    from effattn.train.checkpoint import CheckpointError
    from effattn.train.loop import NonFiniteLossError, train_and_evaluate

    try:
        train_and_evaluate(cfg, workdir)
    except (config_lib.ConfigError, CheckpointError, NonFiniteLossError) as e:
        fail(str(e))
    except KeyboardInterrupt:
        sys.exit(130)


if __name__ == '__main__':
    app.run(main, flags_parser=parse_flags)
