"""Text language-modelling data from local files: `datasets` loaders, a tokenizer, sequence packing.

Files (``config.data.train_files`` / ``eval_files``: comma-separated paths or glob patterns, read
in sorted order) are loaded with the `datasets` library's local builders, chosen by extension:

- ``.txt`` / ``.text`` / ``.md``: plain text, one document per line by default
  (``config.data.text_sample_by='line'``; ``'paragraph'`` splits at blank lines, ``'document'``
  makes each file one document). Empty documents are dropped.
- ``.jsonl`` / ``.json``: one JSON object per line; the text is the field ``config.data.text_key``.
- ``.parquet``: the column ``config.data.text_key``.

Nothing is downloaded. A malformed file raises :class:`TextDataError` naming the file and line (or
row): a bad JSON line, a record without the text field, an unreadable parquet file, no documents.

Tokenizer (``config.data.tokenizer``): ``''`` = bytes, the UTF-8 bytes 0..255 plus ``PAD = 256``,
``BOS = 257``, ``EOS = 258`` (vocabulary 259); otherwise a folder holding a Hugging Face
``tokenizer.json`` (the `tokenizers` library), with BOS / EOS / PAD taken from its
``tokenizer_config.json`` or ``special_tokens_map.json`` when present. A document is encoded as
``[BOS] + tokens + [EOS]`` (each special only if the tokenizer has it). Corpora are tokenized once and
cached in memory (keyed by path, size and modification time).

Packing: in epoch e the training documents are permuted by ``np.random.default_rng([seed, e])`` and
concatenated, and epochs follow one another into one endless token stream. Row r of the run is
tokens [r*L, (r+1)*L) of that stream (L = ``seq_len``), so training rows never hold padding and a
document cut at a row's end continues in the next row. ``segment_ids`` number the documents within a
row 1, 2, 3, ... (0 = padding); ``labels[t]`` is the next token of the same document, and -100 on a
document's last token and on padding. The batch at step n is rows [n*B, (n+1)*B): a pure function of
(files, tokenizer, seed, n), so the data position to checkpoint is the step number and a resumed run
sees exactly the batches of an uninterrupted one.

Evaluation rows pack the evaluation documents once, in file order, the last row padded. The
evaluation documents are ``eval_files``, or else a held-out ``eval_fraction`` of the training
documents (chosen by ``np.random.default_rng([seed, 0x5EED])`` and never trained on).
"""

from __future__ import annotations

import dataclasses
import glob
import json
import os
import tempfile
import threading
from collections.abc import Sequence

import numpy as np

from effattn.config import Config, ConfigError, DataConfig

IGNORE_INDEX = -100
FORMATS = {
    '.txt': 'text',
    '.text': 'text',
    '.md': 'text',
    '.jsonl': 'json',
    '.json': 'json',
    '.parquet': 'parquet',
}
SAMPLE_BY = ('line', 'paragraph', 'document')
_SPLIT_SALT = 0x5EED


class TextDataError(ValueError):
    """A text data file cannot be used; the message names the file (and line or row)."""


# ----------------------------------------------------------------------------------- tokenizers


class ByteTokenizer:
    """UTF-8 bytes 0..255 and three specials: PAD = 256, BOS = 257, EOS = 258 (vocabulary 259)."""

    name = stamp = 'bytes'
    pad_id, bos_id, eos_id = 256, 257, 258
    vocab_size = 259

    def encode(self, text: str) -> list[int]:
        return list(text.encode('utf-8'))

    def encode_batch(self, texts: Sequence[str]) -> list[np.ndarray]:
        return [np.frombuffer(t.encode('utf-8'), np.uint8).astype(np.int32) for t in texts]

    def decode(self, ids: Sequence[int]) -> str:
        return bytes(int(i) for i in ids if 0 <= int(i) < 256).decode('utf-8', errors='replace')


