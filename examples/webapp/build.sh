#!/bin/sh
# Builds the site into public/ of this release: the pages, stamped with the commit they come from.
set -eu
rm -rf public
mkdir -p public
for page in site/*; do
    [ -f "$page" ] || continue
    sed "s/@VERSION@/${TROOPS_COMMIT}/g" "$page" > "public/$(basename "$page")"
done
echo "built ${TROOPS_COMMIT} in ${TROOPS_RELEASE_DIR}"
