"""The comparison notebook executes headless at its tiny setting and produces its figures."""

import os

import nbformat
from nbclient import NotebookClient

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_compare_architectures_notebook(tmp_path, monkeypatch):
    monkeypatch.setenv('EFFATTN_NOTEBOOK_TINY', '1')
    monkeypatch.setenv('EFFATTN_NOTEBOOK_OUT', str(tmp_path))
    nb = nbformat.read(os.path.join(ROOT, 'notebooks', 'compare_architectures.ipynb'), as_version=4)
    NotebookClient(nb, timeout=600, kernel_name='python3', resources={'metadata': {'path': str(tmp_path)}}).execute()
    for name in ('recall_vs_state.png', 'time_vs_length.png'):
        path = tmp_path / name
        assert path.exists() and path.stat().st_size > 1000, name
    assert (tmp_path / 'runs' / 'results.md').exists()