class HFTokenizer:
    """A Hugging Face `tokenizers` tokenizer from a local tokenizer.json (nothing is downloaded)."""

    def __init__(self, path: str):
        from tokenizers import Tokenizer

        folder, file = (path, os.path.join(path, 'tokenizer.json'))
        if os.path.isfile(path):
            folder, file = os.path.dirname(path), path
        self.name = path
        self.stamp = (file, os.path.getmtime(file))  # the corpus cache key
        self._tok = Tokenizer.from_file(file)
        self.vocab_size = int(self._tok.get_vocab_size(with_added_tokens=True))
        special = {}
        for meta in ('special_tokens_map.json', 'tokenizer_config.json'):  # the latter wins
            meta_path = os.path.join(folder, meta)
            if os.path.exists(meta_path):
                with open(meta_path) as f:
                    data = json.load(f)
                for role in ('bos_token', 'eos_token', 'pad_token'):
                    value = data.get(role)
                    if isinstance(value, dict):  # AddedToken serialised as a dict
                        value = value.get('content')
                    if isinstance(value, str):
                        special[role] = value
        self.bos_id = self._id(special.get('bos_token'))
        self.eos_id = self._id(special.get('eos_token'))
        pad = self._id(special.get('pad_token'))
        self.pad_id = pad if pad is not None else (self.eos_id if self.eos_id is not None else 0)

    def _id(self, token: str | None) -> int | None:
        return None if token is None else self._tok.token_to_id(token)

    def encode(self, text: str) -> list[int]:
        return list(self._tok.encode(text, add_special_tokens=False).ids)

    def encode_batch(self, texts: Sequence[str]) -> list[np.ndarray]:
        encs = self._tok.encode_batch(list(texts), add_special_tokens=False)
        return [np.asarray(e.ids, np.int32) for e in encs]

    def decode(self, ids: Sequence[int]) -> str:
        drop = {self.bos_id, self.eos_id, self.pad_id}
        return self._tok.decode(
            [int(i) for i in ids if int(i) not in drop], skip_special_tokens=True
        )


_TOKENIZERS: dict = {}


def load_tokenizer(spec: str, key: str = 'config.data.tokenizer'):
    """'' -> ByteTokenizer; a folder with tokenizer.json (or the file itself) -> HFTokenizer."""
    if not spec:
        return ByteTokenizer()
    path = os.path.abspath(os.path.expanduser(spec))
    file = path if os.path.isfile(path) else os.path.join(path, 'tokenizer.json')
    if not os.path.isfile(file):
        raise ConfigError(
            f'{key}={spec!r}: no tokenizer.json at {file} '
            "(expected a local Hugging Face tokenizer folder, or '' for bytes)"
        )
    stamp = (file, os.path.getmtime(file))
    if stamp not in _TOKENIZERS:
        try:
            _TOKENIZERS[stamp] = HFTokenizer(path)
        except Exception as e:
            raise ConfigError(f'{key}={spec!r}: cannot read {file}: {e}') from e
    return _TOKENIZERS[stamp]


# -------------------------------------------------------------------------------- file loading


def resolve_files(spec: str, key: str) -> list[str]:
    """Comma-separated paths or glob patterns -> sorted absolute paths; errors name `key`."""
    out = []
    for item in (s.strip() for s in spec.split(',')):
        if not item:
            continue
        item = os.path.expanduser(item)
        matches = sorted(glob.glob(item)) if glob.has_magic(item) else [item]
        if not matches:
            raise ConfigError(f'{key}: the pattern {item!r} matches no file')
        for path in matches:
            if not os.path.isfile(path):
                raise ConfigError(f'{key}: no such file: {path}')
            ext = os.path.splitext(path)[1].lower()
            if ext not in FORMATS:
                raise ConfigError(
                    f'{key}: {path}: unknown file type {ext!r}; expected one of '
                    f'{", ".join(FORMATS)}'
                )
            out.append(os.path.abspath(path))
    if not out:
        raise ConfigError(f'{key}: no files given (comma-separated paths or glob patterns)')
    return out


def _quiet_datasets():
    import datasets

    datasets.disable_progress_bars()
    datasets.logging.set_verbosity_error()
    datasets.config.HF_DATASETS_OFFLINE = True  # local builders only: never look at the hub
    return datasets


