#!/usr/bin/env bash
# The device install, tested on 64-bit ARM under emulation: an arm64 Debian root file
# system run by qemu-user on this x86 machine, the offline bundle installed in it with
# no network, and cxr-predict on JPEG and DICOM films (uncompressed, MONOCHROME1, JPEG
# 2000, JPEG-LS) compared with cxr-predict here: the same decisions, and p_pneumonia
# within --tolerance (XNNPACK's ARM and x86 int8 kernels may round differently).
#
# Usage (as root, from the repository root; Debian with network for the first run):
#   scripts/check_arm64.sh --model=out/export/model_int8.tflite [--tolerance=0.02] WORK/
#
# WORK/rootfs, the arm64 root file system (Debian bookworm: Python 3.11, glibc 2.36, as
# 64-bit Raspberry Pi OS), is built once with mmdebstrap and reused. Emulation runs
# arm64 programs through binfmt_misc where the machine lets it be registered, else
# through qemu's -L prefix. It says nothing about speed on a real board. Not in CI: it
# takes minutes (the log ends with how long).
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
MODEL="" TOLERANCE="0.02" WORK=""
for arg in "$@"; do
  case "$arg" in
    --model=*) MODEL="${arg#*=}" ;;
    --tolerance=*) TOLERANCE="${arg#*=}" ;;
    -h|--help) sed -n '2,16p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
    -*) echo "check_arm64: unknown option $arg (see --help)" >&2; exit 2 ;;
    *) WORK="$arg" ;;
  esac
done
fail() { echo "check_arm64: error: $*" >&2; exit 1; }
say() { echo "check_arm64: $*" >&2; }
[ -n "$WORK" ] || fail "give a work folder (see --help)"
[ -f "$MODEL" ] || fail "--model '$MODEL' does not exist (scripts/run.sh exports one)"
[ "$(id -u)" = 0 ] || fail "run it as root (it builds and enters a root file system)"
START=$(date +%s)
MODEL="$(cd "$(dirname "$MODEL")" && pwd)/$(basename "$MODEL")"
mkdir -p "$WORK"
WORK="$(cd "$WORK" && pwd)"
RFS="$WORK/rootfs"
PY="$ROOT/.venv/bin/python"
[ -x "$PY" ] || fail "no $PY: run scripts/test.sh or scripts/run.sh once first"

