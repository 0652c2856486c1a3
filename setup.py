"""Packaging for drift_jax (CPU jax by default; see README for CUDA and TPU)."""

from setuptools import find_packages, setup

setup(
    name='drift_jax',
    version='0.1.0',
    description='Drifting Models (one-step generative models) in JAX and Flax.',
    packages=find_packages(include=['drift_jax', 'drift_jax.*']),
    python_requires='>=3.10',
    install_requires=[
        'jax>=0.7',
        'flax>=0.10',
        'optax>=0.2.4',
        'orbax-checkpoint>=0.11',
        'chex>=0.1.88',
        'ml-collections>=0.1.1',
        'absl-py>=2.0',
        'tensorflow-datasets>=4.9.7',
        'importlib_resources',
        'numpy>=1.26',
        'matplotlib>=3.8',
        'pillow>=10',
        'tqdm>=4.66',
        'tensorboardX>=2.6',
        'scikit-learn>=1.3',  # bundled 8x8 digits: the offline image dataset
    ],
    extras_require={
        'test': [
            'pytest>=8',
            'pytest-timeout>=2.3',
            'pytest-xdist>=3.5',  # the suite runs on two workers (pyproject addopts)
            'ruff>=0.6',
            'nbformat>=5.9',
            'nbclient>=0.10',
            'ipykernel>=6.29',
            'jupyter_client>=8',
            'scipy>=1.11',
        ],
        'docs': [
            'sphinx>=7',
            'myst-parser>=2',
        ],
        # Reading pytorch-fid's Inception weights (.pth) and remaking the test fixture
        # (docs/fid.md); FID itself runs on the converted .npz without torch.
        'fid-torch': [
            'torch>=2.0',
            'pytorch-fid>=0.3',
        ],
    },
)
