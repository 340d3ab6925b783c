"""Text data (effattn/data/text.py): local formats, tokenizers, packing, determinism, clear errors."""

import json
import os

import numpy as np
import pytest

from effattn import config as config_lib
from effattn.data import text
from effattn.data.text import IGNORE_INDEX, ByteTokenizer, TextDataError

DOCS = ['the cat sat', 'on the mat', 'a dog ran far away', 'xy', 'hello world, again']


def write_txt(path, docs=DOCS):
    path.write_text('\n'.join(docs) + '\n', encoding='utf-8')
    return str(path)


def corpus_of(path, tok=None, key='text', sample_by='line'):
    return text.load_corpus([os.path.abspath(path)], tok or ByteTokenizer(), key, sample_by)


def docs_of(corpus, tok=None):
    tok = tok or ByteTokenizer()
    o = corpus.offsets
    return [tok.decode(corpus.tokens[o[i] : o[i + 1]]) for i in range(corpus.num_docs)]


def text_cfg(tmp_path, **data):
    c = config_lib.default_config()
    c.data.kind = 'text'
    c.data.train_files = data.pop('train_files', None) or write_txt(tmp_path / 'train.txt')
    c.model.vocab_size = 259
    c.data.seq_len = 16
    c.model.d_model = 16
    c.model.attention.num_heads = 2
    for k, v in data.items():
        section, _, key = k.rpartition('__')
        setattr(getattr(c, section) if section else c.data, key, v)
    return c


def test_byte_tokenizer_ids():
    tok = ByteTokenizer()
    assert (tok.pad_id, tok.bos_id, tok.eos_id, tok.vocab_size) == (256, 257, 258, 259)
    assert tok.encode('é') == [0xC3, 0xA9]
    assert tok.decode([257, 0xC3, 0xA9, 33, 258]) == 'é!'


def test_documents_are_bos_bytes_eos(tmp_path):
    c = corpus_of(write_txt(tmp_path / 'a.txt'))
    assert docs_of(c) == DOCS
    first = c.tokens[c.offsets[0] : c.offsets[1]]
    assert first[0] == 257 and first[-1] == 258 and bytes(first[1:-1].tolist()) == b'the cat sat'


@pytest.mark.parametrize(
    'sample_by, expected',
    [
        ('line', ['one', 'two', 'three']),
        ('paragraph', ['one\ntwo', 'three']),
        ('document', ['one\ntwo\n\nthree\n']),
    ],
)
def test_txt_sample_by(tmp_path, sample_by, expected):
    path = tmp_path / 'p.txt'
    path.write_text('one\ntwo\n\nthree\n')
    got = [
        d.strip('\n') if sample_by == 'paragraph' else d
        for d in docs_of(corpus_of(path, sample_by=sample_by))
    ]
    assert got == expected