need=()
[ -x /usr/bin/qemu-aarch64-static ] || need+=(qemu-user-static binfmt-support)
command -v mmdebstrap >/dev/null || need+=(mmdebstrap)
if [ ${#need[@]} -gt 0 ]; then
  say "installing ${need[*]}"
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need[@]}" >/dev/null
fi

# binfmt_misc lets the kernel hand arm64 programs to qemu: chroot and subprocesses work.
if [ ! -e /proc/sys/fs/binfmt_misc/qemu-aarch64 ]; then
  [ -e /proc/sys/fs/binfmt_misc/register ] ||
    mount -t binfmt_misc binfmt_misc /proc/sys/fs/binfmt_misc 2>/dev/null || true
  update-binfmts --enable qemu-aarch64 >/dev/null 2>&1 || true
fi
if [ -e /proc/sys/fs/binfmt_misc/qemu-aarch64 ]; then MODE=binfmt; else MODE=prefix; fi
MODE="${CXR_ARM64_MODE:-$MODE}"  # prefix: try the fallback where binfmt works too
say "emulation through $MODE"

if [ ! -x "$RFS/usr/bin/python3" ]; then
  say "building an arm64 Debian bookworm root file system in $RFS (once)"
  rm -rf "$RFS"
  if [ "$MODE" = binfmt ]; then
    mmdebstrap --quiet --arch=arm64 --variant=minbase --include=python3,python3-venv \
      bookworm "$RFS" http://deb.debian.org/debian
  else  # no maintainer scripts can run: the packages are unpacked only
    mmdebstrap --quiet --arch=arm64 --variant=extract \
      --include=python3,python3-venv,python3-minimal,libpython3.11-stdlib \
      bookworm "$RFS" http://deb.debian.org/debian
  fi
fi
say "root file system: $(cat "$RFS/etc/debian_version" 2>/dev/null) arm64," \
    "$(ls "$RFS"/usr/bin/python3.* | grep -o 'python3\.[0-9]*$' | head -1)"

say "building the aarch64 bundle and the films"
rm -rf "$RFS/opt/cxr" && mkdir -p "$RFS/opt/cxr"
bash "$ROOT/scripts/device_bundle.sh" --platform=aarch64 --python=3.11 --model="$MODEL" \
  "$RFS/opt/cxr/bundle"
(cd "$ROOT" && "$PY" -m scripts.device_check films "$RFS/opt/cxr/films") >&2
(cd "$ROOT" && "$PY" -m cxr_edge.edge.predict --model="$MODEL" "$RFS/opt/cxr/films" \
  --output="$WORK/x86_64.jsonl")

# Inside: no network at all (a new network namespace), only the bundle.
INSIDE='set -e
cd /opt/cxr/bundle
uname -m
python3 -m venv /opt/cxr/venv
/opt/cxr/venv/bin/pip install --quiet --no-index --find-links /opt/cxr/bundle "cxr-edge[edge]"
/opt/cxr/venv/bin/cxr-predict --version
/opt/cxr/venv/bin/cxr-predict --model=model/'"$(basename "$MODEL")"' --info | head -3
/opt/cxr/venv/bin/cxr-predict --model=model/'"$(basename "$MODEL")"' /opt/cxr/films \
  --output=/opt/cxr/arm64.jsonl'
say "installing offline and predicting inside the arm64 system"
# A clean environment: this machine's pip settings (PIP_FIND_LINKS...) stay outside.
CLEAN=(env -i PATH=/usr/sbin:/usr/bin:/sbin:/bin HOME=/root LANG=C.UTF-8)
if [ "$MODE" = binfmt ]; then
  # /sys and /dev, not /proc: LiteRT's CPU detection reads /proc/cpuinfo, which here
  # describes this machine's x86 CPUs and crashes it under emulation (a board's own
  # /proc/cpuinfo describes its ARM cores).
  for fs in sys dev; do mkdir -p "$RFS/$fs"; mount --bind "/$fs" "$RFS/$fs"; done
  trap 'for fs in sys dev; do umount "$RFS/$fs" 2>/dev/null || true; done' EXIT
  "${CLEAN[@]}" unshare --net chroot "$RFS" /bin/sh -c "$INSIDE"
else
  # Without binfmt only the first program is emulated: no venv (its pip runs as a
  # subprocess); pip from its own wheel into a target folder; cxr-predict as a module.
  # qemu's -L finds the guest's system files in the root file system, and paths that
  # are not there on this machine: so everything of ours is named by its host path.
  QEMU=(qemu-aarch64-static -L "$RFS")
  rm -rf "$WORK/pip" "$WORK/site"
  "$PY" -m pip download --quiet --no-deps --only-binary=:all: --dest "$WORK/pip" pip
  "${CLEAN[@]}" unshare --net "${QEMU[@]}" "$RFS/usr/bin/python3" "$(ls "$WORK"/pip/pip-*.whl)/pip" \
    install --quiet --no-index --no-compile --find-links "$RFS/opt/cxr/bundle" \
    --target "$WORK/site" "cxr-edge[edge]"
  "${CLEAN[@]}" PYTHONPATH="$WORK/site" unshare --net "${QEMU[@]}" "$RFS/usr/bin/python3" \
    -m cxr_edge.edge.predict --model="$RFS/opt/cxr/bundle/model/$(basename "$MODEL")" \
    "$RFS/opt/cxr/films" --output="$RFS/opt/cxr/arm64.jsonl"
fi
cp "$RFS/opt/cxr/arm64.jsonl" "$WORK/arm64.jsonl"
(cd "$ROOT" && "$PY" -m scripts.device_check compare "$WORK/x86_64.jsonl" "$WORK/arm64.jsonl" \
  --tolerance="$TOLERANCE") && STATUS=0 || STATUS=1
say "took $(( $(date +%s) - START )) s ($MODE); $( [ $STATUS = 0 ] && echo PASSED || echo FAILED)"
exit $STATUS
