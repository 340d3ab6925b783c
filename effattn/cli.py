"""Helpers shared by the command-line entry points (train.py, eval.py).

ml_collections' config flags report bad overrides with tracebacks; these helpers turn every bad
config, file or flag into one line on stderr naming the key, and a non-zero exit.
"""

from __future__ import annotations

import os
import sys
from typing import NoReturn

from absl import flags, logging
from ml_collections import config_flags


def fail(message: str, code: int = 2) -> NoReturn:
    """One clear line on stderr and a non-zero exit."""
    print(f'error: {message}', file=sys.stderr, flush=True)
    sys.exit(code)


def _override_paths(argv: list[str]) -> list[str]:
    paths = []
    for arg in argv[1:]:
        if arg.startswith('--config.'):
            paths.append(arg[len('--config.') :].split('=', 1)[0])
    return paths


def define_config_flag(default: str, check_key=None):
    """DEFINE_config_file('config', default, lock_config=True), with one-line errors.

    ml_collections applies `--config.a.b=...` overrides while defining the flag; an unknown key then
    raises deep inside it. Keys are checked against the schema first to name the offending one
    (check_key(path): effattn.config.check_key by default).
    """
    from effattn.config import ConfigError
    from effattn.config import check_key as check_config_key

    check_key = check_key or check_config_key
    try:
        for path in _override_paths(sys.argv):
            check_key(path)
        return config_flags.DEFINE_config_file(
            'config', default, 'Config file (get_config).', lock_config=True
        )
    except ConfigError as e:
        fail(str(e))
    except Exception as e:  # anything else ml_collections raised while applying overrides
        fail(f'--config: {type(e).__name__}: {e}')


def parse_flags(argv: list[str]) -> list[str]:
    """flags_parser for absl.app.run: a bad flag value is one line naming the flag."""
    try:
        args = flags.FLAGS(argv)
    except flags.Error as e:
        fail(str(e))
    logging.set_verbosity(logging.WARNING)  # orbax logs every checkpoint save at INFO
    return args


def config_value(flag):
    """The ConfigDict of a config flag, or one line naming the config file that failed to load."""
    value = flag.value
    if type(value).__name__ == '_ErrorConfig':
        error = object.__getattribute__(value, '_error')
        fail('--config: ' + ' '.join(str(error).split()))
    return value


def resolve_workdir(workdir: str | None, name: str, stamp: str) -> str:
    return workdir if workdir else os.path.join('runs', f'{name}-{stamp}')
