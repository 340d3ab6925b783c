"""Evaluates the latest checkpoint of a run: per-setting MQAR accuracy (text runs: loss and
perplexity on their eval documents) as a table or one JSON object; perplexity on local text files;
generation with the decoding cache.

python eval.py --workdir=runs/default
python eval.py --workdir=runs/default --json
python eval.py --workdir=runs/lm_text --perplexity=corpus.txt,more.jsonl [--json]
python eval.py --workdir=runs/lm_text --generate "The " --max_new_tokens=200 --temperature=0.8 --top_p=0.9
python eval.py --workdir=runs/default --generate "1 2 3"     # MQAR runs take token ids
"""

import json

from absl import app, flags

from effattn.cli import fail, parse_flags

_WORKDIR = flags.DEFINE_string('workdir', None, 'Run folder written by train.py.', required=True)
_JSON = flags.DEFINE_bool('json', False, 'Print one JSON object instead of a table.')
_PERPLEXITY = flags.DEFINE_list(
    'perplexity', None, 'Local text files (.txt, .jsonl, .parquet): print their perplexity.'
)
_GENERATE = flags.DEFINE_string(
    'generate', None, 'Prompt to continue (text runs: a string; MQAR/ListOps: token ids "1 2 3").'
)
_MAX_NEW = flags.DEFINE_integer('max_new_tokens', 64, 'Tokens to generate after the prompt.')
_TEMPERATURE = flags.DEFINE_float('temperature', 0.0, 'Sampling temperature; 0 = greedy.')
_TOP_P = flags.DEFINE_float('top_p', 1.0, 'Nucleus sampling: keep the top tokens of this mass.')
_SEED = flags.DEFINE_integer('seed', 0, 'Random seed of sampling (temperature > 0).')


def _emit(report: dict, lines: list[str]) -> None:
    if _JSON.value:
        print(json.dumps(report))
    else:
        print('\n'.join(lines))


def main(argv):
    if len(argv) > 1:
        fail(f'unexpected arguments: {" ".join(argv[1:])}')
    if _PERPLEXITY.value is not None and _GENERATE.value is not None:
        fail('give --perplexity or --generate, not both')
    from effattn.eval.run import EvalError, evaluate_workdir

    try:
        if _PERPLEXITY.value is not None:
            from effattn.eval.perplexity import perplexity_of_files

            r = perplexity_of_files(_WORKDIR.value, _PERPLEXITY.value)
            return _emit(
                r,
                [
                    f'{r["workdir"]} (step {r["step"]}, {r["attention"]})',
                    (
                        f'perplexity {r["perplexity"]:.4f}  loss {r["loss"]:.4f} nats/token  '
                        f'({r["tokens"]:,} tokens of {", ".join(r["files"])})'
                    ),
                ],
            )
        if _GENERATE.value is not None:
            from effattn.eval.generation import generate_from_workdir

            r = generate_from_workdir(
                _WORKDIR.value,
                _GENERATE.value,
                max_new_tokens=_MAX_NEW.value,
                temperature=_TEMPERATURE.value,
                top_p=_TOP_P.value,
                seed=_SEED.value,
            )
            return _emit(r, [r['output']])
        report = evaluate_workdir(_WORKDIR.value)
    except EvalError as e:
        fail(str(e))
    lines = [f'{report["workdir"]} (step {report["step"]}, {report["attention"]})']
    if 'perplexity' in report:  # a text run
        lines.append(f'eval perplexity {report["perplexity"]:.4f}  loss {report["loss"]:.4f}')
    else:
        lines.append(f'{"setting":<16} {"accuracy":>9}')
        lines += [f'{name:<16} {acc:>9.4f}' for name, acc in report['accuracy'].items()]
    _emit(report, lines)


if __name__ == '__main__':
    app.run(main, flags_parser=parse_flags)
