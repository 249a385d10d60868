#!/usr/bin/env bash
# Debian's headless Chromium and its WebDriver, for the viewer's browser tests (they fail, not skip,
# without them). Does nothing when both are installed; uses sudo only when not root.
set -euo pipefail
if command -v chromium >/dev/null && command -v chromedriver >/dev/null; then
  exit 0
fi
SUDO=""; [ "$(id -u)" -eq 0 ] || SUDO="sudo"
$SUDO apt-get update -q
$SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -q chromium chromium-driver
