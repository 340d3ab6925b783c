"""Perplexity over packed rows honours segments; eval.py --perplexity / --generate on a text run."""

import json
import math
import os
import sys

import jax
import numpy as np
import optax
import pytest
from absl import flags
from helpers import load_script

from effattn import config as config_lib
from effattn.data import text
from effattn.eval.generation import generate_from_workdir
from effattn.eval.perplexity import evaluate_perplexity, make_nll, perplexity_of_files
from effattn.eval.run import EvalError
from effattn.train import loop

DOCS = ['the quick brown fox', 'jumps over', 'the lazy dog, again and again', 'ok']


def text_cfg(tmp_path, kind='softmax'):
    path = tmp_path / 'corpus.txt'
    path.write_text('\n'.join(DOCS * 5) + '\n')
    c = config_lib.default_config()
    c.data.kind = 'text'
    c.data.train_files = str(path)
    c.data.eval_fraction = 0.25
    c.data.seq_len = 16
    c.model.vocab_size = 259
    c.model.d_model = 16
    c.model.num_layers = 2
    c.model.attention.kind = kind
    c.model.attention.num_heads = 2
    c.model.attention.chunk_size = 8
    c.train.batch_size = 4
    c.train.steps = 3
    c.train.warmup_steps = 1
    c.checkpoint.async_save = False
    return config_lib.validate(c)


@pytest.mark.parametrize('kind', ['softmax', 'gla'])
def test_packed_perplexity_equals_documents_evaluated_alone(tmp_path, kind):
    """Token-weighted NLL over packed rows = the sum over documents, each run on its own."""
    cfg = text_cfg(tmp_path, kind)
    model_def, state = loop.create_train_state(cfg, loop.make_optimizer(cfg.train))
    corpus = text.load_corpus([cfg.data.train_files], text.ByteTokenizer(), 'text', 'line').subset(
        np.arange(4)
    )
    rows = text.eval_rows(corpus, 80, pad_id=256)  # all four documents in one row
    assert rows['inputs'].shape[0] == 1 and rows['segment_ids'].max() == 4
    got = evaluate_perplexity(make_nll(model_def), state.params, rows, batch_size=2)
    # jitted (one compile per document length): op-by-op dispatch took ~8 s per document for gla
    forward = jax.jit(lambda params, x: model_def.merge(params)(x))
    total = count = 0
    for i in range(4):
        doc = corpus.tokens[corpus.offsets[i] : corpus.offsets[i + 1]]
        logits = forward(state.params, doc[None, :-1])[0]
        total += float(optax.softmax_cross_entropy_with_integer_labels(logits, doc[1:]).sum())
        count += len(doc) - 1
    assert got['tokens'] == count
    np.testing.assert_allclose(got['loss'], total / count, rtol=2e-5)
    assert math.isclose(got['perplexity'], math.exp(got['loss']))


def _eval_cli():
    """eval.py loaded once per process (its absl flags are defined at import)."""
    name = '_effattn_eval_cli'
    if name not in sys.modules:
        sys.modules[name] = load_script('eval.py', name)
    return sys.modules[name]


def run_cli(capsys, *args):
    """eval.py's flag parsing and main() in-process: its stdout. (A subprocess would re-import jax
    and recompile everything; tests/train/test_cli.py runs eval.py as a real subprocess.)"""
    cli = _eval_cli()
    capsys.readouterr()
    argv = cli.parse_flags(['eval.py', *args])
    try:
        cli.main(argv)
    except SystemExit as e:  # effattn.cli.fail
        pytest.fail(f'eval.py {" ".join(args)} exited {e.code}: {capsys.readouterr().err}')
    finally:
        flags.FLAGS.unparse_flags()
    return capsys.readouterr().out


def test_eval_cli_perplexity_and_generate(tmp_path, capsys):
    cfg = text_cfg(tmp_path)
    workdir = str(tmp_path / 'run')
    loop.train_and_evaluate(cfg, workdir, quiet=True)
    other = tmp_path / 'other.jsonl'
    other.write_text(json.dumps({'text': 'the fox and the dog'}) + '\n')
    want = perplexity_of_files(workdir, [str(other), cfg.data.train_files])
    out = json.loads(
        run_cli(capsys, f'--workdir={workdir}', f'--perplexity={other},{cfg.data.train_files}', '--json')
    )
    assert out['step'] == 3 and out['tokens'] == want['tokens'] > 0
    assert math.isclose(out['perplexity'], want['perplexity'], rel_tol=1e-5)
    out = run_cli(capsys, f'--workdir={workdir}', '--generate', 'the ', '--max_new_tokens=5', '--json')
    gen = json.loads(out)
    assert gen['prompt_ids'] == [257, 116, 104, 101, 32] and len(gen['new_ids']) == 5
    assert gen['output'].startswith('the ')
    # in-process: seeded sampling is reproducible, top_p and temperature are checked
    a = generate_from_workdir(workdir, 'fox', max_new_tokens=4, temperature=1.0, top_p=0.9, seed=7)
    b = generate_from_workdir(workdir, 'fox', max_new_tokens=4, temperature=1.0, top_p=0.9, seed=7)
    assert a['new_ids'] == b['new_ids']
    with pytest.raises(EvalError, match='top_p'):
        generate_from_workdir(workdir, 'fox', top_p=0.0)
    bad = tmp_path / 'bad.jsonl'
    bad.write_text('{"text": 1}\n')
    with pytest.raises(EvalError, match=rf'{bad}:1'):
        perplexity_of_files(workdir, [str(bad)])
    # the training corpus moved away: the run still loads for generation and perplexity
    os.rename(cfg.data.train_files, str(tmp_path / 'moved.txt'))
    assert len(generate_from_workdir(workdir, 'fox', max_new_tokens=2)['new_ids']) == 2
    assert perplexity_of_files(workdir, [str(other)])['tokens'] > 0


def test_generate_on_an_mqar_run_takes_token_ids(tiny_mqar_run):
    r = generate_from_workdir(tiny_mqar_run, '1 2 3', max_new_tokens=3)
    assert r['prompt_ids'] == [1, 2, 3] and len(r['new_ids']) == 3
    assert r['output'].split()[:3] == ['1', '2', '3'] and len(r['output'].split()) == 6
    with pytest.raises(EvalError, match='token ids'):
        generate_from_workdir(tiny_mqar_run, 'hello')
    with pytest.raises(EvalError, match='--perplexity needs'):
        perplexity_of_files(tiny_mqar_run, ['x.txt'])


@pytest.fixture
def tiny_mqar_run(tmp_path):
    c = config_lib.default_config()
    c.model.vocab_size = c.data.vocab_size = 64
    c.model.d_model = 16
    c.model.num_layers = 1
    c.model.attention.num_heads = 2
    c.data.seq_len = 16
    c.data.train_settings = c.data.eval_settings = ((16, 2),)
    c.data.eval_examples = 8
    c.train.batch_size = 4
    c.train.steps = 1
    c.checkpoint.async_save = False
    workdir = str(tmp_path / 'mqar')
    loop.train_and_evaluate(config_lib.validate(c), workdir, quiet=True)
    jax.clear_caches()
    return workdir