def test_jsonl_with_a_custom_key_and_parquet(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    jl = tmp_path / 'a.jsonl'
    jl.write_text(''.join(json.dumps({'body': d, 'id': i}) + '\n' for i, d in enumerate(DOCS)))
    assert docs_of(corpus_of(jl, key='body')) == DOCS
    pq.write_table(pa.table({'content': DOCS}), tmp_path / 'a.parquet')
    assert docs_of(corpus_of(tmp_path / 'a.parquet', key='content')) == DOCS


def _hf_tokenizer(folder):
    from tokenizers import Tokenizer, models, pre_tokenizers

    words = sorted({w for d in DOCS for w in d.replace(',', ' ').split()})
    vocab = {'<unk>': 0, '<s>': 1, '</s>': 2, '<pad>': 3, **{w: i + 4 for i, w in enumerate(words)}}
    tok = Tokenizer(models.WordLevel(vocab, unk_token='<unk>'))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    os.makedirs(folder, exist_ok=True)
    tok.save(os.path.join(folder, 'tokenizer.json'))
    with open(os.path.join(folder, 'tokenizer_config.json'), 'w') as f:
        json.dump({'bos_token': '<s>', 'eos_token': '</s>', 'pad_token': '<pad>'}, f)
    return str(folder), len(vocab)


def test_hf_tokenizer_from_a_local_folder(tmp_path):
    folder, n = _hf_tokenizer(tmp_path / 'tok')
    tok = text.load_tokenizer(folder)
    assert (tok.bos_id, tok.eos_id, tok.pad_id, tok.vocab_size) == (1, 2, 3, n)
    c = corpus_of(write_txt(tmp_path / 'a.txt'), tok)
    doc = c.tokens[c.offsets[0] : c.offsets[1]].tolist()
    assert doc[0] == 1 and doc[-1] == 2 and tok.decode(doc) == 'the cat sat'
    cfg = config_lib.validate(text_cfg(tmp_path, tokenizer=folder, model__vocab_size=n))
    assert text.train_stream(cfg).batch(0)['inputs'].max() < n


def test_packing_segments_and_labels(tmp_path):
    c = corpus_of(write_txt(tmp_path / 'a.txt'))
    stream = text.TextStream(c, batch_size=3, seq_len=8, pad_id=256, seed=0)
    b = stream.batch(0)
    x, y, s = b['inputs'], b['labels'], b['segment_ids']
    assert x.shape == y.shape == s.shape == (3, 8) and x.dtype == y.dtype == s.dtype == np.int32
    flat = stream.span(0, 3 * 8 + 1)[0]
    np.testing.assert_array_equal(x.ravel(), flat[:-1])
    assert np.all(s[:, 0] == 1) and np.all(np.diff(s, axis=1) >= 0) and s.min() >= 1  # no padding
    for r in range(3):
        for t in range(8):
            nxt = flat[r * 8 + t + 1]
            if x[r, t] == 258:  # EOS: the next token is another document's
                assert y[r, t] == IGNORE_INDEX
            else:
                assert y[r, t] == nxt
            if t and x[r, t] == 257:  # BOS starts a new segment within the row
                assert s[r, t] == s[r, t - 1] + 1
            elif t:
                assert s[r, t] == s[r, t - 1]


def test_every_epoch_is_a_permutation_of_the_documents(tmp_path):
    c = corpus_of(write_txt(tmp_path / 'a.txt'))
    stream = text.TextStream(c, batch_size=1, seq_len=4, pad_id=256, seed=3)
    n = len(c.tokens)
    orders = []
    for e in range(3):
        toks, first, last = stream.span(e * n, n)
        assert first.sum() == last.sum() == c.num_docs
        docs = [bytes(d[1:-1].tolist()).decode() for d in np.split(toks, np.flatnonzero(first)[1:])]
        assert sorted(docs) == sorted(DOCS)
        orders.append(docs)
    assert orders[0] != orders[1] or orders[1] != orders[2]  # reshuffled per epoch


def test_batches_depend_only_on_seed_and_step(tmp_path):
    c = corpus_of(write_txt(tmp_path / 'a.txt'))
    a = text.TextStream(c, 2, 8, pad_id=256, seed=1)
    b = text.TextStream(c, 2, 8, pad_id=256, seed=1)
    other = text.TextStream(c, 2, 8, pad_id=256, seed=2)
    seq = [a.batch(i) for i in range(12)]  # several epochs
    for i in (11, 3, 7, 0):  # any order
        for k in ('inputs', 'labels', 'segment_ids'):
            np.testing.assert_array_equal(b.batch(i)[k], seq[i][k])
    assert any(not np.array_equal(other.batch(i)['inputs'], seq[i]['inputs']) for i in range(12))


def test_eval_rows_pad_the_last_row(tmp_path):
    c = corpus_of(write_txt(tmp_path / 'a.txt'))
    rows = text.eval_rows(c, 16, pad_id=256)
    n = len(c.tokens)
    assert rows['inputs'].shape == (-(-n // 16), 16)
    flat = {k: v.ravel() for k, v in rows.items()}
    np.testing.assert_array_equal(flat['inputs'][:n], c.tokens)
    assert np.all(flat['inputs'][n:] == 256) and np.all(flat['segment_ids'][n:] == 0)
    assert np.all(flat['labels'][n - 1 :] == IGNORE_INDEX)
    # one label per token that has a successor in its document: every byte and the EOS
    assert (flat['labels'] != IGNORE_INDEX).sum() == sum(len(d.encode()) + 1 for d in DOCS)
    assert text.eval_rows(c, 16, pad_id=256, max_rows=1)['inputs'].shape == (1, 16)


def test_held_out_documents_are_not_trained_on(tmp_path):
    docs = [f'document number {i}' for i in range(40)]
    cfg = config_lib.validate(
        text_cfg(tmp_path, train_files=write_txt(tmp_path / 'd.txt', docs), eval_fraction=0.1)
    )
    train, held = text.split(cfg.data)
    assert held.num_docs == 4 and train.num_docs == 36
    assert set(docs_of(train)) | set(docs_of(held)) == set(docs)
    assert not set(docs_of(train)) & set(docs_of(held))
    eval_file = write_txt(tmp_path / 'e.txt', ['separate eval'])
    cfg = config_lib.validate(text_cfg(tmp_path, eval_files=eval_file))
    assert docs_of(text.split(cfg.data)[1]) == ['separate eval']


# ------------------------------------------------------------------------------- clear errors


def _load_error(path, key='text'):
    with pytest.raises(TextDataError) as e:
        corpus_of(path, key=key)
    return str(e.value)


def test_bad_json_line_names_file_and_line(tmp_path):
    p = tmp_path / 'bad.jsonl'
    p.write_text('{"text": "a"}\n{"text": "b"}\n{"text": oops}\n')
    msg = _load_error(p)
    assert f'{p}:3' in msg and 'JSON' in msg


def test_missing_text_key_names_file_line_and_key(tmp_path):
    p = tmp_path / 'nokey.jsonl'
    p.write_text('{"text": "a"}\n\n{"body": "b"}\n')
    msg = _load_error(p)
    assert f'{p}:3' in msg and "'text'" in msg and 'config.data.text_key' in msg
    p2 = tmp_path / 'nokey2.jsonl'
    p2.write_text('{"body": "a"}\n')
    assert f'{p2}:1' in _load_error(p2)


def test_unreadable_parquet_and_empty_dataset(tmp_path):
    p = tmp_path / 'broken.parquet'
    p.write_bytes(b'PAR1 this is not parquet')
    msg = _load_error(p)
    assert str(p) in msg and 'parquet' in msg
    empty = tmp_path / 'empty.txt'
    empty.write_text('\n\n   \n')
    msg = _load_error(empty)
    assert str(empty) in msg and 'empty dataset' in msg


def test_config_errors_name_the_key(tmp_path):
    missing = str(tmp_path / 'nope.txt')
    with pytest.raises(config_lib.ConfigError, match=rf'config\.data\.train_files: .*{missing}'):
        config_lib.validate(text_cfg(tmp_path, train_files=missing))
    with pytest.raises(config_lib.ConfigError, match=r'config\.data\.eval_files: .*no such file'):
        config_lib.validate(text_cfg(tmp_path, eval_files=missing))
    with pytest.raises(config_lib.ConfigError, match=r'config\.data\.train_files: .*matches no'):
        config_lib.validate(text_cfg(tmp_path, train_files=str(tmp_path / '*.jsonl')))
    with pytest.raises(config_lib.ConfigError, match=r'config\.data\.tokenizer.*tokenizer\.json'):
        config_lib.validate(text_cfg(tmp_path, tokenizer=str(tmp_path)))
    with pytest.raises(
        config_lib.ConfigError, match=r'config\.model\.vocab_size.*config\.data\.tokenizer.*259'
    ):
        config_lib.validate(text_cfg(tmp_path, model__vocab_size=256))
    with pytest.raises(config_lib.ConfigError, match=r'config\.data\.text_sample_by'):
        config_lib.validate(text_cfg(tmp_path, text_sample_by='sentence'))
    with pytest.raises(config_lib.ConfigError, match=r'config\.train\.stop_at_accuracy'):
        config_lib.validate(text_cfg(tmp_path, train__stop_at_accuracy=0.5))


def test_lm_text_config_presets(tmp_path, monkeypatch):
    import importlib

    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    monkeypatch.syspath_prepend(root)
    lm_text = importlib.import_module('configs.lm_text')
    a, b = write_txt(tmp_path / 'a.txt'), write_txt(tmp_path / 'b.txt')
    c = lm_text.get_config(f'files={a},{b},kind=gla,steps=7')
    assert (c.data.train_files, c.model.attention.kind, c.train.steps) == (f'{a},{b}', 'gla', 7)
    cfg = config_lib.validate(c)
    assert cfg.data.kind == 'text' and cfg.data.seq_len == 256 and cfg.model.num_layers == 4
    with pytest.raises(ValueError, match='unknown preset'):
        lm_text.get_config('size=big')
