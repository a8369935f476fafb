#!/usr/bin/env bash
# The dashboard's browser test drives Debian's chromium (no browser download by Playwright).
# Installs it when missing and we are allowed to (root with apt-get); otherwise says how, and the
# browser test skips itself with that reason.
set -euo pipefail
if [ -x /usr/bin/chromium ]; then exit 0; fi
if [ "$(id -u)" = "0" ] && command -v apt-get >/dev/null; then
  echo "installing chromium for the dashboard browser test (apt-get)"
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null
else
  echo "chromium is missing: run 'sudo apt-get install -y chromium' for the dashboard browser test" >&2
fi
