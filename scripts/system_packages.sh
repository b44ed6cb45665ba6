#!/usr/bin/env bash
# Debian packages mmrank uses when they are there: Tesseract, to read PDF pages without a text layer
# by OCR (mmrank index --ocr), and Chromium, the browser that the tests of the `mmrank serve` search
# page drive (tests/test_serve_browser.py). Installs what is missing when run as root on a
# Debian-like system; otherwise says what to install. mmrank works without them (such pages are then
# left out, with a warning), and the tests that need them are skipped with that reason.
set -euo pipefail

purpose() {  # what a package is for (no associative arrays: macOS has bash 3.2)
    case "$1" in
        tesseract-ocr) echo "OCR of text-less PDF pages" ;;
        chromium) echo "browser tests of the search page" ;;
    esac
}
missing=()
command -v tesseract >/dev/null 2>&1 || missing+=(tesseract-ocr)
command -v chromium >/dev/null 2>&1 || missing+=(chromium)
[ ${#missing[@]} -eq 0 ] && exit 0

if [ "$(id -u)" -eq 0 ] && command -v apt-get >/dev/null 2>&1; then
    apt-get update -qq >/dev/null 2>&1 || true
    for package in "${missing[@]}"; do  # one at a time: one that cannot be had does not stop the other
        echo "Installing $package ($(purpose "$package")) ..."
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$package" >/dev/null \
            || echo "Note: could not install $package; without it, no $(purpose "$package")."
    done
else
    for package in "${missing[@]}"; do
        echo "Note: $package not installed, so no $(purpose "$package") (as root: apt-get install $package)."
    done
fi
