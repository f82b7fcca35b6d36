#!/usr/bin/env bash
# Set up unetsep on a fresh Debian/Ubuntu machine: system packages (when missing), then a virtual
# environment in .venv with the package and its train/export/test extras. Safe to run again.
set -euo pipefail
cd "$(dirname "$0")/.."

APT_PACKAGES=(ffmpeg fluidsynth fluid-soundfont-gm libportaudio2 libsndfile1 jackd2)
# --train-data: recorded drum kits and more sound sets for 'unetsep data' (train/SOUNDS.md).
if [[ ${1:-} == --train-data ]]; then
  APT_PACKAGES+=(hydrogen-drumkits avldrums.lv2-soundfont musescore-general-soundfont-lossless
                 timgm6mb-soundfont fluid-soundfont-gs sonic-pi-samples csound-soundfont
                 opl3-soundfont)
fi
missing=()
for p in "${APT_PACKAGES[@]}"; do
  dpkg -s "$p" >/dev/null 2>&1 || missing+=("$p")
done
if ((${#missing[@]})); then
  if [[ $(id -u) -eq 0 ]]; then SUDO=(); elif command -v sudo >/dev/null; then SUDO=(sudo); else
    echo "setup: missing system packages ${missing[*]}; install them as root: apt-get install ${missing[*]}" >&2
    exit 1
  fi
  echo "setup: installing ${missing[*]}" >&2
  export DEBIAN_FRONTEND=noninteractive
  # jackd2 asks whether to enable realtime scheduling; answer for it.
  echo "jackd2 jackd/tweak_rt_limits boolean false" | "${SUDO[@]}" debconf-set-selections 2>/dev/null || true
  "${SUDO[@]}" apt-get update -qq
  "${SUDO[@]}" apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

PYTHON=${PYTHON:-python3}
[[ -x .venv/bin/python ]] || "$PYTHON" -m venv .venv
.venv/bin/python -m pip install -q --upgrade pip
.venv/bin/python -m pip install -q -c scripts/constraints.txt -e ".[train,export,test]"
echo "setup: ready (.venv)" >&2
