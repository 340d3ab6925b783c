"""Evaluates the latest checkpoint of a run: per-setting MQAR accuracy as a table or one JSON object.

python eval.py --workdir=runs/default
python eval.py --workdir=runs/default --json
"""

import json

from absl import app, flags

from effattn.cli import fail, parse_flags

_WORKDIR = flags.DEFINE_string('workdir', None, 'Run folder written by train.py.', required=True)
_JSON = flags.DEFINE_bool('json', False, 'Print one JSON object instead of a table.')


def main(argv):
    if len(argv) > 1:
        fail(f'unexpected arguments: {" ".join(argv[1:])}')
    from effattn.eval.run import EvalError, evaluate_workdir

    try:
        report = evaluate_workdir(_WORKDIR.value)
    except EvalError as e:
        fail(str(e))
    if _JSON.value:
        print(json.dumps(report))
        return
    print(f'{report["workdir"]} (step {report["step"]}, {report["attention"]})')
    print(f'{"setting":<16} {"accuracy":>9}')
    for name, acc in report['accuracy'].items():
        print(f'{name:<16} {acc:>9.4f}')


if __name__ == '__main__':
    app.run(main, flags_parser=parse_flags)
