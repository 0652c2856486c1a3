"""The FID Inception network's weights: pytorch-fid's torch file, this library's ``.npz``
conversion of it, where they are looked for, and their download.

Weights come from pytorch-fid's file (``FID_WEIGHTS_URL``, a torch pickle: reading it needs
torch) or from this library's ``.npz`` (`convert` writes it, `load_weights` reads either);
`find_weights` picks the file to use and says what to do when there is none.
`random_variables` makes stand-in weights of the right shapes for tests and benchmarks.
"""

from __future__ import annotations

import functools
import hashlib
import os
import urllib.request
from collections.abc import Mapping
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import traverse_util

from drift_jax.eval.inception import INPUT_SIZE, NUM_CLASSES, InceptionV3

#: pytorch-fid's Inception weights (TensorFlow's inception-2015-12-05 graph, ported).
FID_WEIGHTS_URL = (
    'https://github.com/mseitzer/pytorch-fid/releases/download/fid_weights/'
    'pt_inception-2015-12-05-6726825d.pth'
)
#: Environment variable naming the weights file (``.npz`` or ``.pth``).
ENV_VAR = 'DRIFT_JAX_INCEPTION'
#: Where the converted weights are looked for when no path is given.
DEFAULT_PATH = '~/.cache/drift_jax/inception_fid.npz'
#: Tag of this library's weight files.
FORMAT = 'drift_jax.inception_fid.v1'

# Hash prefix in pytorch-fid's file name: the first hex digits of the file's SHA-256.
_PTH_HASH_PREFIX = '6726825d'


def _torch_key_to_path(key: str) -> tuple[str, ...] | None:
    """torchvision state-dict name -> Flax variable path (None for counters)."""
    *module, leaf = key.split('.')
    table = {
        ('conv', 'weight'): ('params', 'kernel'),
        ('bn', 'weight'): ('params', 'scale'),
        ('bn', 'bias'): ('params', 'bias'),
        ('bn', 'running_mean'): ('batch_stats', 'mean'),
        ('bn', 'running_var'): ('batch_stats', 'var'),
        ('fc', 'weight'): ('params', 'kernel'),
        ('fc', 'bias'): ('params', 'bias'),
    }
    if leaf == 'num_batches_tracked':
        return None
    hit = table.get((module[-1], leaf)) if module else None
    if hit is None:
        raise ValueError(f'unexpected entry {key!r} in the Inception state dict')
    collection, name = hit
    return (collection, *module, name)


@functools.lru_cache(maxsize=8)
def variable_shapes(
    width_divisor: int = 1, num_classes: int = NUM_CLASSES
) -> dict[str, tuple[int, ...]]:
    """``'params/Mixed_5b/branch1x1/conv/kernel' -> shape`` for every variable of
    ``InceptionV3(width_divisor, num_classes)`` (traced once, no compute)."""
    model = InceptionV3(width_divisor, num_classes)
    x = jax.ShapeDtypeStruct((1, 75, 75, 3), jnp.float32)
    tree = jax.eval_shape(model.init, jax.random.PRNGKey(0), x)
    return {k: tuple(v.shape) for k, v in traverse_util.flatten_dict(tree, sep='/').items()}


def random_variables(width_divisor: int = 1, num_classes: int = NUM_CLASSES, seed: int = 0) -> dict:
    """Random weights of the right shapes (He-normal kernels, batch norms near identity), made
    in numpy without running the network: stand-ins for tests and benchmarks, not features
    anyone should report."""
    rng = np.random.default_rng(seed)
    flat = {}
    for key, shape in variable_shapes(width_divisor, num_classes).items():
        leaf = key.rsplit('/', 1)[1]
        if leaf == 'kernel':
            fan_in = int(np.prod(shape[:-1]))
            value = rng.normal(0.0, np.sqrt(2.0 / fan_in), shape)
        elif leaf in ('scale', 'var'):
            value = rng.uniform(0.8, 1.2, shape)
        else:  # bias, mean
            value = rng.normal(0.0, 0.05, shape)
        flat[key] = value.astype(np.float32)
    return traverse_util.unflatten_dict(flat, sep='/')