def _diagnose_json(path: str, text_key: str) -> None:
    """Raises TextDataError naming the first bad line of a JSON-lines file (no-op if none)."""
    with open(path, encoding='utf-8', errors='strict') as f:
        for n, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as e:
                raise TextDataError(f'{path}:{n}: not valid JSON ({e.msg})') from None
            if not isinstance(record, dict):
                raise TextDataError(f'{path}:{n}: expected a JSON object, got {line.strip()[:60]}')
            if text_key not in record:
                raise TextDataError(
                    f'{path}:{n}: no {text_key!r} field (config.data.text_key); '
                    f'fields: {", ".join(record) or "none"}'
                )
            if not isinstance(record[text_key], str):
                raise TextDataError(
                    f'{path}:{n}: field {text_key!r} is {type(record[text_key]).__name__}, '
                    'expected a string'
                )


def _load_file(path: str, text_key: str, sample_by: str) -> list[str]:
    """The documents (non-empty strings) of one file, through the `datasets` local builders."""
    datasets = _quiet_datasets()
    builder = FORMATS[os.path.splitext(path)[1].lower()]
    kwargs = {'sample_by': sample_by} if builder == 'text' else {}
    try:
        with tempfile.TemporaryDirectory(prefix='effattn-datasets-') as cache:
            ds = datasets.load_dataset(
                builder,
                data_files=[path],
                split='train',
                cache_dir=cache,
                keep_in_memory=True,
                **kwargs,
            )
    except Exception as e:
        if builder == 'json':
            _diagnose_json(path, text_key)
        reason = str(e.__cause__ or e).splitlines()[0] if str(e.__cause__ or e) else ''
        what = 'parquet file' if builder == 'parquet' else f'{builder} file'
        raise TextDataError(
            f'{path}: unreadable {what} ({type(e.__cause__ or e).__name__}: {reason})'
        ) from e
    column = 'text' if builder == 'text' else text_key
    if column not in ds.column_names:
        if builder == 'json':
            _diagnose_json(path, text_key)
        raise TextDataError(
            f'{path}: no {text_key!r} column (config.data.text_key); '
            f'columns: {", ".join(ds.column_names) or "none"}'
        )
    texts = ds[column]
    for i, t in enumerate(texts):
        if not isinstance(t, str):
            if builder == 'json':
                _diagnose_json(path, text_key)
            raise TextDataError(
                f'{path}: row {i}: {column!r} is {type(t).__name__}, expected a string'
            )
    return [t for t in texts if t.strip()]


@dataclasses.dataclass(frozen=True)
class Corpus:
    """Tokenized documents, concatenated: doc i is tokens[offsets[i]:offsets[i+1]] (BOS/EOS incl.)."""

    tokens: np.ndarray  # int32 [N]
    offsets: np.ndarray  # int64 [D + 1]

    @property
    def num_docs(self) -> int:
        return len(self.offsets) - 1

    def subset(self, docs: np.ndarray) -> Corpus:
        """The documents `docs` (indices), in that order."""
        lengths = np.diff(self.offsets)[docs]
        return Corpus(self.tokens[_gather_index(self.offsets[docs], lengths)], _offsets(lengths))


def _offsets(lengths: np.ndarray) -> np.ndarray:
    return np.concatenate([[0], np.cumsum(lengths, dtype=np.int64)])


def _gather_index(starts: np.ndarray, lengths: np.ndarray) -> np.ndarray:
    """Concatenated aranges [starts[i], starts[i] + lengths[i]) as one index array."""
    total = int(lengths.sum())
    shift = np.repeat(starts - _offsets(lengths)[:-1], lengths)
    return np.arange(total, dtype=np.int64) + shift


_CORPORA: dict = {}
_CORPORA_LOCK = threading.Lock()


