"""Pretrains a small byte-level LM on local text: softmax attention, d_model 128, 4 layers, SwiGLU,
seq_len 256, packed documents (no download; files through `datasets`, effattn/data/text.py).

  python scripts/make_corpus.py          # runs/corpus.txt: Python's own docs + license texts
  python train.py --config=configs/lm_text.py --workdir=runs/lm_text
  python train.py --config=configs/lm_text.py:files=my.txt,more.jsonl,kind=gla --workdir=runs/lm_gla
  python train.py --config=configs/lm_text.py --config.data.train_files=data/*.jsonl \\
      --config.data.text_key=content --config.data.tokenizer=path/to/hf_tokenizer_folder \\
      --config.model.vocab_size=32000
  python eval.py --workdir=runs/lm_text --perplexity=runs/corpus.txt
  python eval.py --workdir=runs/lm_text --generate "Return the " --max_new_tokens=200

Presets: files=<comma-separated paths or globs> (default runs/corpus.txt), kind=<attention kind>,
steps=<int>. The bytes tokenizer has 259 ids (256 bytes, PAD 256, BOS 257, EOS 258); the model's
vocabulary is rounded up to 320. 1% of the documents are held out for eval loss and perplexity.
"""

from configs import base

PRESETS = {'files': 'runs/corpus.txt', 'kind': 'softmax', 'steps': '2000'}


def parse(arg: str | None) -> dict:
    """key=value items separated by commas; an item without '=' continues the previous value
    (so that files=a.txt,b.txt lists two files)."""
    out, key = dict(PRESETS), None
    for item in filter(None, (arg or '').split(',')):
        if '=' in item:
            key, _, value = item.partition('=')
            if key not in out:
                raise ValueError(
                    f'configs/lm_text.py: unknown preset {key!r}; known: {", ".join(PRESETS)}'
                )
            out[key] = value
        elif key == 'files':
            out[key] += ',' + item
        else:
            raise ValueError(f'configs/lm_text.py: preset item {item!r} is not key=value')
    return out


def get_config(arg=None):
    p = parse(arg)
    c = base.get_config()
    c.name = f'lm-text-{p["kind"]}'
    c.model.attention.kind = p['kind']
    c.model.vocab_size = 320  # >= the 259 byte ids, a multiple of 64
    c.model.d_model = 128
    c.model.num_layers = 4
    c.model.mlp = 'swiglu'
    c.model.attention.num_heads = 4
    c.data.kind = 'text'
    c.data.train_files = p['files']
    c.data.tokenizer = ''  # bytes
    c.data.text_sample_by = 'line'
    c.data.seq_len = 256
    c.data.eval_fraction = 0.01
    c.data.eval_examples = 256  # eval rows of 256 tokens
    c.train.steps = int(p['steps'])
    c.train.batch_size = 16
    c.train.lr = 2e-3
    c.train.warmup_steps = 50
    c.train.min_lr_ratio = 0.1
    c.train.weight_decay = 0.1
    c.train.eval_every = 200
    c.train.log_every = 20
    c.checkpoint.every = 200
    return c