def _check_tree(variables: Mapping, width_divisor: int, num_classes: int, source: str) -> None:
    """ValueError naming missing, unexpected or misshapen entries."""
    want = variable_shapes(width_divisor, num_classes)
    got = traverse_util.flatten_dict(dict(variables), sep='/')
    missing = sorted(set(want) - set(got))
    extra = sorted(set(got) - set(want))
    shapes = [
        f'{k}: {tuple(np.shape(got[k]))} vs {want[k]}'
        for k in sorted(set(want) & set(got))
        if tuple(np.shape(got[k])) != want[k]
    ]
    if missing or extra or shapes:
        raise ValueError(
            f'{source} does not hold the FID Inception network (width_divisor={width_divisor}, '
            f'num_classes={num_classes}): missing {missing[:5]}, unexpected {extra[:5]}, '
            f'shapes differ {shapes[:5]}'
        )


def variables_from_state_dict(state: Mapping[str, Any]) -> tuple[dict, dict[str, int]]:
    """pytorch-fid's state dict (torchvision names, torch layouts) -> Flax variables.

    Convolution kernels ``[O, I, kh, kw]`` become ``[kh, kw, I, O]``, the classifier
    ``[K, F]`` becomes ``[F, K]``, batch norms map to ``params`` (scale, bias) and
    ``batch_stats`` (mean, var). The width divisor and class count are read from the shapes.

    Args:
      state: name -> array (numpy or anything ``np.asarray`` takes).

    Returns:
      ``(variables, meta)``: variables ``{'params': ..., 'batch_stats': ...}`` of float32
      numpy arrays, meta ``{'width_divisor': d, 'num_classes': K}``.
    """
    flat = {}
    for key, value in state.items():
        path = _torch_key_to_path(key)
        if path is None:
            continue
        a = np.asarray(value, np.float32)
        if path[-1] == 'kernel':
            a = a.transpose(2, 3, 1, 0) if a.ndim == 4 else a.T
        flat[path] = np.ascontiguousarray(a)
    try:
        first = flat[('params', 'Conv2d_1a_3x3', 'conv', 'kernel')]
        fc = flat[('params', 'fc', 'kernel')]
    except KeyError as e:
        raise ValueError(f'the Inception state dict has no {"/".join(e.args[0])}') from None
    meta = {'width_divisor': 32 // first.shape[-1], 'num_classes': int(fc.shape[1])}
    variables = traverse_util.unflatten_dict(flat)
    _check_tree(variables, meta['width_divisor'], meta['num_classes'], 'the state dict')
    return variables, meta


def read_torch_state_dict(path: str) -> dict[str, np.ndarray]:
    """Reads a torch ``.pth`` state dict as numpy arrays (needs torch: ``pip install torch``)."""
    try:
        import torch
    except ImportError:
        raise ImportError(
            f'reading {path} (a torch pickle) needs torch, which is not installed. Either '
            '`pip install torch` (CPU build is enough), or convert the file once on a machine '
            'that has torch: python -m drift_jax.fid convert --pth=PATH --out=inception.npz, '
            'and use the .npz.'
        ) from None
    state = torch.load(path, map_location='cpu', weights_only=True)
    return {k: v.detach().cpu().numpy() for k, v in state.items()}


def save_weights(
    path: str, variables: Mapping, width_divisor: int = 1, input_size: int = INPUT_SIZE
) -> None:
    """Writes ``variables`` as this library's ``.npz``: flat ``params/...`` and
    ``batch_stats/...`` entries, and ``meta/...``: format tag, width divisor, class count and
    the input side images are resized to (299; reduced test networks may say less, >= 75)."""
    flat = traverse_util.flatten_dict(dict(variables), sep='/')
    num_classes = int(np.shape(flat['params/fc/kernel'])[1])
    _check_tree(variables, width_divisor, num_classes, 'the variables')
    if input_size < 75:
        raise ValueError(f'input_size must be >= 75, got {input_size}')
    arrays = {k: np.asarray(v, np.float32) for k, v in flat.items()}
    arrays['meta/format'] = np.asarray(FORMAT)
    arrays['meta/width_divisor'] = np.asarray(width_divisor, np.int64)
    arrays['meta/num_classes'] = np.asarray(num_classes, np.int64)
    arrays['meta/input_size'] = np.asarray(input_size, np.int64)
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with open(path, 'wb') as f:
        np.savez(f, **arrays)


def load_weights(path: str) -> tuple[InceptionV3, dict, dict[str, int]]:
    """The network, its variables and meta from ``path``: this library's ``.npz`` or
    pytorch-fid's ``.pth`` (needs torch).

    The file says its own widths (``.npz`` meta, ``.pth`` shapes); meta holds
    ``width_divisor``, ``num_classes`` and ``input_size`` (299 for a ``.pth``).
    """
    path = os.path.expanduser(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(missing_weights_message([path]))
    if path.endswith(('.pth', '.pt')):
        variables, meta = variables_from_state_dict(read_torch_state_dict(path))
        meta['input_size'] = INPUT_SIZE
    else:
        with np.load(path) as f:
            if 'meta/format' not in f or str(f['meta/format']) != FORMAT:
                raise ValueError(
                    f'{path} is not a drift_jax Inception weight file (no meta/format '
                    f'{FORMAT!r}); make one with python -m drift_jax.fid convert.'
                )
            meta = {k: int(f[f'meta/{k}']) for k in ('width_divisor', 'num_classes', 'input_size')}
            flat = {k: f[k] for k in f.files if not k.startswith('meta/')}
        variables = traverse_util.unflatten_dict(flat, sep='/')
        _check_tree(variables, meta['width_divisor'], meta['num_classes'], path)
    model = InceptionV3(width_divisor=meta['width_divisor'], num_classes=meta['num_classes'])
    return model, jax.tree.map(jnp.asarray, variables), meta


def convert(pth: str, out: str) -> dict[str, int]:
    """pytorch-fid's ``.pth`` -> this library's ``.npz`` (needs torch); returns its meta."""
    variables, meta = variables_from_state_dict(read_torch_state_dict(pth))
    save_weights(out, variables, meta['width_divisor'])
    return meta


def missing_weights_message(tried: list[str]) -> str:
    """What to do when no weight file is found (the text of the errors)."""
    return (
        f'the FID Inception weights were not found (looked at: {", ".join(tried)}). '
        f"Download pytorch-fid's file\n  {FID_WEIGHTS_URL}\nthen convert it once (needs "
        'torch, e.g. `pip install drift_jax[fid-torch]`):\n  python -m drift_jax.fid convert '
        f'--pth=pt_inception-2015-12-05-6726825d.pth --out={DEFAULT_PATH}\nand either leave '
        f'it at {DEFAULT_PATH}, or point ${ENV_VAR}, --inception_weights or '
        'config.eval.inception_weights at it (.npz, or the .pth itself where torch is '
        'installed). `python -m drift_jax.fid download` does both steps.'
    )


def find_weights(path: str = '') -> str:
    """The weight file to use: ``path`` if given, else ``$DRIFT_JAX_INCEPTION``, else
    `DEFAULT_PATH`. FileNotFoundError with instructions when the chosen file is missing."""
    if path:
        tried = [path]
    elif os.environ.get(ENV_VAR):
        tried = [os.environ[ENV_VAR]]
    else:
        tried = [DEFAULT_PATH]
    found = os.path.expanduser(tried[0])
    if not os.path.isfile(found):
        raise FileNotFoundError(missing_weights_message(tried))
    return found


def download(out: str = DEFAULT_PATH, keep_pth: bool = False) -> str:
    """Downloads pytorch-fid's weights, checks their hash and converts them to ``out``.

    Only runs when called (``python -m drift_jax.fid download``); needs network and torch.
    Returns the path written.
    """
    out = os.path.expanduser(out)
    pth = os.path.join(os.path.dirname(os.path.abspath(out)), os.path.basename(FID_WEIGHTS_URL))
    os.makedirs(os.path.dirname(pth), exist_ok=True)
    if not os.path.isfile(pth):
        tmp = pth + '.part'
        urllib.request.urlretrieve(FID_WEIGHTS_URL, tmp)
        os.replace(tmp, pth)
    with open(pth, 'rb') as f:
        digest = hashlib.sha256(f.read()).hexdigest()
    if not digest.startswith(_PTH_HASH_PREFIX):
        raise ValueError(f'{pth} has SHA-256 {digest}, expected {_PTH_HASH_PREFIX}...; delete it')
    convert(pth, out)
    if not keep_pth:
        os.remove(pth)
    return out