def load_corpus(files: Sequence[str], tokenizer, text_key: str, sample_by: str) -> Corpus:
    """Loads and tokenizes `files` (cached in memory); TextDataError when there is no document."""
    stamp = (
        tuple((f, os.path.getsize(f), os.path.getmtime(f)) for f in files),
        tokenizer.stamp,
        text_key,
        sample_by,
    )
    with _CORPORA_LOCK:
        if stamp in _CORPORA:
            return _CORPORA[stamp]
    docs = []
    for path in files:
        docs.extend(_load_file(path, text_key, sample_by))
    if not docs:
        raise TextDataError(
            f'{", ".join(files)}: empty dataset (no non-empty document; .txt files give one '
            f'document per {sample_by}, config.data.text_sample_by)'
        )
    encoded = tokenizer.encode_batch(docs)
    pre = [] if tokenizer.bos_id is None else [tokenizer.bos_id]
    post = [] if tokenizer.eos_id is None else [tokenizer.eos_id]
    lengths = np.array([len(pre) + len(e) + len(post) for e in encoded], np.int64)
    tokens = np.empty(int(lengths.sum()), np.int32)
    offsets = _offsets(lengths)
    for i, e in enumerate(encoded):
        a, b = offsets[i], offsets[i + 1]
        tokens[a : a + len(pre)] = pre
        tokens[a + len(pre) : b - len(post)] = e
        tokens[b - len(post) : b] = post
    corpus = Corpus(tokens, offsets)
    with _CORPORA_LOCK:
        _CORPORA[stamp] = corpus
    return corpus


# ---------------------------------------------------------------------------------------- packing


def _flags(corpus: Corpus) -> tuple[np.ndarray, np.ndarray]:
    """(first, last) bool [N]: the token starts / ends a document."""
    n = len(corpus.tokens)
    first, last = np.zeros(n, bool), np.zeros(n, bool)
    nonempty = np.diff(corpus.offsets) > 0
    first[corpus.offsets[:-1][nonempty]] = True
    last[corpus.offsets[1:][nonempty] - 1] = True
    return first, last


def pack(
    tokens: np.ndarray, first: np.ndarray, last: np.ndarray, rows: int, seq_len: int, pad_id: int
) -> dict[str, np.ndarray]:
    """Packs a token span of rows * seq_len (+1 for the last label, or shorter: padded) into rows.

    first / last flag the tokens that start / end a document. Returns int32 [rows, seq_len] inputs,
    labels (next token of the same document, else -100) and segment_ids (1, 2, ... per document
    within a row; 0 = padding).
    """
    size = rows * seq_len
    n = min(len(tokens), size)
    inputs = np.full(size, pad_id, np.int32)
    labels = np.full(size, IGNORE_INDEX, np.int32)
    valid = np.zeros(size, bool)
    starts = np.zeros(size, bool)
    inputs[:n], valid[:n], starts[:n] = tokens[:n], True, first[:n]
    nxt = np.zeros(size, np.int32)
    has_next = np.zeros(size, bool)
    m = max(min(len(tokens) - 1, size), 0)
    nxt[:m] = tokens[1 : m + 1]
    has_next[:m] = ~last[:m]
    labels = np.where(has_next, nxt, labels).astype(np.int32)
    starts = starts.reshape(rows, seq_len)
    starts[:, 0] = True
    seg = np.cumsum(starts, axis=1, dtype=np.int32) * valid.reshape(rows, seq_len)
    return {
        'inputs': inputs.reshape(rows, seq_len),
        'labels': labels.reshape(rows, seq_len),
        'segment_ids': seg.astype(np.int32),
    }


