#!/usr/bin/env bash
# Runs COMMAND as N cooperating JAX processes on this machine (CPU devices, gloo collectives),
# the way a multi-host job runs: same code paths as SLURM or a TPU pod, no cluster needed.
#
# Usage: launch/local_multiprocess.sh NUM_PROCESSES [--devices_per_process K] [--timeout SECONDS]
#            [--port PORT] -- COMMAND [ARGS...]
# Example: launch/local_multiprocess.sh 2 --devices_per_process 2 -- \
#            python -m drift_jax.main --config=configs/spiral.py --workdir=/tmp/spiral2
#
# Each process gets JAX_PLATFORMS=cpu, XLA_FLAGS=--xla_force_host_platform_device_count=K
# (default 1; appended to any XLA_FLAGS already set), PYTHONUNBUFFERED=1 and
# DRIFT_JAX_COORDINATOR=127.0.0.1:PORT (a free port unless --port), DRIFT_JAX_NUM_PROCESSES,
# DRIFT_JAX_PROCESS_ID, which `drift_jax.distributed.detect()` reads. Output lines are prefixed
# with "[i] ". If any process fails, the others are killed (whole process groups) and the script
# exits with that process's status; after --timeout seconds (default 3600) everything is killed
# and it exits 124. Interrupting the script (Ctrl-C, TERM) also kills every process.
set -euo pipefail

usage() {
  sed -n '4,7p' "$0" | sed 's/^# \{0,1\}//' >&2
  exit 2
}

num_processes=''
devices_per_process=1
timeout_s=3600
port=''
while (($#)); do
  case "$1" in
    --devices_per_process) devices_per_process="${2:?}"; shift 2 ;;
    --devices_per_process=*) devices_per_process="${1#*=}"; shift ;;
    --timeout) timeout_s="${2:?}"; shift 2 ;;
    --timeout=*) timeout_s="${1#*=}"; shift ;;
    --port) port="${2:?}"; shift 2 ;;
    --port=*) port="${1#*=}"; shift ;;
    -h|--help) usage ;;
    --) shift; break ;;
    -*) echo "local_multiprocess.sh: unknown option $1" >&2; usage ;;
    *)
      if [[ -n "$num_processes" ]]; then
        echo "local_multiprocess.sh: put the command after '--' (got $1)" >&2; usage
      fi
      num_processes="$1"; shift ;;
  esac
done
for pair in "NUM_PROCESSES:$num_processes" "--devices_per_process:$devices_per_process" \
            "--timeout:$timeout_s" "--port:${port:-1}"; do
  if ! [[ "${pair#*:}" =~ ^[1-9][0-9]*$ ]]; then
    echo "local_multiprocess.sh: ${pair%%:*} must be a positive integer (got '${pair#*:}')" >&2
    usage
  fi
done
(($#)) || { echo 'local_multiprocess.sh: no COMMAND after --' >&2; usage; }

if [[ -z "$port" ]]; then
  # Ask the kernel for a free port; it is released at once and taken by process 0 moments later.
  port="$("${PYTHON:-python3}" -c 'import socket
s = socket.socket()
s.bind(("127.0.0.1", 0))
print(s.getsockname()[1])' 2>/dev/null || echo $((20000 + RANDOM % 40000)))"
fi

pids=()
cleanup() {
  local status=$? pid deadline
  trap - EXIT INT TERM
  for pid in "${pids[@]}"; do    # Each job leads its own process group (setsid): kill it all.
    kill -TERM -- "-$pid" 2>/dev/null || kill -TERM "$pid" 2>/dev/null || true
  done
  deadline=$((SECONDS + 5))
  for pid in "${pids[@]}"; do
    while { kill -0 -- "-$pid" 2>/dev/null || kill -0 "$pid" 2>/dev/null; } &&
          ((SECONDS < deadline)); do
      sleep 0.1
    done
    kill -KILL -- "-$pid" 2>/dev/null || kill -KILL "$pid" 2>/dev/null || true
  done
  exit "$status"
}
trap cleanup EXIT
trap 'echo "[launch] interrupted: stopping all processes" >&2; exit 130' INT
trap 'echo "[launch] terminated: stopping all processes" >&2; exit 143' TERM

setsid_cmd=()
command -v setsid >/dev/null && setsid_cmd=(setsid)
echo "[launch] $num_processes processes x $devices_per_process CPU devices," \
     "coordinator 127.0.0.1:$port" >&2
for ((i = 0; i < num_processes; i++)); do
  JAX_PLATFORMS=cpu \
  XLA_FLAGS="--xla_force_host_platform_device_count=$devices_per_process ${XLA_FLAGS:-}" \
  PYTHONUNBUFFERED=1 \
  DRIFT_JAX_COORDINATOR="127.0.0.1:$port" \
  DRIFT_JAX_NUM_PROCESSES="$num_processes" \
  DRIFT_JAX_PROCESS_ID="$i" \
    "${setsid_cmd[@]}" bash -c \
      '"$@" 2>&1 </dev/null | sed -u "s/^/[$DRIFT_JAX_PROCESS_ID] /"; exit "${PIPESTATUS[0]}"' \
      launch "$@" &
  pids+=("$!")
done

# Poll rather than `wait -n`, so that bash < 5.1 (macOS) works too.
running=("${pids[@]}")
start=$SECONDS
while ((${#running[@]})); do
  still=()
  for idx in "${!running[@]}"; do
    pid="${running[$idx]}"
    if kill -0 "$pid" 2>/dev/null; then
      still+=("$pid")
      continue
    fi
    status=0
    wait "$pid" || status=$?
    if ((status != 0)); then
      for ((i = 0; i < num_processes; i++)); do
        [[ "${pids[$i]}" == "$pid" ]] && break
      done
      echo "[launch] process $i exited with status $status: stopping the others" >&2
      exit "$status"
    fi
  done
  running=("${still[@]+"${still[@]}"}")
  if ((${#running[@]})); then
    if ((SECONDS - start >= timeout_s)); then
      echo "[launch] timeout after ${timeout_s}s: stopping all processes" >&2
      exit 124
    fi
    sleep 0.2
  fi
done
echo "[launch] all $num_processes processes finished" >&2
