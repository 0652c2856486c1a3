"""Multi-process (multi-host) start-up: decide whether this process is one of several, then join.

`detect` is a pure function of flags and environment variables (see its docstring for the
launchers it knows); `initialize` calls `jax.distributed.initialize`. No import side effects.
"""

from __future__ import annotations

import dataclasses
import os
import re
from collections.abc import Mapping, Sequence

__all__ = ['DistributedSpec', 'detect', 'initialize', 'is_main_process']

_SLURM_PORT_BASE = 65535 - 2**12 + 1  # JAX's choice: the top 4096 ports, keyed by job id.


@dataclasses.dataclass(frozen=True)
class DistributedSpec:
    """How to join a multi-process run; None fields are left to JAX's auto-detection.

    Attributes:
      coordinator_address: 'host:port' of process 0's coordinator service.
      num_processes: total number of processes (> 1).
      process_id: this process's id in [0, num_processes).
      local_device_ids: restricts the devices this process uses (GPU ids); None = all.
      source: where the values came from ('flags', 'drift_jax_env', 'jax_env', 'slurm', 'tpu',
        'auto', or several joined by '+'), for log messages.
    """

    coordinator_address: str | None = None
    num_processes: int | None = None
    process_id: int | None = None
    local_device_ids: tuple[int, ...] | None = None
    source: str = 'flags'

    @property
    def fully_specified(self) -> bool:
        """True when coordinator, count and id are all known (JAX auto-detection is skipped)."""
        return None not in (self.coordinator_address, self.num_processes, self.process_id)


def _parse_int(value: str | int, name: str) -> int:
    if isinstance(value, int):
        return value
    try:
        return int(str(value).strip())
    except ValueError:
        raise ValueError(f'{name}={value!r} is not an integer') from None


def _parse_ids(value: str | Sequence[int], name: str) -> tuple[int, ...]:
    if isinstance(value, str):
        parts = [p for p in value.split(',') if p.strip()]
        ids = tuple(_parse_int(p, name) for p in parts)
    else:
        ids = tuple(_parse_int(v, name) for v in value)
    if not ids or any(i < 0 for i in ids):
        raise ValueError(f'{name}={value!r} must be a non-empty list of device ids >= 0')
    return ids


def _check_address(address: str, name: str) -> str:
    host, sep, port = address.strip().rpartition(':')
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError(f"{name}={address!r} must look like 'host:port' (port 1-65535)")
    return address.strip()


def first_slurm_host(node_list: str) -> str:
    """First host name of a SLURM hostlist: 'gpu[003-004,9],cpu1' -> 'gpu003'.

    Handles several bracket groups in one name ('r[1-2]n[07-08]' -> 'r1n07').
    """
    out, depth, in_first_item = [], 0, True
    for ch in node_list.strip():
        if depth == 0:
            if ch == ',':
                break
            if ch == '[':
                depth, in_first_item = 1, True
            else:
                out.append(ch)
        elif ch == ']':
            depth = 0
        elif ch in ',-':
            in_first_item = False
        elif in_first_item:
            out.append(ch)
    host = ''.join(out)
    if not host:
        raise ValueError(f'SLURM node list {node_list!r} has no host name')
    return host


def _tasks_on_node(env: Mapping[str, str], default: int) -> int:
    """Tasks on this node from 'SLURM_STEP_TASKS_PER_NODE' ('4(x2),3') and SLURM_NODEID."""
    spec = env.get('SLURM_STEP_TASKS_PER_NODE') or env.get('SLURM_TASKS_PER_NODE')
    if not spec:
        return default
    counts: list[int] = []
    for part in spec.split(','):
        m = re.fullmatch(r'\s*(\d+)(?:\(x(\d+)\))?\s*', part)
        if not m:
            return default
        counts += [int(m.group(1))] * int(m.group(2) or 1)
    node = _parse_int(env.get('SLURM_NODEID', '0'), 'SLURM_NODEID')
    return counts[node] if 0 <= node < len(counts) else default


