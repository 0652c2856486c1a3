"""Runs the colab notebooks top to bottom with tiny settings and checks they draw figures."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

_MISSING = 'needs the test extra (pip install -e ".[test]")'
nbformat = pytest.importorskip('nbformat', reason=f'nbformat is not installed; {_MISSING}')
nbclient = pytest.importorskip('nbclient', reason=f'nbclient is not installed; {_MISSING}')
pytest.importorskip('ipykernel', reason=f'ipykernel is not installed; {_MISSING}')

ROOT = Path(__file__).resolve().parents[1]
TOY_NOTEBOOK = ROOT / 'colabs' / 'toy_drifting.ipynb'
MNIST_NOTEBOOK = ROOT / 'colabs' / 'mnist_drifting.ipynb'
COMPARE_NOTEBOOK = ROOT / 'colabs' / 'compare_methods.ipynb'
TINY_PARAMETERS = 'STEPS = 30\nSNAPSHOTS = (0, 10, 30)\nBATCH = 128\n'


@pytest.fixture
def venv_kernel(tmp_path, monkeypatch):
    """A `python3` kernelspec that runs this interpreter (so the kernel sees this venv)."""
    from ipykernel.kernelspec import write_kernel_spec
    from jupyter_client.kernelspec import KernelSpecManager

    write_kernel_spec(tmp_path / 'kernels' / 'python3')
    monkeypatch.setenv('JUPYTER_PATH', str(tmp_path))  # searched before any other spec
    spec = KernelSpecManager().get_kernel_spec('python3')
    assert spec.argv[0] == sys.executable, spec.argv
    return 'python3'


def _parameters_cell(nb):
    tagged = [c for c in nb.cells if 'parameters' in c.get('metadata', {}).get('tags', [])]
    assert len(tagged) == 1, 'the notebook needs exactly one cell tagged "parameters"'
    return tagged[0]


def _with_parameters(nb, source: str):
    _parameters_cell(nb).source = source
    return nb


def _execute(nb, kernel_name: str) -> list:
    """Runs the notebook with the repo root as cwd; returns all outputs (no error outputs)."""
    client = nbclient.NotebookClient(
        nb, kernel_name=kernel_name, timeout=240, resources={'metadata': {'path': str(ROOT)}}
    )  # cwd = repo root: configs/ resolve
    client.execute()  # raises CellExecutionError on error
    outputs = [o for c in nb.cells if c.cell_type == 'code' for o in c.outputs]
    assert not [o for o in outputs if o.output_type == 'error']
    return outputs


def _images(outputs) -> list:
    return [o for o in outputs if 'image/png' in o.get('data', {})]


def _text(outputs) -> str:
    return ''.join(o.get('text', '') for o in outputs if o.output_type == 'stream')


@pytest.mark.parametrize(
    'path', [TOY_NOTEBOOK, MNIST_NOTEBOOK, COMPARE_NOTEBOOK], ids=lambda p: p.stem
)
def test_notebook_is_saved_without_outputs(path):
    nb = nbformat.read(path, as_version=4)
    nbformat.validate(nb)
    assert nb.metadata.kernelspec.name == 'python3'
    for cell in nb.cells:
        if cell.cell_type == 'code':
            assert not cell.outputs and cell.execution_count is None, cell.source[:80]


def test_mnist_notebook_exposes_parameters():
    source = _parameters_cell(nbformat.read(MNIST_NOTEBOOK, as_version=4)).source
    for name in ('DATASET', 'STEPS', 'DATA_DIR', 'ALPHAS', 'ALPHA_MAX', 'MNIST_SOURCE', 'TINY'):
        assert f'{name} = ' in source, name
    assert "DATASET = 'digits'" in source and 'TINY = False' in source


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_toy_notebook_runs_and_draws(venv_kernel):
    nb = _with_parameters(nbformat.read(TOY_NOTEBOOK, as_version=4), TINY_PARAMETERS)
    outputs = _execute(nb, venv_kernel)
    assert len(_images(outputs)) >= 2, 'expected the drift-field and the samples figures'
    text = _text(outputs)
    assert 'step    30' in text and 'energy distance' in text, text[-2000:]


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_mnist_notebook_runs_tiny_and_draws(venv_kernel, tmp_path):
    tiny = (
        f"DATASET = 'digits'\nSTEPS = 6\nDATA_DIR = {str(tmp_path / 'tfds')!r}\n"
        "ALPHAS = (1.0, 3.0)\nALPHA_MAX = 3.0\nMNIST_SOURCE = ''\nTINY = True\n"
    )
    outputs = _execute(
        _with_parameters(nbformat.read(MNIST_NOTEBOOK, as_version=4), tiny), venv_kernel
    )
    # real digits, loss curve, class grid, one figure of alpha grids, accuracy/spread plot
    assert len(_images(outputs)) >= 5
    text = _text(outputs)
    assert 'class accuracy' in text and 'spread ratio' in text, text[-2000:]
    assert '  3.00 |' in text, text[-2000:]  # a table row per alpha


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_compare_notebook_runs_tiny_and_draws(venv_kernel, tmp_path):
    tiny = (
        "DATA = ('spiral',)\nMETHODS = ('drifting', 'ddpm')\nSTEPS = 4\n"
        f'DDPM_STEPS = (2, 5, 20)\nOUT = {str(tmp_path / "compare")!r}\nTINY = True\n'
    )
    outputs = _execute(
        _with_parameters(nbformat.read(COMPARE_NOTEBOOK, as_version=4), tiny), venv_kernel
    )
    # the sample grid, quality against NFE and against training time
    assert len(_images(outputs)) >= 3
    text = _text(outputs)
    assert '| spiral | drifting | ' in text and '| spiral | ddpm | ' in text, text[-2000:]
    assert 'NFE 2: ' in text and 'NFE 20: ' in text, text[-2000:]
