#!/usr/bin/env bash
# Best effort: a headless Chromium from the system package manager, for the review-page browser tests
# (driven by the Python package playwright; never `playwright install`, which downloads its own browser).
# Exit 0 when Chromium is there afterwards, 1 otherwise (the browser test then skips and says why).
set -u
have() { [ -x /usr/bin/chromium ] || command -v chromium >/dev/null 2>&1; }
have && exit 0
SUDO=""
if [ "$(id -u)" -ne 0 ]; then
  if command -v sudo >/dev/null 2>&1 && sudo -n true 2>/dev/null; then
    SUDO="sudo -n"
  else
    echo "note: not root and no passwordless sudo: cannot apt-get install chromium (the browser test will skip)" >&2
    exit 1
  fi
fi
if command -v apt-get >/dev/null 2>&1; then
  echo "installing chromium (apt-get) for the browser tests..." >&2
  export DEBIAN_FRONTEND=noninteractive
  if ! { $SUDO apt-get update -qq && $SUDO apt-get install -y -qq chromium; } >/tmp/wbc-deploy-apt-chromium.log 2>&1; then
    echo "note: apt-get install chromium failed (see /tmp/wbc-deploy-apt-chromium.log); the browser test will skip" >&2
  fi
else
  echo "note: no apt-get on this machine: install Chromium yourself for the browser tests (or set WBC_DEPLOY_CHROMIUM)" >&2
fi
have
