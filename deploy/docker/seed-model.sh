#!/bin/sh
# Copies each model folder of SEED into DEST unless DEST already holds the same import (same
# .import-stamp): one run puts the real edge model into the models volume, later runs return at once.
# The copy goes to a temporary folder and is renamed into place, so a node never sees half a model.
set -eu
seed=${1:?usage: seed-model SEED_DIR DEST_DIR}
dest=${2:?usage: seed-model SEED_DIR DEST_DIR}
mkdir -p "$dest"
for src in "$seed"/*/; do
    name=$(basename "$src")
    if [ -f "$dest/$name/.import-stamp" ] && cmp -s "$src/.import-stamp" "$dest/$name/.import-stamp"; then
        echo "seed-model: $dest/$name is up to date"
        continue
    fi
    tmp="$dest/.$name.seeding.$$"
    rm -rf "$tmp"
    cp -R "$src" "$tmp"
    rm -rf "$dest/$name"
    mv "$tmp" "$dest/$name"
    echo "seed-model: $dest/$name seeded"
done
