#!/usr/bin/env bash
# Installs what repd's tests, bench and demo need, from Debian's packages,
# when run as root; otherwise says what is missing. Idempotent and quiet when
# everything is present.
set -euo pipefail

# tool → Debian package
declare -A pkg=(
  [fio]=fio
  [nbdinfo]=libnbd-bin
  [nbdcopy]=libnbd-bin
  [nbdsh]=libnbd-bin
  [nbdfuse]=nbdfuse
  [nbdkit]=nbdkit
  [qemu-img]=qemu-utils
  [qemu-io]=qemu-utils
  [qemu-nbd]=qemu-utils
  [ip]=iproute2
  [curl]=curl
  [ocf-tester]=resource-agents
  [shellcheck]=shellcheck
  [gnuplot]=gnuplot-nox
  [fusermount3]=fuse3
  [losetup]=mount
  [mkfs.ext4]=e2fsprogs
)
missing=()
for tool in "${!pkg[@]}"; do
  command -v "$tool" >/dev/null 2>&1 || missing+=("${pkg[$tool]}")
done
# nbdsh needs the Python binding.
/usr/bin/python3 -c 'import nbd' >/dev/null 2>&1 || missing+=(python3-libnbd)

if ! command -v go >/dev/null 2>&1 && [ ! -x /usr/local/go/bin/go ]; then
  echo "deps: Go is not installed (need Go >= 1.26 at /usr/local/go or on PATH)" >&2
  exit 1
fi

[ ${#missing[@]} -eq 0 ] && exit 0
mapfile -t missing < <(printf '%s\n' "${missing[@]}" | sort -u)
if [ "$(id -u)" -ne 0 ]; then
  echo "deps: missing Debian packages: ${missing[*]}" >&2
  echo "deps: run as root (or: sudo apt-get install ${missing[*]})" >&2
  exit 1
fi
echo "deps: installing ${missing[*]}"
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
