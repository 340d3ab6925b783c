"""Trains several attention kinds on the same data and tabulates them (Zoology-style comparison).

  python -m effattn.compare configs/mqar.py --kinds=softmax,gla,deltanet --workdir=runs/compare
  python -m effattn.compare configs/mqar_compare.py --workdir=runs/compare --config.train.steps=500

Every kind gets the config file's settings with only `model.attention.kind` changed (or the kinds
listed in the config's `compare_kinds` when --kinds is not given). Writes `results.md` and
`results.json` in the workdir: accuracy per evaluation set, parameter count, decoding-state size per
sequence, and training tokens/s. Each kind's run lives in workdir/<kind> and resumes like train.py.
"""

from __future__ import annotations

import dataclasses
import json
import os
import sys

from effattn import config as config_lib


@dataclasses.dataclass
class Row:
    kind: str
    accuracy: dict
    params: int
    state_size: int
    tokens_per_sec: float | None


def state_size(cfg: config_lib.Config) -> int:
    """Decoding-state elements per sequence at the training length (KV cache or recurrent state)."""
    from effattn.train.state import build_model

    return build_model(cfg, 0).state_size(cfg.data.seq_len)


def compare(config, kinds: list[str], workdir: str, *, quiet: bool = False) -> list[Row]:
    """Trains each kind (resuming finished or partial runs) and returns one Row per kind."""
    from effattn.train.loop import train_and_evaluate

    base = config_lib.validate(config)
    rows = []
    for kind in kinds:
        cfg = dataclasses.replace(
            base,
            name=f'{base.name}-{kind}',
            model=dataclasses.replace(
                base.model, attention=dataclasses.replace(base.model.attention, kind=kind)
            ),
        )
        config_lib.validate(config_lib.to_config_dict(cfg))  # kind-specific checks
        run_dir = os.path.join(workdir, kind)
        if not quiet:
            print(f'== {kind} ==', flush=True)
        train_and_evaluate(cfg, run_dir, quiet=quiet)
        with open(os.path.join(run_dir, 'summary.json')) as f:
            summary = json.load(f)
        rows.append(
            Row(
                kind, summary['eval'], summary['params'], state_size(cfg), summary['tokens_per_sec']
            )
        )
    write_results(rows, workdir)
    return rows


def markdown(rows: list[Row]) -> str:
    sets = list(rows[0].accuracy) if rows else []
    head = ['kind', *sets, 'params', 'state size', 'train tokens/s']
    lines = ['| ' + ' | '.join(head) + ' |', '|' + '---|' * len(head)]
    for r in rows:
        tps = f'{r.tokens_per_sec:,.0f}' if r.tokens_per_sec else '-'
        cells = [
            r.kind,
            *(f'{r.accuracy[s]:.3f}' for s in sets),
            f'{r.params:,}',
            f'{r.state_size:,}',
            tps,
        ]
        lines.append('| ' + ' | '.join(cells) + ' |')
    return '\n'.join(lines) + '\n'


def write_results(rows: list[Row], workdir: str) -> None:
    os.makedirs(workdir, exist_ok=True)
    with open(os.path.join(workdir, 'results.json'), 'w') as f:
        json.dump([dataclasses.asdict(r) for r in rows], f, indent=2)
    with open(os.path.join(workdir, 'results.md'), 'w') as f:
        f.write(f'Command: `{" ".join(["python -m effattn.compare", *sys.argv[1:]])}`\n\n')
        f.write(markdown(rows))


def main() -> None:
    from absl import app, flags

    from effattn.cli import config_value, define_config_flag, fail, parse_flags

    # `python -m effattn.compare CONFIG ...`: the config file may be given positionally.
    if len(sys.argv) > 1 and not sys.argv[1].startswith('-'):
        sys.argv[1] = f'--config={sys.argv[1]}'
    config_flag = define_config_flag('configs/mqar.py')
    kinds_flag = flags.DEFINE_list(
        'kinds', None, 'Attention kinds to compare (default: all known).'
    )
    workdir_flag = flags.DEFINE_string('workdir', 'runs/compare', 'Folder for the runs and tables.')

    def run(argv):
        if len(argv) > 1:
            fail(f'unexpected arguments: {" ".join(argv[1:])}')
        from effattn.attention import known_kinds

        cfg_dict = config_value(config_flag)
        kinds = kinds_flag.value or list(cfg_dict.get('compare_kinds', ()) or known_kinds())
        unknown = [k for k in kinds if k not in known_kinds()]
        if unknown:
            fail(
                f'--kinds: unknown attention kind {unknown[0]!r}; known kinds: {", ".join(known_kinds())}'
            )
        cfg_dict = _without_compare_keys(cfg_dict)
        try:
            rows = compare(cfg_dict, kinds, workdir_flag.value)
        except config_lib.ConfigError as e:
            fail(str(e))
        print(markdown(rows))
        print(f'tables: {os.path.join(os.path.abspath(workdir_flag.value), "results.md")}')

    app.run(run, flags_parser=parse_flags)


def _without_compare_keys(cfg_dict):
    d = cfg_dict.to_dict() if hasattr(cfg_dict, 'to_dict') else dict(cfg_dict)
    d.pop('compare_kinds', None)
    return d


if __name__ == '__main__':
    main()
