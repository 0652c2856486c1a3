"""Writes tests/fixtures/inception_fixture.npz: pytorch-fid's own network on random weights.

    pip install torch pytorch-fid      # in a separate environment; drift_jax is not needed
    python tests/make_inception_fixture.py [--out=tests/fixtures/inception_fixture.npz]

pytorch-fid's `InceptionV3` (FID blocks, its resize and normalisation) is built without its
download, then every convolution and the classifier are narrowed to 1/WIDTH_DIVISOR of their
channels (same kernels, strides and paddings; the blocks' forward code is pytorch-fid's) and
given seeded random weights and batch-norm statistics. The file holds that state dict (torch
names and layouts), inputs and outputs of each Mixed block, pytorch-fid's four block outputs,
pool features and logits end to end from [0, 1] images (resize to 299 included), and a few
`F.interpolate` cases. tests/test_fid.py checks drift_jax.eval.inception against it without
torch. The output is the same bytes on every run (fixed seeds, one thread, fixed zip
timestamps).
"""

from __future__ import annotations

import argparse
import os
import zipfile
from unittest import mock

import numpy as np
import pytorch_fid
import pytorch_fid.inception as pfi
import torch
import torch.nn.functional as F
import torchvision
from torchvision.models.inception import BasicConv2d, Inception3

WIDTH_DIVISOR = 8
NUM_CLASSES = 1008
SEED = 0
MIXED = [
    'Mixed_5b',
    'Mixed_5c',
    'Mixed_5d',
    'Mixed_6a',
    'Mixed_6b',
    'Mixed_6c',
    'Mixed_6d',
    'Mixed_6e',
    'Mixed_7a',
    'Mixed_7b',
    'Mixed_7c',
]
OUT = os.path.join(os.path.dirname(os.path.abspath(__file__)), 'fixtures', 'inception_fixture.npz')


def build_pytorch_fid() -> tuple[torch.nn.Module, torch.nn.Module]:
    """pytorch-fid's InceptionV3 (all four blocks) and the torchvision Inception3 inside it,
    with the weight download and loading stubbed out."""
    captured = []

    def no_load(self, state_dict, *args, **kwargs):
        captured.append(self)

    with (
        mock.patch.object(pfi, 'load_state_dict_from_url', lambda *a, **k: {}),
        mock.patch.object(Inception3, 'load_state_dict', no_load),
    ):
        model = pfi.InceptionV3(
            output_blocks=(0, 1, 2, 3), resize_input=False, normalize_input=False
        )
    (inception,) = captured
    return model, inception


