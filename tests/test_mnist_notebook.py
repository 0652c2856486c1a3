"""Runs colabs/mnist_drifting.ipynb top to bottom on 8x8 digits with a tiny model."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

_MISSING = 'needs the test extra (pip install -e ".[test]")'
nbformat = pytest.importorskip('nbformat', reason=f'nbformat is not installed; {_MISSING}')
nbclient = pytest.importorskip('nbclient', reason=f'nbclient is not installed; {_MISSING}')
pytest.importorskip('ipykernel', reason=f'ipykernel is not installed; {_MISSING}')

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOK = ROOT / 'colabs' / 'mnist_drifting.ipynb'
PARAMETER_NAMES = ('DATASET', 'STEPS', 'DATA_DIR', 'ALPHAS', 'ALPHA_MAX', 'MNIST_SOURCE', 'TINY')


def _tiny_parameters(data_dir: Path) -> str:
    return (f"DATASET = 'digits'\nSTEPS = 6\nDATA_DIR = {str(data_dir)!r}\n"
            "ALPHAS = (1.0, 3.0)\nALPHA_MAX = 3.0\nMNIST_SOURCE = ''\nTINY = True\n")


@pytest.fixture
def venv_kernel(tmp_path, monkeypatch):
    """A `python3` kernelspec that runs this interpreter (so the kernel sees this venv)."""
    from ipykernel.kernelspec import write_kernel_spec
    from jupyter_client.kernelspec import KernelSpecManager

    write_kernel_spec(tmp_path / 'kernels' / 'python3')
    monkeypatch.setenv('JUPYTER_PATH', str(tmp_path))   # searched before any other spec
    spec = KernelSpecManager().get_kernel_spec('python3')
    assert spec.argv[0] == sys.executable, spec.argv
    return 'python3'


def _parameters_cell(nb):
    tagged = [c for c in nb.cells if 'parameters' in c.get('metadata', {}).get('tags', [])]
    assert len(tagged) == 1, 'the notebook needs exactly one cell tagged "parameters"'
    return tagged[0]


def test_notebook_is_saved_without_outputs_and_exposes_parameters():
    nb = nbformat.read(NOTEBOOK, as_version=4)
    nbformat.validate(nb)
    assert nb.metadata.kernelspec.name == 'python3'
    for cell in nb.cells:
        if cell.cell_type == 'code':
            assert not cell.outputs and cell.execution_count is None, cell.source[:80]
    source = _parameters_cell(nb).source
    for name in PARAMETER_NAMES:
        assert f'{name} = ' in source, name
    assert "DATASET = 'digits'" in source and 'TINY = False' in source


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_mnist_notebook_runs_tiny_and_draws(venv_kernel, tmp_path):
    nb = nbformat.read(NOTEBOOK, as_version=4)
    _parameters_cell(nb).source = _tiny_parameters(tmp_path / 'tfds')
    client = nbclient.NotebookClient(
        nb, kernel_name=venv_kernel, timeout=240,
        resources={'metadata': {'path': str(ROOT)}})     # cwd = repo root: configs/ resolve
    client.execute()                                      # raises CellExecutionError on error

    outputs = [o for c in nb.cells if c.cell_type == 'code' for o in c.outputs]
    assert not [o for o in outputs if o.output_type == 'error']
    images = [o for o in outputs if 'image/png' in o.get('data', {})]
    # real digits, loss curve, class grid, one figure of alpha grids, accuracy/spread plot
    assert len(images) >= 5, len(images)
    text = ''.join(o.get('text', '') for o in outputs if o.output_type == 'stream')
    assert 'class accuracy' in text and 'spread ratio' in text, text[-2000:]
    assert '  3.00 |' in text, text[-2000:]                # a table row per alpha
