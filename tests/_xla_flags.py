"""XLA_FLAGS for the subprocesses that the tests start."""

from __future__ import annotations

import os


def with_fake_devices(devices: int) -> str:
    """This process's XLA_FLAGS (the suite's optimisation level, see conftest.py) plus
    `devices` fake CPU devices, for a subprocess's environment."""
    return (
        f'--xla_force_host_platform_device_count={devices} {os.environ.get("XLA_FLAGS", "")}'
    ).strip()
