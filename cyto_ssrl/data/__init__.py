"""Stage 1 (tiles) and stage 2 (pools): slides and cell crops to labelled tiles, tiles to unlabeled pools."""

from cyto_ssrl.data.tiles import make_tiles, summarize

__all__ = ["make_tiles", "summarize"]
