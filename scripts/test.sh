#!/usr/bin/env bash
# Install rtseg with its test dependencies into .venv and run the test suite (what CI runs).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
# the real senders and servers of the live-input tests (tests/stream/test_live_senders.py): the ffmpeg CLI,
# GStreamer and its RTSP server; a Prometheus server and headless Chromium for tests/stream/test_stream_http.py
# (Debian packages; skipped where apt-get cannot run)
DEB="ffmpeg gstreamer1.0-tools gstreamer1.0-plugins-base gstreamer1.0-plugins-good gstreamer1.0-plugins-bad
     gstreamer1.0-plugins-ugly gir1.2-gst-rtsp-server-1.0 python3-gi prometheus chromium"
if command -v apt-get >/dev/null && [ "$(id -u)" = 0 ] && ! dpkg -s $DEB >/dev/null 2>&1; then
  DEBIAN_FRONTEND=noninteractive apt-get -qq update && \
    DEBIAN_FRONTEND=noninteractive apt-get -qq install -y --no-install-recommends $DEB >/dev/null
fi
[ -x .venv/bin/python ] || "$PY" -m venv .venv
. .venv/bin/activate
python -m pip install -q --upgrade pip
# torch/torchvision first, pinned to the builds the project is tested with (CPU use; CUDA build on x86_64)
python -m pip install -q torch==2.14.1 torchvision==0.29.1
python -m pip install -q -e '.[dev]'
bash scripts/triton-venv.sh  # the Triton server of tests/runtime/test_kserve.py, in its own virtualenv
python -m pytest -q "$@"