def _from_slurm(env: Mapping[str, str]) -> dict[str, object] | None:
    node_list = env.get('SLURM_STEP_NODELIST')
    if not node_list or 'SLURM_PROCID' not in env:
        return None  # Not inside an srun step (e.g. the sbatch script itself).
    count_name = 'SLURM_STEP_NUM_TASKS' if 'SLURM_STEP_NUM_TASKS' in env else 'SLURM_NTASKS'
    if count_name not in env:
        return None
    num = _parse_int(env[count_name], count_name)
    if num <= 1:
        return None
    port_name = next(
        (n for n in ('DRIFT_JAX_COORDINATOR_PORT', 'JAX_COORDINATOR_PORT') if env.get(n)), None
    )
    if port_name:
        port = _parse_int(env[port_name], port_name)
    else:
        port = _SLURM_PORT_BASE + _parse_int(env.get('SLURM_JOB_ID', '0'), 'SLURM_JOB_ID') % 4096
    values: dict[str, object] = {
        'coordinator_address': f'{first_slurm_host(node_list)}:{port}',
        'num_processes': num,
        'process_id': _parse_int(env['SLURM_PROCID'], 'SLURM_PROCID'),
    }
    if 'SLURM_LOCALID' in env:
        nodes = _parse_int(
            env.get('SLURM_STEP_NUM_NODES') or env.get('SLURM_NNODES') or '1',
            'SLURM_STEP_NUM_NODES',
        )
        per_node = _tasks_on_node(env, default=-(-num // max(nodes, 1)))
        visible = [d for d in env.get('CUDA_VISIBLE_DEVICES', '').split(',') if d.strip()]
        if per_node > 1 and len(visible) != 1:
            values['local_device_ids'] = (_parse_int(env['SLURM_LOCALID'], 'SLURM_LOCALID'),)
    return values


def _tpu_multi_worker(env: Mapping[str, str]) -> bool:
    hosts = env.get('TPU_PROCESS_ADDRESSES') or env.get('TPU_WORKER_HOSTNAMES') or ''
    slices = env.get('MEGASCALE_NUM_SLICES', '').strip()
    return len([h for h in hosts.split(',') if h.strip()]) > 1 or (
        slices.isdigit() and int(slices) > 1
    )


_ENV_NAMES = {
    'drift_jax_env': (
        'DRIFT_JAX_COORDINATOR',
        'DRIFT_JAX_NUM_PROCESSES',
        'DRIFT_JAX_PROCESS_ID',
        'DRIFT_JAX_LOCAL_DEVICE_IDS',
    ),
    'jax_env': (
        'JAX_COORDINATOR_ADDRESS',
        'JAX_NUM_PROCESSES',
        'JAX_PROCESS_ID',
        'JAX_LOCAL_DEVICE_IDS',
    ),
}
_FIELDS = ('coordinator_address', 'num_processes', 'process_id', 'local_device_ids')


def detect(
    coordinator_address: str | None = None,
    num_processes: int | str | None = None,
    process_id: int | str | None = None,
    env: Mapping[str, str] = os.environ,
    local_device_ids: Sequence[int] | str | None = None,
) -> DistributedSpec | None:
    """Decides whether this process is one of several, and with which values.

    Where the values come from (per field, the first that has it wins):

    1. explicit arguments (the `--coordinator_address/--num_processes/--process_id` flags);
    2. `DRIFT_JAX_COORDINATOR`, `DRIFT_JAX_NUM_PROCESSES`, `DRIFT_JAX_PROCESS_ID`,
       `DRIFT_JAX_LOCAL_DEVICE_IDS` (set by `launch/local_multiprocess.sh`);
    3. JAX's own `JAX_COORDINATOR_ADDRESS`, `JAX_NUM_PROCESSES`, `JAX_PROCESS_ID`,
       `JAX_LOCAL_DEVICE_IDS`;
    4. an `srun` step: `SLURM_STEP_NODELIST` set and `SLURM_STEP_NUM_TASKS` (else
       `SLURM_NTASKS`) > 1. Resolved here the way JAX's auto-detection does it: coordinator =
       first host of the step's node list; port `DRIFT_JAX_COORDINATOR_PORT`, else
       `JAX_COORDINATOR_PORT`, else `61440 + SLURM_JOB_ID % 4096`. All values are passed, so
       JAX's auto-detection is off: it would pin every process to GPU `SLURM_LOCALID` even
       with one process per node. We pin `[SLURM_LOCALID]` only when several tasks share the
       node and `CUDA_VISIBLE_DEVICES` does not already hold one device. The sbatch script
       itself (no `srun`, no `SLURM_STEP_NODELIST`) counts as a single process.
    5. Cloud TPU with several workers (`TPU_WORKER_HOSTNAMES` or `TPU_PROCESS_ADDRESSES`
       listing several hosts, or `MEGASCALE_NUM_SLICES` > 1), or `DRIFT_JAX_DISTRIBUTED=auto`:
       unknown fields stay None and JAX detects them (`jax.distributed.initialize()` reads the
       TPU metadata server). GCE TPU VMs do not export the worker list, hence
       `launch/tpu_pod.sh` sets `DRIFT_JAX_DISTRIBUTED=auto`.

    `DRIFT_JAX_DISTRIBUTED=off` ignores the environment (explicit arguments still count). One
    process in total (`num_processes == 1`) gives None: nothing to coordinate.

    Args:
      coordinator_address: 'host:port' of process 0 (overrides the environment).
      num_processes: total number of processes (overrides the environment).
      process_id: this process's id (overrides the environment).
      env: the environment to read (default `os.environ`; tests pass a dict).
      local_device_ids: device ids this process should use (overrides the environment).

    Returns:
      A `DistributedSpec`, or None for a plain single process.

    Raises:
      ValueError: inconsistent or malformed values, naming the flag or variable at fault
        (process_id >= num_processes, num_processes < 1, a missing coordinator, ...).
    """
    explicit = dict(
        zip(
            _FIELDS, (coordinator_address, num_processes, process_id, local_device_ids), strict=True
        )
    )
    values: dict[str, object] = {}
    names: dict[str, str] = {}
    sources: list[str] = []

    def take(source: str, candidates: Mapping[str, object], labels: Mapping[str, str]) -> None:
        used = False
        for field in _FIELDS:
            if field not in values and candidates.get(field) not in (None, ''):
                values[field], names[field], used = candidates[field], labels[field], True
        if used:
            sources.append(source)

    take('flags', explicit, {f: f'--{f}' for f in _FIELDS})
    mode = env.get('DRIFT_JAX_DISTRIBUTED', '').strip().lower()
    if mode not in ('', 'auto', 'off'):
        raise ValueError(f"DRIFT_JAX_DISTRIBUTED={mode!r} must be 'auto', 'off' or unset")
    auto = False
    if mode != 'off':
        for source, env_names in _ENV_NAMES.items():
            take(
                source,
                {f: env.get(n) for f, n in zip(_FIELDS, env_names, strict=True)},
                dict(zip(_FIELDS, env_names, strict=True)),
            )
        slurm = _from_slurm(env)
        if slurm:
            if 'num_processes' in values:  # Not SLURM's process layout: do not pin GPUs.
                slurm.pop('local_device_ids', None)
            take('slurm', slurm, {f: f'SLURM ({f})' for f in _FIELDS})
        elif _tpu_multi_worker(env) or mode == 'auto':
            auto = True
            sources.append('tpu' if mode != 'auto' else 'auto')

    if not values and not auto:
        return None
    coord = values.get('coordinator_address')
    num = values.get('num_processes')
    pid = values.get('process_id')
    ids = values.get('local_device_ids')
    if coord is not None:
        coord = _check_address(str(coord), names['coordinator_address'])
    if num is not None:
        num = _parse_int(num, names['num_processes'])
        if num < 1:
            raise ValueError(f'{names["num_processes"]}={num} must be >= 1')
    if pid is not None:
        pid = _parse_int(pid, names['process_id'])
        if pid < 0:
            raise ValueError(f'{names["process_id"]}={pid} must be >= 0')
    if num is not None and pid is not None and pid >= num:
        raise ValueError(f'{names["process_id"]}={pid} must be < {names["num_processes"]}={num}')
    if ids is not None:
        ids = _parse_ids(ids, names['local_device_ids'])  # type: ignore[arg-type]
    if num == 1:
        return None
    if not auto:
        missing = [f'--{f}' for f in _FIELDS[:3] if values.get(f) is None]
        if missing:
            given = ', '.join(f'{names[f]}={values[f]!r}' for f in _FIELDS if f in values)
            raise ValueError(f'Multi-process run needs {", ".join(missing)} too (got {given})')
    return DistributedSpec(coord, num, pid, ids, '+'.join(sources))  # type: ignore[arg-type]


def initialize(
    spec: DistributedSpec | None,
    *,
    initialization_timeout: int = 300,
    heartbeat_timeout_seconds: int | None = None,
) -> bool:
    """Joins the multi-process run described by `spec` (no-op for None); call before any jax op.

    Makes sure CPU cross-process collectives use gloo (needed when the devices are CPUs; harmless
    on GPU/TPU), then calls `jax.distributed.initialize`. When the spec gives coordinator, count
    and id, JAX's own cluster auto-detection is switched off so the spec is used as is.

    Args:
      spec: from `detect`; None means single process and does nothing.
      initialization_timeout: seconds to wait for all processes to connect.
      heartbeat_timeout_seconds: seconds without heartbeats before a process is declared dead;
        default `DRIFT_JAX_HEARTBEAT_TIMEOUT` or 30 (JAX's default is 100). A collective whose
        peer died does not raise (measured on CPU/gloo: it blocks); the survivors are aborted
        (SIGABRT, exit status 134, no Python clean-up) about this long after the death. If
        process 0 (the coordinator) dies, the others abort within about a second.

    Returns:
      True if jax.distributed was initialised by this call.

    Raises:
      RuntimeError: the jax backend is already up or jax.distributed was initialised before.
      ValueError: a malformed heartbeat timeout.
    """
    if spec is None:
        return False
    import jax
    from jax._src import xla_bridge

    if jax.distributed.is_initialized():
        raise RuntimeError('jax.distributed is already initialised; call initialize() once.')
    if xla_bridge.backends_are_initialized():
        raise RuntimeError(
            'drift_jax.distributed.initialize must run before any jax computation '
            '(the jax backend is already initialised).'
        )
    if jax.config.jax_cpu_collectives_implementation in (None, 'none'):
        jax.config.update('jax_cpu_collectives_implementation', 'gloo')
    if heartbeat_timeout_seconds is None:
        heartbeat_timeout_seconds = _parse_int(
            os.environ.get('DRIFT_JAX_HEARTBEAT_TIMEOUT', '30'), 'DRIFT_JAX_HEARTBEAT_TIMEOUT'
        )
    if heartbeat_timeout_seconds < 1:
        raise ValueError(f'heartbeat_timeout_seconds={heartbeat_timeout_seconds} must be >= 1')
    kwargs: dict[str, object] = dict(
        coordinator_address=spec.coordinator_address,
        num_processes=spec.num_processes,
        process_id=spec.process_id,
        initialization_timeout=initialization_timeout,
        heartbeat_timeout_seconds=heartbeat_timeout_seconds,
    )
    if spec.local_device_ids is not None:
        kwargs['local_device_ids'] = list(spec.local_device_ids)
    if spec.fully_specified:
        kwargs['cluster_detection_method'] = 'deactivate'
    jax.distributed.initialize(**kwargs)  # type: ignore[arg-type]
    return True


def is_main_process() -> bool:
    """True on process 0 (the one that writes logs, metrics and samples)."""
    import jax

    return jax.process_index() == 0