class TextStream:
    """Deterministic, resumable packed training batches; `batch(step)` depends only on (data, seed, step)."""

    max_targets = None  # every position of a row may carry a label

    def __init__(self, corpus: Corpus, batch_size: int, seq_len: int, *, pad_id: int, seed: int):
        self.corpus = corpus
        self.batch_size, self.seq_len = int(batch_size), int(seq_len)
        self.pad_id, self.seed = int(pad_id), int(seed)
        self.epoch_tokens = len(corpus.tokens)
        self._first, self._last = _flags(corpus)
        self._epochs: dict[int, tuple] = {}
        self._lock = threading.Lock()

    def _epoch(self, e: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Tokens and (first, last) flags of epoch e: the documents in the order of its permutation."""
        with self._lock:
            if e not in self._epochs:
                perm = np.random.default_rng([self.seed, e]).permutation(self.corpus.num_docs)
                lengths = np.diff(self.corpus.offsets)[perm]
                idx = _gather_index(self.corpus.offsets[perm], lengths)
                if len(self._epochs) >= 2:  # keep the two newest epochs
                    del self._epochs[min(self._epochs)]
                self._epochs[e] = (self.corpus.tokens[idx], self._first[idx], self._last[idx])
            return self._epochs[e]

    def span(self, start: int, length: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Tokens [start, start + length) of the endless stream of epochs, and their flags."""
        parts = []
        pos, end = start, start + length
        while pos < end:
            e, off = divmod(pos, self.epoch_tokens)
            take = min(end - pos, self.epoch_tokens - off)
            parts.append(tuple(a[off : off + take] for a in self._epoch(e)))
            pos += take
        return tuple(np.concatenate(p) for p in zip(*parts))

    def batch(self, step: int) -> dict[str, np.ndarray]:
        """dict(inputs, labels, segment_ids), int32 [B, L]: rows [step*B, (step+1)*B) of the stream."""
        if step < 0:
            raise ValueError(f'step must be >= 0, got {step}')
        size = self.batch_size * self.seq_len
        tokens, first, last = self.span(step * size, size + 1)
        return pack(tokens, first, last, self.batch_size, self.seq_len, self.pad_id)


def eval_rows(
    corpus: Corpus, seq_len: int, pad_id: int, max_rows: int = 0
) -> dict[str, np.ndarray]:
    """The corpus packed once, in order, into rows of seq_len (the last one padded); max_rows caps."""
    rows = -(-len(corpus.tokens) // seq_len)
    if max_rows:
        rows = min(rows, max_rows)
    first, last = _flags(corpus)
    return pack(corpus.tokens, first, last, rows, seq_len, pad_id)


# ----------------------------------------------------------------------------- config -> data


def validate_config(cfg: Config) -> None:
    """The file and tokenizer checks of config.data.kind='text' (ConfigError naming the key)."""
    d = cfg.data
    resolve_files(d.train_files, 'config.data.train_files')
    if d.eval_files:
        resolve_files(d.eval_files, 'config.data.eval_files')
    tok = load_tokenizer(d.tokenizer)
    if cfg.model.vocab_size < tok.vocab_size:
        raise ConfigError(
            f'config.model.vocab_size: {cfg.model.vocab_size} is smaller than the vocabulary of '
            f'config.data.tokenizer={d.tokenizer!r} ({tok.name}: {tok.vocab_size} tokens)'
        )


def tokenizer_of(d: DataConfig):
    return load_tokenizer(d.tokenizer)


def _corpus(d: DataConfig, spec: str, key: str) -> Corpus:
    return load_corpus(resolve_files(spec, key), tokenizer_of(d), d.text_key, d.text_sample_by)


def split(d: DataConfig) -> tuple[Corpus, Corpus]:
    """(train, eval) corpora: eval_files, or a held-out eval_fraction of the training documents."""
    corpus = _corpus(d, d.train_files, 'config.data.train_files')
    if d.eval_files:
        return corpus, _corpus(d, d.eval_files, 'config.data.eval_files')
    n = corpus.num_docs
    n_eval = max(1, round(d.eval_fraction * n))
    if n - n_eval < 1:
        raise TextDataError(
            f'{d.train_files}: {n} document(s) cannot be split into train and eval by '
            f'config.data.eval_fraction={d.eval_fraction}; give config.data.eval_files'
        )
    held = np.random.default_rng([d.seed, _SPLIT_SALT]).permutation(n)[:n_eval]
    is_eval = np.zeros(n, bool)
    is_eval[held] = True
    return corpus.subset(np.flatnonzero(~is_eval)), corpus.subset(np.flatnonzero(is_eval))


def train_stream(cfg: Config) -> TextStream:
    d = cfg.data
    train, _ = split(d)
    return TextStream(
        train, cfg.train.batch_size, d.seq_len, pad_id=tokenizer_of(d).pad_id, seed=d.seed
    )


def eval_set(cfg: Config) -> dict[str, np.ndarray]:
    d = cfg.data
    _, held = split(d)
    return eval_rows(held, d.seq_len, tokenizer_of(d).pad_id, d.eval_examples)


def file_rows(
    cfg: Config, files: Sequence[str], key: str = '--perplexity'
) -> dict[str, np.ndarray]:
    """Packed rows of any local files with a run's tokenizer, seq_len and text settings (all rows)."""
    d = cfg.data
    corpus = _corpus(d, ','.join(files), key)
    return eval_rows(corpus, d.seq_len, tokenizer_of(d).pad_id)
