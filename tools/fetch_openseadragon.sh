#!/usr/bin/env bash
# Re-fetch the OpenSeadragon build vendored in wsiheat/viewer/static/openseadragon/
# from the npm registry (`npm pack`), and record its version and checksum.
#   tools/fetch_openseadragon.sh [VERSION]     (default: the version pinned below)
# The viewer works offline: nothing is loaded from a CDN at run time.
set -euo pipefail
VERSION="${1:-6.1.1}"
cd "$(dirname "$0")/.."
DEST=wsiheat/viewer/static/openseadragon
TMP=$(mktemp -d)
trap 'rm -rf "$TMP"' EXIT
( cd "$TMP" && npm pack --silent "openseadragon@${VERSION}" >/dev/null )
TGZ=$(ls "$TMP"/openseadragon-*.tgz)
tar -xzf "$TGZ" -C "$TMP"
PKG="$TMP/package"
test -f "$PKG/build/openseadragon/openseadragon.min.js"
GOT=$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["version"])' "$PKG/package.json")
LICENSE=$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["license"])' "$PKG/package.json")
rm -rf "$DEST"
mkdir -p "$DEST/images"
cp "$PKG/build/openseadragon/openseadragon.min.js" "$DEST/"
cp "$PKG"/build/openseadragon/images/*.png "$DEST/images/"
cp "$PKG/LICENSE.txt" "$DEST/LICENSE.txt"
SHA=$(sha256sum "$TGZ" | cut -d' ' -f1)
cat > "$DEST/VERSION" <<INFO
openseadragon ${GOT}
licence: ${LICENSE} (LICENSE.txt)
source: npm pack openseadragon@${VERSION} ($(basename "$TGZ"), sha256 ${SHA})
files: build/openseadragon/openseadragon.min.js, build/openseadragon/images/*.png, LICENSE.txt
fetched by: tools/fetch_openseadragon.sh
INFO
echo "vendored openseadragon ${GOT} into ${DEST}"
