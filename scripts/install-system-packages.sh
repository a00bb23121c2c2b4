#!/usr/bin/env bash
# Debian packages the tests and full-scale runs use:
#   dataset-fashion-mnist  the full 60k/10k Fashion-MNIST IDX files in /usr/share/datasets/fashion-mnist
#   chromium               the headless browser the MLflow UI test drives (tests/test_browser.py)
#   chromium-driver        its WebDriver, for people who drive it with Selenium instead of Playwright
#   postgresql             the backend store of the MLflow tracking server test (tests/test_server.py)
# Tests that need a missing package skip with a reason, so this is optional on a laptop.
set -euo pipefail

packages=(dataset-fashion-mnist chromium chromium-driver postgresql)
missing=()
for package in "${packages[@]}"; do
    dpkg-query -W -f='${Status}' "$package" 2>/dev/null | grep -q "install ok installed" || missing+=("$package")
done
if [ ${#missing[@]} -eq 0 ]; then
    echo "system packages present: ${packages[*]}"
    exit 0
fi

sudo=""
[ "$(id -u)" -eq 0 ] || sudo="sudo"
export DEBIAN_FRONTEND=noninteractive
$sudo apt-get update -qq
$sudo apt-get install -y -qq --no-install-recommends "${missing[@]}"
