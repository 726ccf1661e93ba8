#!/usr/bin/env bash
# Install Debian's chromium for the browser test (Playwright drives it headless; Playwright's own browser
# downloads are never used). Idempotent: nothing to do when $S2M_CHROMIUM (default /usr/bin/chromium) exists.
set -euo pipefail

CHROMIUM=${S2M_CHROMIUM:-/usr/bin/chromium}
log() { echo "chromium.sh: $*" >&2; }

if [ -x "$CHROMIUM" ]; then
    exit 0
fi
if [ "$(id -u)" -ne 0 ]; then
    log "$CHROMIUM is missing and installing it needs root (apt-get install chromium chromium-driver)"
    exit 1
fi
log "installing Debian's chromium"
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq >&2
apt-get install -y -qq chromium chromium-driver >&2
if [ ! -x "$CHROMIUM" ]; then
    log "apt-get finished but $CHROMIUM is still missing"
    exit 1
fi
