#!/usr/bin/env bash
# Install Debian's Chromium for the browser end-to-end test if it is missing.
# Playwright (the Python package) drives it via executable_path; no browser is downloaded.
#
#   bash scripts/ci_chromium.sh      # prints the chromium path on stdout
set -euo pipefail

if [ -x /usr/bin/chromium ]; then
  echo /usr/bin/chromium
  exit 0
fi
if [ "$(id -u)" -ne 0 ]; then
  echo "ci_chromium: chromium is missing and this is not root: apt-get install chromium first" >&2
  exit 1
fi
echo "ci_chromium: installing Debian's chromium" >&2
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq >&2
apt-get install -y -qq chromium fonts-liberation >&2
echo /usr/bin/chromium
