#!/usr/bin/env bash
# Refresh the onnxruntime-web files the static Space's page vendors (no CDN): the wasm-only ES module, its
# worker glue and the WebAssembly binary, from npm's package. Usage: scripts/refresh-onnxruntime-web.sh [VERSION]
set -euo pipefail
version="${1:-$(npm view onnxruntime-web version)}"
vendor="$(cd "$(dirname "$0")/.." && pwd)/src/gptforge/interop/static_space/vendor"
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
(cd "$work" && npm pack --silent "onnxruntime-web@$version" >/dev/null && tar xzf onnxruntime-web-*.tgz)
rm -f "$vendor"/ort*
for file in ort.wasm.min.mjs ort-wasm-simd-threaded.mjs ort-wasm-simd-threaded.wasm; do
  cp "$work/package/dist/$file" "$vendor/$file"
done
echo "$version" > "$vendor/VERSION"
echo "vendored onnxruntime-web $version into $vendor"
