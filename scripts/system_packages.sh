#!/usr/bin/env bash
# Debian packages mmrank uses when they are there: Tesseract, to read PDF pages without a text layer
# by OCR (mmrank index --ocr). Installs what is missing when run as root on a Debian-like system;
# otherwise says what to install. mmrank works without them (such pages are then left out, with a
# warning), and the tests that need them are skipped with that reason.
set -euo pipefail

missing=()
command -v tesseract >/dev/null 2>&1 || missing+=(tesseract-ocr)
[ ${#missing[@]} -eq 0 ] && exit 0

if [ "$(id -u)" -eq 0 ] && command -v apt-get >/dev/null 2>&1; then
    echo "Installing ${missing[*]} (OCR of text-less PDF pages) ..."
    apt-get update -qq >/dev/null 2>&1 || true
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null \
        || echo "Note: could not install ${missing[*]}; OCR of text-less PDF pages stays off."
else
    echo "Note: ${missing[*]} not installed; OCR of text-less PDF pages is off (as root: apt-get install ${missing[*]})."
fi
