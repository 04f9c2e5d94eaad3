"""Stage 1 (tiles) and stage 2 (pools): slides and cell crops to labelled tiles, tiles to unlabeled pools."""
