#!/usr/bin/env bash
# An offline install bundle for a device: cxr-edge's wheel and every dependency as
# wheels for the device's platform, the model package, checksums and INSTALL.txt.
#
# Usage (on a machine with the network, from the repository root):
#   scripts/device_bundle.sh --platform=aarch64 --python=3.11 \
#       [--extra=edge|node] [--model=out/export/model_int8.tflite] OUT/
#   (without --model the device runs the released model inside the wheel)
# On the device (no network needed):
#   python3 -m venv ~/cxr && ~/cxr/bin/pip install --no-index --find-links OUT/ "cxr-edge[edge]"
#
# --platform: aarch64 (64-bit ARM: Raspberry Pi OS 64-bit, Debian/Ubuntu arm64; glibc
# 2.27 or newer) or x86_64. 32-bit ARM has no LiteRT wheel and is refused.
# --python: the device's Python (major.minor), 3.10 to 3.12 as LiteRT ships them.
# --extra: edge (cxr-predict, cxr-calibrate) or node (also cxr-node). Default: edge.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
PLATFORM="" PYVER="" EXTRA="edge" MODEL="" OUT=""
for arg in "$@"; do
  case "$arg" in
    --platform=*) PLATFORM="${arg#*=}" ;;
    --python=*) PYVER="${arg#*=}" ;;
    --extra=*) EXTRA="${arg#*=}" ;;
    --model=*) MODEL="${arg#*=}" ;;
    -h|--help) sed -n '2,15p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
    -*) echo "device_bundle: unknown option $arg (see --help)" >&2; exit 2 ;;
    *) OUT="$arg" ;;
  esac
done
fail() { echo "device_bundle: error: $*" >&2; exit 1; }
[ -n "$OUT" ] || fail "give the output folder (see --help)"
case "$PLATFORM" in
  aarch64|x86_64) ;;
  armv7l|armhf|arm|armv6l) fail "32-bit ARM has no LiteRT wheel; use a 64-bit OS (aarch64)" ;;
  *) fail "--platform must be aarch64 or x86_64, got '${PLATFORM}'" ;;
esac
[[ "$PYVER" =~ ^3\.(10|11|12)$ ]] || fail "--python must be 3.10, 3.11 or 3.12, got '${PYVER}'"
[[ "$EXTRA" =~ ^(edge|node)$ ]] || fail "--extra must be edge or node, got '${EXTRA}'"
[ -z "$MODEL" ] || [ -f "$MODEL" ] || fail "--model $MODEL does not exist"
if [ -e "$OUT" ] && [ -n "$(ls -A "$OUT")" ]; then fail "$OUT exists and is not empty"; fi
PY="${PYTHON:-python3}"
if [ -x "$ROOT/.venv/bin/python" ]; then PY="$ROOT/.venv/bin/python"; fi
mkdir -p "$OUT"

echo "device_bundle: building cxr-edge's wheel" >&2
"$PY" -m pip wheel --quiet --no-deps --wheel-dir "$OUT" "$ROOT" >&2
WHEEL="$(ls "$OUT"/cxr_edge-*.whl)"
VERSION="$(basename "$WHEEL" | cut -d- -f2)"

# manylinux tags from the oldest glibc LiteRT needs (2.27) down to manylinux2014 (2.17):
# a wheel for any of them installs on glibc 2.27 or newer.
TAGS=()
for glibc in 2_27 2_26 2_25 2_24 2_23 2_22 2_21 2_20 2_19 2_18 2_17; do
  TAGS+=(--platform "manylinux_${glibc}_${PLATFORM}")
done
TAGS+=(--platform "manylinux2014_${PLATFORM}")
echo "device_bundle: collecting cxr-edge[$EXTRA] and its dependencies for" \
     "$PLATFORM, CPython $PYVER" >&2
"$PY" -m pip download --quiet --dest "$OUT" --only-binary=:all: "${TAGS[@]}" \
  --python-version "$PYVER" --implementation cp --find-links "$OUT" \
  "cxr-edge[$EXTRA]==$VERSION" 2>&1 | grep -v "^WARNING: Location" >&2 || true
ls "$OUT"/ai_edge_litert-*.whl >/dev/null 2>&1 || fail "no LiteRT wheel was collected (see above)"

# The check the device runs after installing: these films, predicted here, again there,
# with --model's package, else the released model the wheel carries.
echo "device_bundle: adding the install check (films and their records from this machine)" >&2
(cd "$ROOT" && "$PY" -m scripts.device_check films "$OUT/check/films") >&2
(cd "$ROOT" && "$PY" -m cxr_edge.edge.predict --model="${MODEL:-$ROOT/edge/released/model_int8.tflite}" \
   "$OUT/check/films" --output="$OUT/check/expected.jsonl")
cp "$ROOT/scripts/device_check.py" "$OUT/check/"
MODEL_FLAG=""
if [ -n "$MODEL" ]; then
  mkdir -p "$OUT/model"
  cp "$MODEL" "$OUT/model/"
  if [ -f "$(dirname "$MODEL")/metadata.json" ]; then cp "$(dirname "$MODEL")/metadata.json" "$OUT/model/"; fi
  if [ -f "$(dirname "$MODEL")/MODEL_CARD.md" ]; then cp "$(dirname "$MODEL")/MODEL_CARD.md" "$OUT/model/"; fi
  MODEL_FLAG="--model=model/$(basename "$MODEL") "
fi
cat > "$OUT/INSTALL.txt" <<EOF
cxr-edge $VERSION for $PLATFORM, CPython $PYVER: an offline install bundle ($EXTRA).

Needs: a 64-bit Linux with glibc 2.27 or newer (Raspberry Pi OS 64-bit, Debian 10+,
Ubuntu 18.04+) and Python $PYVER with venv (Debian: apt install python3-venv).
No network is needed: pip reads only this folder.

  python3 --version                      # must say $PYVER
  python3 -m venv ~/cxr-edge
  ~/cxr-edge/bin/pip install --no-index --find-links "\$PWD" "cxr-edge[$EXTRA]"
  ~/cxr-edge/bin/cxr-predict --version
  ~/cxr-edge/bin/cxr-predict ${MODEL_FLAG}--info

Then check that this device predicts as the machine that built the bundle did: the same
decision on every film of check/films (JPEG and DICOM: uncompressed, MONOCHROME1, JPEG
2000, JPEG-LS) and p_pneumonia within 0.02:

  ~/cxr-edge/bin/cxr-predict ${MODEL_FLAG}check/films --output=check/here.jsonl
  ~/cxr-edge/bin/python check/device_check.py compare check/expected.jsonl check/here.jsonl

(run these from this folder). Check the files first: sha256sum -c SHA256SUMS.
Compressed DICOM needs the decoders (python-gdcm, pylibjpeg-openjpeg), which are here
when they have wheels for this platform; without them such a film's error says so.
EOF
(cd "$OUT" && find . -type f ! -name SHA256SUMS | sed 's|^\./||' | sort | xargs sha256sum > SHA256SUMS)
echo "device_bundle: $(ls "$OUT"/*.whl | wc -l) wheels, $(du -sh "$OUT" | cut -f1) in $OUT" >&2
