"""Multi-process start-up: `distributed.detect` per launcher, the launch scripts, real processes.

The slow tests start 2 JAX processes on CPU via launch/local_multiprocess.sh (gloo collectives)
and check that a failing process takes the others down quickly, leaving nothing behind.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import pytest
from _xla_flags import with_fake_devices

from drift_jax import distributed
from drift_jax.distributed import DistributedSpec, detect

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
LAUNCH = os.path.join(ROOT, 'launch')
LOCAL = os.path.join(LAUNCH, 'local_multiprocess.sh')

SLURM_STEP = {  # `srun` task 5 of 16 on 2 nodes with 8 tasks each.
    'SLURM_JOB_ID': '1234',
    'SLURM_NTASKS': '16',
    'SLURM_STEP_NUM_TASKS': '16',
    'SLURM_PROCID': '5',
    'SLURM_LOCALID': '5',
    'SLURM_NODEID': '0',
    'SLURM_STEP_NODELIST': 'gpu[003-004]',
    'SLURM_JOB_NODELIST': 'gpu[003-004]',
    'SLURM_STEP_NUM_NODES': '2',
    'SLURM_STEP_TASKS_PER_NODE': '8(x2)',
}


def _env(**extra: str) -> dict[str, str]:
    """The current environment with extras, and the package importable from the checkout."""
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(
            (
                'DRIFT_JAX_',
                'SLURM_',
                'JAX_COORDINATOR',
                'JAX_NUM_PROC',
                'JAX_PROCESS_ID',
                'TPU_',
                'MEGASCALE_',
            )
        )
    }
    env['PYTHONPATH'] = os.pathsep.join(p for p in (ROOT, env.get('PYTHONPATH')) if p)
    env.update(extra)
    return env


def _gone(pid: int, within: float = 5.0) -> bool:
    """True once no process has this pid (polling; it is not our child, so no zombie)."""
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return True
        time.sleep(0.05)
    return False


# --- detect -------------------------------------------------------------------------------


def test_plain_single_process_is_none():
    assert detect(env={}) is None
    assert detect(env={'HOME': '/root', 'JAX_PLATFORMS': 'cpu'}) is None


def test_our_launcher_env():
    env = {
        'DRIFT_JAX_COORDINATOR': '127.0.0.1:4321',
        'DRIFT_JAX_NUM_PROCESSES': '3',
        'DRIFT_JAX_PROCESS_ID': '2',
    }
    spec = detect(env=env)
    assert spec == DistributedSpec('127.0.0.1:4321', 3, 2, None, 'drift_jax_env')
    assert spec.fully_specified


def test_jax_standard_env_and_local_device_ids():
    env = {
        'JAX_COORDINATOR_ADDRESS': '10.0.0.1:1234',
        'JAX_NUM_PROCESSES': '4',
        'JAX_PROCESS_ID': '0',
        'JAX_LOCAL_DEVICE_IDS': '0,1',
    }
    assert detect(env=env) == DistributedSpec('10.0.0.1:1234', 4, 0, (0, 1), 'jax_env')


def test_slurm_one_task_per_gpu():
    spec = detect(env=SLURM_STEP)
    assert spec == DistributedSpec(f'gpu003:{61440 + 1234 % 4096}', 16, 5, (5,), 'slurm')


def test_slurm_one_task_per_node_and_bound_gpus_keep_all_devices():
    per_node = {
        **SLURM_STEP,
        'SLURM_NTASKS': '2',
        'SLURM_STEP_NUM_TASKS': '2',
        'SLURM_PROCID': '1',
        'SLURM_LOCALID': '0',
        'SLURM_NODEID': '1',
        'SLURM_STEP_TASKS_PER_NODE': '1(x2)',
    }
    assert detect(env=per_node).local_device_ids is None
    bound = {**SLURM_STEP, 'CUDA_VISIBLE_DEVICES': '0'}  # e.g. --gpus-per-task=1
    assert detect(env=bound).local_device_ids is None


def test_slurm_port_override_and_jax_coordinator_wins():
    assert (
        detect(env={**SLURM_STEP, 'DRIFT_JAX_COORDINATOR_PORT': '5555'}).coordinator_address
        == 'gpu003:5555'
    )
    spec = detect(env={**SLURM_STEP, 'JAX_COORDINATOR_ADDRESS': 'head:99'})
    assert (spec.coordinator_address, spec.num_processes, spec.process_id) == ('head:99', 16, 5)
    assert spec.source == 'jax_env+slurm'


def test_slurm_batch_script_and_single_task_are_single_process():
    batch = {k: v for k, v in SLURM_STEP.items() if not k.startswith('SLURM_STEP')}
    assert detect(env=batch) is None  # the sbatch script itself, before srun
    one = {**SLURM_STEP, 'SLURM_NTASKS': '1', 'SLURM_STEP_NUM_TASKS': '1', 'SLURM_PROCID': '0'}
    assert detect(env=one) is None


@pytest.mark.parametrize(
    'node_list, host',
    [
        ('node001', 'node001'),
        ('node001,host2', 'node001'),
        ('node[001-015],host2', 'node001'),
        ('node[007,009-015]', 'node007'),
        ('r[1-2]n[07-08]', 'r1n07'),
        ('a-b[3]', 'a-b3'),
    ],
)
def test_first_slurm_host(node_list, host):
    assert distributed.first_slurm_host(node_list) == host


def test_cloud_tpu_is_left_to_jax():
    tpu = {'TPU_WORKER_HOSTNAMES': 't0,t1,t2,t3', 'TPU_WORKER_ID': '2'}
    spec = detect(env=tpu)
    assert spec == DistributedSpec(None, None, None, None, 'tpu')
    assert not spec.fully_specified
    assert detect(env={'MEGASCALE_NUM_SLICES': '2', 'MEGASCALE_SLICE_ID': '1'}).source == 'tpu'
    assert detect(env={'TPU_WORKER_HOSTNAMES': 't0', 'TPU_WORKER_ID': '0'}) is None


def test_auto_and_off_switches():
    assert detect(env={'DRIFT_JAX_DISTRIBUTED': 'auto'}) == DistributedSpec(source='auto')
    ours = {
        'DRIFT_JAX_COORDINATOR': 'h:1',
        'DRIFT_JAX_NUM_PROCESSES': '2',
        'DRIFT_JAX_PROCESS_ID': '1',
    }
    assert detect(env={**ours, **SLURM_STEP, 'DRIFT_JAX_DISTRIBUTED': 'off'}) is None
    assert detect('c:2', 2, 0, env={'DRIFT_JAX_DISTRIBUTED': 'off'}).source == 'flags'


def test_explicit_values_override_env():
    env = {
        'DRIFT_JAX_COORDINATOR': 'envhost:1',
        'DRIFT_JAX_NUM_PROCESSES': '4',
        'DRIFT_JAX_PROCESS_ID': '3',
        **SLURM_STEP,
    }
    assert detect('flaghost:2', 2, 1, env=env) == DistributedSpec('flaghost:2', 2, 1, None, 'flags')
    spec = detect(process_id=0, env=env)
    assert (spec.coordinator_address, spec.num_processes, spec.process_id) == ('envhost:1', 4, 0)
    assert spec.source == 'flags+drift_jax_env'  # SLURM's GPU pinning is not used
    spec = detect(coordinator_address='flaghost:2', env=SLURM_STEP)
    assert spec == DistributedSpec('flaghost:2', 16, 5, (5,), 'flags+slurm')
    assert detect('h:1', 1, 0, env=env) is None  # one process in total


@pytest.mark.parametrize(
    'args, env, names',
    [
        (('h:1', 2, 2), {}, ['--process_id=2', '--num_processes=2']),
        (('h:1', 0, 0), {}, ['--num_processes=0']),
        (('h:1', 2, -1), {}, ['--process_id=-1']),
        (
            (),
            {
                'DRIFT_JAX_COORDINATOR': 'h:1',
                'DRIFT_JAX_NUM_PROCESSES': 'two',
                'DRIFT_JAX_PROCESS_ID': '0',
            },
            ["DRIFT_JAX_NUM_PROCESSES='two'"],
        ),
        (
            (),
            {
                'DRIFT_JAX_COORDINATOR': 'h:1',
                'DRIFT_JAX_NUM_PROCESSES': '2',
                'DRIFT_JAX_PROCESS_ID': '5',
            },
            ['DRIFT_JAX_PROCESS_ID=5'],
        ),
        (('nohostport', 2, 0), {}, ["--coordinator_address='nohostport'"]),
        (('h:99999', 2, 0), {}, ['--coordinator_address']),
        ((None, 2, 0), {}, ['--coordinator_address', '--num_processes=2']),
        ((None, None, 1), {}, ['--coordinator_address', '--num_processes']),
        ((), {'DRIFT_JAX_DISTRIBUTED': 'maybe'}, ["DRIFT_JAX_DISTRIBUTED='maybe'"]),
        ((), {**SLURM_STEP, 'SLURM_PROCID': 'x'}, ["SLURM_PROCID='x'"]),
    ],
)
def test_bad_values_raise_naming_the_value(args, env, names):
    with pytest.raises(ValueError) as info:
        detect(*args, env=env)
    for name in names:
        assert name in str(info.value)


def test_bad_local_device_ids():
    with pytest.raises(ValueError, match='--local_device_ids'):
        detect('h:1', 2, 0, env={}, local_device_ids='0,x')


def test_initialize_none_is_noop_and_late_call_is_refused():
    assert distributed.initialize(None) is False
    import jax

    jax.devices()  # the backend is up: joining a multi-process run is too late now
    with pytest.raises(RuntimeError, match='before any jax computation'):
        distributed.initialize(DistributedSpec('127.0.0.1:1', 2, 0))


def test_import_has_no_side_effects():
    code = (
        'import sys, drift_jax, drift_jax.distributed, drift_jax.main; '
        'assert "jax" not in sys.modules, "jax imported"'
    )
    out = subprocess.run(
        [sys.executable, '-c', code],
        env=_env(DRIFT_JAX_NUM_PROCESSES='2'),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.returncode == 0, out.stderr[-2000:]


def test_main_rejects_inconsistent_flags():
    out = subprocess.run(
        [
            sys.executable,
            '-m',
            'drift_jax.main',
            '--config=configs/spiral.py',
            '--coordinator_address=127.0.0.1:1',
            '--num_processes=2',
            '--process_id=2',
        ],
        cwd=ROOT,
        env=_env(),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.returncode != 0
    assert '--process_id=2 must be < --num_processes=2' in out.stderr


# --- scripts ------------------------------------------------------------------------------


@pytest.mark.parametrize('script', ['local_multiprocess.sh', 'slurm_gpu.sbatch', 'tpu_pod.sh'])
def test_scripts_parse_and_are_executable(script):
    path = os.path.join(LAUNCH, script)
    subprocess.run(['bash', '-n', path], check=True, timeout=30)
    assert os.access(path, os.X_OK)


@pytest.fixture
def fake_gcloud_path(tmp_path):
    """PATH whose `gcloud` fails loudly, so that a test can never reach a real gcloud."""
    (tmp_path / 'gcloud').write_text('#!/bin/sh\necho "real gcloud call: $*" >&2\nexit 99\n')
    (tmp_path / 'gcloud').chmod(0o755)
    return f'{tmp_path}{os.pathsep}/usr/bin{os.pathsep}/bin'


def test_tpu_pod_dry_run_prints_gcloud_commands(fake_gcloud_path):
    out = subprocess.run(
        [
            os.path.join(LAUNCH, 'tpu_pod.sh'),
            '--dry_run',
            'drift-v4',
            'us-central2-b',
            'v4-32',
            '--spot',
            '--',
            'python',
            '-m',
            'drift_jax.main',
            '--config=configs/spiral.py',
            '--workdir=gs://bucket/spiral',
        ],
        env=_env(PATH=fake_gcloud_path),
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    tpu = '+ gcloud compute tpus tpu-vm'
    assert lines[0] == f"{tpu} describe drift-v4 --zone=us-central2-b '--format=value(state)'"
    assert (
        f'{tpu} create drift-v4 --zone=us-central2-b --accelerator-type=v4-32 '
        '--version=tpu-ubuntu2204-base --spot'
    ) in lines
    scp = next(line for line in lines if line.startswith(f'{tpu} scp '))
    assert scp.endswith("'drift-v4:~/drift_jax_src.tar.gz' --zone=us-central2-b --worker=all")
    ssh = [
        line
        for line in lines
        if line.startswith(f'{tpu} ssh drift-v4 --zone=us-central2-b --worker=all ')
    ]
    assert len(ssh) == 2
    assert 'pip install -q -e ~/drift_jax' in ssh[0]
    assert ssh[1].endswith(
        'DRIFT_JAX_DISTRIBUTED=auto PYTHONUNBUFFERED=1 && python -m '
        'drift_jax.main --config=configs/spiral.py '
        "--workdir=gs://bucket/spiral'"
    )


def test_tpu_pod_needs_three_arguments_and_a_command(fake_gcloud_path):
    for args in (['a', 'b', '--', 'true'], ['a', 'b', 'c'], ['a', 'b', 'c', '--']):
        out = subprocess.run(
            [os.path.join(LAUNCH, 'tpu_pod.sh'), '--dry_run', *args],
            env=_env(PATH=fake_gcloud_path),
            capture_output=True,
            text=True,
            timeout=30,
        )
        assert out.returncode == 2 and 'Usage' in out.stderr, (args, out.stderr)


def test_local_launcher_validates_arguments():
    for args in (
        ['0', '--', 'true'],
        ['2', '--devices_per_process', 'x', '--', 'true'],
        ['2', '--'],
    ):
        out = subprocess.run([LOCAL, *args], capture_output=True, text=True, timeout=30)
        assert out.returncode == 2, (args, out.stderr)


def test_local_launcher_env_prefix_and_timeout():
    out = subprocess.run(
        [
            LOCAL,
            '2',
            '--devices_per_process',
            '3',
            '--',
            'bash',
            '-c',
            'echo "id=$DRIFT_JAX_PROCESS_ID n=$DRIFT_JAX_NUM_PROCESSES c=$DRIFT_JAX_COORDINATOR '
            'p=$JAX_PLATFORMS x=$XLA_FLAGS"',
        ],
        env=_env(),
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert out.returncode == 0, out.stderr
    for i in range(2):
        line = next(x for x in out.stdout.splitlines() if x.startswith(f'[{i}] id={i} '))
        assert 'n=2 c=127.0.0.1:' in line
        assert 'p=cpu x=--xla_force_host_platform_device_count=3' in line
    start = time.monotonic()
    out = subprocess.run(
        [LOCAL, '2', '--timeout', '1', '--', 'sleep', '60'],
        env=_env(),
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert out.returncode == 124 and 'timeout' in out.stderr
    assert time.monotonic() - start < 10


def _read_pids(path: str) -> list[int]:
    with open(path) as f:
        return [int(p) for p in f.read().split()]


def _wait_for_pids(
    path: str, count: int, proc: subprocess.Popen, within: float = 20.0
) -> list[int]:
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        if os.path.exists(path):
            pids = _read_pids(path)
            if len(pids) >= count:
                return pids
        assert proc.poll() is None, proc.communicate()
        time.sleep(0.05)
    raise AssertionError('processes did not start')


def test_local_launcher_stops_everything_when_interrupted(tmp_path):
    pids_file = str(tmp_path / 'pids')
    proc = subprocess.Popen(
        [LOCAL, '2', '--', 'bash', '-c', f'echo $$ >> {pids_file}; sleep 60'],
        env=_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        pids = _wait_for_pids(pids_file, 2, proc)
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=15)
        assert proc.returncode == 143 and 'terminated' in err
        assert all(_gone(pid) for pid in pids)
    finally:
        proc.kill()


@pytest.mark.slow
def test_local_launcher_kills_the_others_when_one_fails(tmp_path):
    pids_file = str(tmp_path / 'pids')
    script = (
        'import os, sys, time\n'
        f'open({pids_file!r}, "a").write(f"{{os.getpid()}}\\n")\n'
        'if os.environ["DRIFT_JAX_PROCESS_ID"] == "1":\n'
        '    time.sleep(1.0); print("failing now"); sys.exit(3)\n'
        'time.sleep(300)\n'
    )
    start = time.monotonic()
    proc = subprocess.Popen(
        [LOCAL, '2', '--timeout', '120', '--', sys.executable, '-c', script],
        env=_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        out, err = proc.communicate(timeout=60)
    finally:
        proc.kill()
    assert proc.returncode == 3, err
    assert time.monotonic() - start < 15
    assert '[1] failing now' in out
    assert 'process 1 exited with status 3' in err
    pids = _read_pids(pids_file)
    assert len(pids) == 2 and all(_gone(pid) for pid in pids)


@pytest.mark.slow
def test_two_processes_four_devices_cross_process_sum():
    out = subprocess.run(
        [
            LOCAL,
            '2',
            '--devices_per_process',
            '2',
            '--timeout',
            '120',
            '--',
            sys.executable,
            os.path.join(ROOT, 'tests', 'multiprocess_check.py'),
        ],
        env=_env(),
        capture_output=True,
        text=True,
        timeout=150,
    )
    assert out.returncode == 0, (out.stdout[-3000:], out.stderr[-3000:])
    for i in range(2):
        assert (
            f'[{i}] MULTIPROCESS_OK process={i} count=2 devices=4 sum=412 gathered=[1.0, 2.0]'
        ) in out.stdout, out.stdout[-3000:]


@pytest.mark.slow
def test_survivor_aborts_after_heartbeat_timeout_when_peer_dies(tmp_path):
    """Without the launcher: process 1 dies; process 0, blocked in a collective, is aborted."""
    port = _free_port()
    procs = []
    for i in range(2):
        env = _env(
            JAX_PLATFORMS='cpu',
            XLA_FLAGS=with_fake_devices(2),
            DRIFT_JAX_COORDINATOR=f'127.0.0.1:{port}',
            DRIFT_JAX_NUM_PROCESSES='2',
            DRIFT_JAX_PROCESS_ID=str(i),
            PYTHONUNBUFFERED='1',
        )
        procs.append(
            subprocess.Popen(
                [
                    sys.executable,
                    os.path.join(ROOT, 'tests', 'multiprocess_check.py'),
                    '--die_after',
                    '1',
                    '--heartbeat_timeout',
                    '6',
                ],
                env=env,
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                text=True,
            )
        )
    try:
        out1, _ = procs[1].communicate(timeout=60)
        died = time.monotonic()
        out0, _ = procs[0].communicate(timeout=60)
        waited = time.monotonic() - died
    finally:
        for p in procs:
            p.kill()
    assert procs[1].returncode == 7 and 'DYING' in out1, out1[-2000:]
    assert procs[0].returncode != 0, out0[-2000:]
    assert 'stopped sending heartbeats' in out0, out0[-2000:]
    assert waited < 30


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(('127.0.0.1', 0))
        return s.getsockname()[1]