def narrow(model: torch.nn.Module, inception: torch.nn.Module, d: int) -> None:
    """Replaces every BasicConv2d (in both module trees, shared) by one with 1/d channels, and
    the classifier by Linear(2048/d, NUM_CLASSES)."""
    # Keyed by id, holding the old module too: a freed module's id could be reused.
    replaced: dict[int, tuple[torch.nn.Module, torch.nn.Module]] = {}
    made: list[torch.nn.Module] = []
    for root in (inception, model):
        for parent in list(root.modules()):
            for name, child in list(parent.named_children()):
                if not isinstance(child, BasicConv2d) or any(child is m for m in made):
                    continue
                if id(child) not in replaced:
                    c = child.conv
                    smaller = BasicConv2d(
                        c.in_channels if c.in_channels == 3 else c.in_channels // d,  # RGB stays
                        c.out_channels // d,
                        kernel_size=c.kernel_size,
                        stride=c.stride,
                        padding=c.padding,
                    )
                    replaced[id(child)] = (child, smaller)
                    made.append(smaller)
                setattr(parent, name, replaced[id(child)][1])
    inception.fc = torch.nn.Linear(2048 // d, NUM_CLASSES)


def randomize(inception: torch.nn.Module, gen: torch.Generator) -> None:
    """He-normal kernels and batch norms with random affine terms and running statistics, so
    activations keep a useful scale through the depth and each term of the norm matters."""
    for m in inception.modules():
        if isinstance(m, BasicConv2d):
            w = m.conv.weight
            fan_in = w.shape[1] * w.shape[2] * w.shape[3]
            w.copy_(torch.randn(w.shape, generator=gen) * (2.0 / fan_in) ** 0.5)
            c = w.shape[0]
            m.bn.weight.copy_(0.6 + 0.8 * torch.rand(c, generator=gen))
            m.bn.bias.copy_(0.1 * torch.randn(c, generator=gen))
            m.bn.running_mean.copy_(0.1 * torch.randn(c, generator=gen))
            m.bn.running_var.copy_(0.6 + torch.rand(c, generator=gen))
    fc = inception.fc
    fc.weight.copy_(torch.randn(fc.weight.shape, generator=gen) / fc.weight.shape[1] ** 0.5)
    fc.bias.copy_(0.1 * torch.randn(fc.bias.shape, generator=gen))


def write_npz(path: str, arrays: dict[str, np.ndarray]) -> None:
    """np.savez layout with fixed timestamps and order, so equal arrays give equal bytes."""
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with zipfile.ZipFile(path, 'w', compression=zipfile.ZIP_DEFLATED) as zf:
        for key in sorted(arrays):
            info = zipfile.ZipInfo(f'{key}.npy', date_time=(1980, 1, 1, 0, 0, 0))
            info.compress_type = zipfile.ZIP_DEFLATED
            with zf.open(info, 'w') as f:
                np.lib.format.write_array(f, np.asarray(arrays[key]), allow_pickle=False)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--out', default=OUT)
    out_path = parser.parse_args().out
    torch.set_num_threads(1)
    torch.manual_seed(SEED)
    gen = torch.Generator().manual_seed(SEED)
    model, inception = build_pytorch_fid()
    narrow(model, inception, WIDTH_DIVISOR)
    model.eval()
    inception.eval()
    arrays: dict[str, np.ndarray] = {
        'meta/width_divisor': np.asarray(WIDTH_DIVISOR),
        'meta/num_classes': np.asarray(NUM_CLASSES),
        'meta/versions': np.asarray(
            f'torch {torch.__version__}, torchvision {torchvision.__version__}, '
            f'pytorch-fid {pytorch_fid.__version__}'
        ),
    }
    with torch.no_grad():
        randomize(inception, gen)
        for key, value in inception.state_dict().items():
            arrays[f'state/{key}'] = value.numpy().copy()

        # Each Mixed block's input and output, on a 139 x 139 input in [-1, 1] (small, and
        # the last blocks still see 3 x 3 maps, so their padding matters).
        hooks = []
        for name in MIXED:

            def record(module, inputs, output, name=name):
                arrays[f'mixed/{name}/in'] = inputs[0].numpy().copy()
                arrays[f'mixed/{name}/out'] = output.numpy().copy()

            hooks.append(getattr(inception, name).register_forward_hook(record))
        model(torch.rand((2, 3, 139, 139), generator=gen) * 2 - 1)
        for h in hooks:
            h.remove()

        # End to end as pytorch-fid scores images: [0, 1] input, resized to 299, scaled to
        # [-1, 1], its four blocks' outputs, the pool features and the logits.
        model.resize_input = True
        model.normalize_input = True
        x01 = torch.rand((2, 3, 40, 30), generator=gen)
        outs = model(x01)
        pool = outs[-1].flatten(1)
        arrays['e2e/x'] = x01.numpy()
        for i, o in enumerate(outs):
            arrays[f'e2e/block{i}'] = o.numpy()
        arrays['e2e/pool'] = pool.numpy()
        arrays['e2e/logits'] = inception.fc(pool).numpy()

        # The resize on its own: up, down (no anti-aliasing), and the real 32 -> 299 case.
        cases = [((1, 2, 7, 9), (19, 13)), ((1, 2, 23, 31), (10, 12)), ((1, 1, 32, 32), (299, 299))]
        for i, (shape, size) in enumerate(cases):
            r = torch.rand(shape, generator=gen)
            arrays[f'resize/{i}/x'] = r.numpy()
            arrays[f'resize/{i}/y'] = F.interpolate(
                r, size=size, mode='bilinear', align_corners=False
            ).numpy()
    write_npz(out_path, arrays)
    scale = {k: round(float(np.abs(v).mean()), 3) for k, v in arrays.items() if '/block' in k}
    print(f'wrote {out_path}: {os.path.getsize(out_path) / 1e6:.2f} MB; mean |block| {scale}')


if __name__ == '__main__':
    main()
