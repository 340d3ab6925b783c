"""Imports Hugging Face checkpoints into effattn run folders and exports runs back (effattn.models.convert).

  python -m effattn.convert import path/to/hf-llama runs/llama            # Llama, Mistral, Qwen2, Qwen3
  python -m effattn.convert import path/to/hf-qwen2 runs/qwen2 --config=configs/base.py
  python eval.py --workdir=runs/llama
  python train.py --config=runs/llama/config.py --workdir=runs/llama --config.train.steps=100
  python -m effattn.convert export runs/llama out/llama-hf                 # HF dir (transformers)
  python -m effattn.convert export runs/mqar out/mqar --format=safetensors   # any model

--config gives the imported run's data / train / checkpoint / mesh sections (and model.compute_dtype,
model.attention.impl); the model itself comes from the Hugging Face config.json.
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import sys

from effattn.cli import fail


def load_config_file(spec: str):
    """get_config() of a config file, `path.py` or `path.py:arg` as train.py's --config takes it."""
    path, _, arg = spec.partition(':')
    if not os.path.exists(path):
        fail(f'--config: {path} not found')
    sys.path.insert(0, os.getcwd())  # config files import configs.base
    try:
        module_spec = importlib.util.spec_from_file_location('effattn_convert_config', path)
        module = importlib.util.module_from_spec(module_spec)
        module_spec.loader.exec_module(module)
        return module.get_config(arg) if arg else module.get_config()
    except Exception as e:  # noqa: BLE001 - any error of the user's config file: one line
        fail(f'--config: {path}: {type(e).__name__}: {e}')


def parse(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog='python -m effattn.convert',
        description='Hugging Face checkpoint import / export.',
    )
    sub = parser.add_subparsers(dest='command', required=True)
    imp = sub.add_parser('import', help='HF Llama/Mistral/Qwen2/Qwen3 directory -> effattn run')
    imp.add_argument('hf_dir', help='local directory: config.json + model*.safetensors')
    imp.add_argument('workdir', help='new effattn run folder')
    imp.add_argument('--config', help='config file (path.py or path.py:arg) for data/train/...')
    exp = sub.add_parser('export', help='effattn run -> HF directory or effattn safetensors')
    exp.add_argument('workdir', help='run folder (newest checkpoint is exported)')
    exp.add_argument('out_dir', help='new output directory')
    exp.add_argument('--format', choices=('hf', 'safetensors'), default='hf')
    exp.add_argument('--max_shard_size', default='5GB', help='e.g. 5GB, 500MB')
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    args = parse(sys.argv[1:] if argv is None else argv)
    from effattn.models import convert

    try:
        if args.command == 'import':
            base = load_config_file(args.config) if args.config else None
            cfg = convert.import_hf(args.hf_dir, args.workdir, base=base)
            w = args.workdir
            print(
                f'imported {args.hf_dir} into {w} (step 0; {cfg.model.num_layers} layers, '
                f'd_model={cfg.model.d_model})\n'
                f'  evaluate:  python eval.py --workdir={w}\n'
                f'  fine-tune: python train.py --config={w}/config.py --workdir={w}\n'
                f'  export:    python -m effattn.convert export {w} OUT_DIR',
                flush=True,
            )
        else:
            kind = convert.export_run(
                args.workdir, args.out_dir, fmt=args.format, max_shard_size=args.max_shard_size
            )
            print(f'exported {args.workdir} to {args.out_dir} ({kind})', flush=True)
    except convert.ConvertError as e:
        fail(str(e))


if __name__ == '__main__':
    main()
