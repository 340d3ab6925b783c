"""Linearises a pretrained softmax LM run into a new run folder (logic: effattn.train.linearize).

  python -m effattn.linearize --config=configs/linearize_lolcats.py --teacher=runs/lm_text \\
      --workdir=runs/lm_lolcats
  python -m effattn.linearize --config=configs/linearize_liger.py --teacher=runs/llama \\
      --workdir=runs/llama_liger --config.finetune.steps=500
  python eval.py --workdir=runs/lm_lolcats                # perplexity; --generate "..." works too

The teacher is a run folder with softmax attention in every layer (train.py, or
`python -m effattn.convert import`); --workdir must be new or empty.
"""

from __future__ import annotations

from absl import app, flags

from effattn.cli import config_value, define_config_flag, fail, parse_flags
from effattn.train.linearize import check_key

_CONFIG = define_config_flag('configs/linearize_lolcats.py', check_key=check_key)
_TEACHER = flags.DEFINE_string('teacher', None, 'Run folder of the softmax teacher.', required=True)
_WORKDIR = flags.DEFINE_string('workdir', None, 'New run folder for the student.', required=True)


def main(argv):
    if len(argv) > 1:
        fail(f'unexpected arguments: {" ".join(argv[1:])}')
    from effattn.config import ConfigError
    from effattn.eval.run import EvalError
    from effattn.train.checkpoint import CheckpointError
    from effattn.train.linearize import LinearizeError, linearize, validate

    try:
        lin = validate(config_value(_CONFIG))
        linearize(lin, _TEACHER.value, _WORKDIR.value)
    except (ConfigError, EvalError, CheckpointError, LinearizeError) as e:
        fail(str(e))


if __name__ == '__main__':
    app.run(main, flags_parser=parse_flags)
