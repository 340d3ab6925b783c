"""Writes a local English text corpus for configs/lm_text.py from what this machine already has.

No download: the text comes from the Python standard library's own documentation (the docstrings of
its modules, classes and functions, and the reference topics that `help()` shows, pydoc_data), the
license texts under /usr/share/common-licenses when present, and `import this`. Each paragraph is
one document, written on one line (wrapped lines joined), deduplicated, in a fixed order: the same
Python version writes the same file.

  python scripts/make_corpus.py                         # -> runs/corpus.txt
  python scripts/make_corpus.py --out=/tmp/corpus.txt --min_chars=60
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import inspect
import io
import os
import re
import sys
import warnings

SKIP = {  # side effects on import (a browser, a window, printing), or tests
    'antigravity',
    'this',
    'idlelib',
    'tkinter',
    'turtle',
    'turtledemo',
    'test',
    'ensurepip',
    'lib2to3',
    'pydoc_data',
    '__main__',
    'xxlimited',
    'xxlimited_35',
    'xxsubtype',
}


def paragraphs(doc: str) -> list[str]:
    """Blank-line separated paragraphs, each on one line; code-like and very short ones dropped."""
    out = []
    for para in re.split(r'\n\s*\n', doc):
        lines = [ln.strip() for ln in para.strip().splitlines()]
        if not lines or any(
            ln.startswith(('>>>', '...', '$ ', '|', '+-', '==', '--')) for ln in lines
        ):
            continue
        out.append(' '.join(ln for ln in lines if ln))
    return out


def stdlib_docs() -> list[str]:
    docs = []
    for name in sorted(sys.stdlib_module_names):
        if name.startswith('_') or name in SKIP:
            continue
        try:
            with (
                warnings.catch_warnings(),
                contextlib.redirect_stdout(io.StringIO()),
                contextlib.redirect_stderr(io.StringIO()),
            ):
                warnings.simplefilter('ignore')
                module = importlib.import_module(name)
        except BaseException:  # noqa: BLE001, S112  (not built here, or needs a display)
            continue
        docs.append(inspect.getdoc(module) or '')
        for attr, obj in sorted(vars(module).items()):
            if attr.startswith('_') or getattr(obj, '__module__', None) != name:
                continue
            if inspect.isclass(obj) or inspect.isfunction(obj):
                docs.append(inspect.getdoc(obj) or '')
                if inspect.isclass(obj):
                    for _, meth in sorted(vars(obj).items()):
                        if inspect.isfunction(meth) and not meth.__name__.startswith('_'):
                            docs.append(inspect.getdoc(meth) or '')
    try:
        from pydoc_data.topics import topics

        docs += [topics[k] for k in sorted(topics)]
    except ImportError:
        pass
    return docs


def license_docs(folder: str = '/usr/share/common-licenses') -> list[str]:
    docs = []
    if os.path.isdir(folder):
        for name in sorted(os.listdir(folder)):
            path = os.path.join(folder, name)
            if os.path.isfile(path) and not os.path.islink(path):
                with open(path, encoding='utf-8', errors='replace') as f:
                    docs.append(f.read())
    return docs


def zen() -> str:
    import codecs

    with contextlib.redirect_stdout(io.StringIO()):
        import this
    return codecs.decode(this.s, 'rot13')


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--out', default='runs/corpus.txt')
    parser.add_argument('--min_chars', type=int, default=40, help='drop shorter paragraphs')
    args = parser.parse_args(argv)
    seen, lines = set(), []
    for doc in stdlib_docs() + license_docs() + [zen()]:
        for para in paragraphs(doc):
            if len(para) >= args.min_chars and para not in seen:
                seen.add(para)
                lines.append(para)
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    with open(args.out, 'w', encoding='utf-8') as f:
        f.write('\n'.join(lines) + '\n')
    size = os.path.getsize(args.out)
    print(f'wrote {args.out}: {len(lines):,} documents (one per line), {size / 1e6:.2f} MB')


if __name__ == '__main__':
    main()
