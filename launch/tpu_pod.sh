#!/usr/bin/env bash
# Runs a command on every worker of a Cloud TPU VM slice (created if absent, else reused):
# copies this checkout to all workers, installs it with jax[tpu], then runs COMMAND everywhere.
#
# Usage: launch/tpu_pod.sh NAME ZONE ACCELERATOR_TYPE [options] -- COMMAND [ARGS...]
# Options: --project P, --version RUNTIME (default tpu-ubuntu2204-base; v5e wants
#          v2-alpha-tpuv5-lite, v6e v2-alpha-tpuv6e), --spot, --skip_install, --dry_run
#          (print the gcloud commands instead of running them).
# Example: launch/tpu_pod.sh drift-v4 us-central2-b v4-32 -- \
#            python -m drift_jax.main --config=configs/mnist.py --workdir=gs://bucket/mnist
#
# Each worker runs COMMAND in ~/drift_jax with DRIFT_JAX_DISTRIBUTED=auto, so
# drift_jax.distributed hands over to jax.distributed.initialize() with no arguments (JAX reads
# the worker list from the TPU metadata server). The workdir should be a GCS path (or another
# file system all workers share). Delete the slice afterwards:
#   gcloud compute tpus tpu-vm delete NAME --zone=ZONE
set -euo pipefail

usage() {
  sed -n '5,10p' "$0" | sed 's/^# \{0,1\}//' >&2
  exit 2
}

positional=()
project=''
version='tpu-ubuntu2204-base'
spot=0
skip_install=0
dry_run=0
while (($#)); do
  case "$1" in
    --project) project="${2:?}"; shift 2 ;;
    --project=*) project="${1#*=}"; shift ;;
    --version) version="${2:?}"; shift 2 ;;
    --version=*) version="${1#*=}"; shift ;;
    --spot) spot=1; shift ;;
    --skip_install) skip_install=1; shift ;;
    --dry_run) dry_run=1; shift ;;
    -h|--help) usage ;;
    --) shift; break ;;
    -*) echo "tpu_pod.sh: unknown option $1" >&2; usage ;;
    *) positional+=("$1"); shift ;;
  esac
done
if ((${#positional[@]} != 3)) || (($# == 0)); then
  echo 'tpu_pod.sh: need NAME ZONE ACCELERATOR_TYPE -- COMMAND' >&2
  usage
fi
name="${positional[0]}"
zone="${positional[1]}"
accelerator="${positional[2]}"
repo_root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"

# Shell-quotes one word only where needed, so dry-run output stays readable.
quote() {
  if [[ "$1" =~ ^[A-Za-z0-9_./:=@,+%-]+$ ]]; then printf '%s' "$1"; else printf '%s' "${1@Q}"; fi
}
run() {
  if ((dry_run)); then
    local word line='+'
    for word in "$@"; do line+=" $(quote "$word")"; done
    echo "$line"
  else
    "$@"
  fi
}

gcloud_tpu=(gcloud compute tpus tpu-vm)
common=("--zone=$zone")
[[ -n "$project" ]] && common+=("--project=$project")

# 1. Create the slice unless it exists.
create=("${gcloud_tpu[@]}" create "$name" "${common[@]}" "--accelerator-type=$accelerator"
        "--version=$version")
((spot)) && create+=(--spot)
if ((dry_run)); then
  run "${gcloud_tpu[@]}" describe "$name" "${common[@]}" '--format=value(state)'
  echo '# if describe fails (no such slice):'
  run "${create[@]}"
elif state="$("${gcloud_tpu[@]}" describe "$name" "${common[@]}" --format='value(state)' \
                2>/dev/null)"; then
  echo "tpu_pod.sh: reusing $name ($accelerator, state $state)" >&2
else
  echo "tpu_pod.sh: creating $name ($accelerator in $zone)" >&2
  run "${create[@]}"
fi

# 2. Copy this checkout (without virtualenvs, git data and run outputs) and install it.
if ((!skip_install)); then
  tarball="${TMPDIR:-/tmp}/drift_jax_src_$$.tar.gz"
  ((dry_run)) || trap 'rm -f "$tarball"' EXIT
  run tar -czf "$tarball" -C "$repo_root" --exclude=.git --exclude=.venv --exclude=workdirs \
      --exclude=__pycache__ .
  run "${gcloud_tpu[@]}" scp "$tarball" "$name:~/drift_jax_src.tar.gz" "${common[@]}" \
      --worker=all
  install='rm -rf ~/drift_jax && mkdir -p ~/drift_jax'
  install+=' && tar -xzf ~/drift_jax_src.tar.gz -C ~/drift_jax'
  install+=' && python3 -m pip install -q -U "jax[tpu]"'
  install+=' && python3 -m pip install -q -e ~/drift_jax'
  run "${gcloud_tpu[@]}" ssh "$name" "${common[@]}" --worker=all "--command=$install"
fi

# 3. Run the command on every worker at once.
command_line=''
for word in "$@"; do command_line+=" $(quote "$word")"; done
remote='cd ~/drift_jax && export DRIFT_JAX_DISTRIBUTED=auto PYTHONUNBUFFERED=1 &&'
run "${gcloud_tpu[@]}" ssh "$name" "${common[@]}" --worker=all "--command=$remote$command_line"
