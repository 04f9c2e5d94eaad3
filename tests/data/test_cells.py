"""Stage 1 on cell crops: Herlev and SIPaKMeD, one tile per crop, and cell folders it cannot use."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from cyto_ssrl.config import preset
from cyto_ssrl.data.config import TILE_PRESETS
from cyto_ssrl.data.tiles import make_tiles
from cyto_ssrl.errors import CytoError

from .helpers import HERLEV_CELLS, _field, herlev_subset


def test_herlev_cells_one_tile_per_crop_grouped_by_source_image(shared_data, tmp_path):
    assert len(list((shared_data / "herlev" / "train").glob("*/*.BMP"))) == HERLEV_CELLS
    # Every crop (no partition drawn 1:1), under its real name: the check reads the class from the tile id.
    cfg = preset(TILE_PRESETS, "tiny", tile_size=128, workers=2, balance=(), pseudonymize=False)
    manifest = make_tiles("cells", herlev_subset(shared_data, tmp_path / "herlev"), tmp_path / "h", cfg)
    assert len(manifest) == len(range(0, HERLEV_CELLS, 3))
    assert manifest.groupby("patient_id")["partition"].nunique().max() == 1
    normal = manifest["tile_id"].str.contains("normal_")
    assert (manifest.loc[normal, "label"] == "negative").all() and (manifest.loc[~normal, "label"] == "positive").all()
    sizes = {Image.open(p).size for p in manifest["path"].sample(20, random_state=0)}
    assert sizes == {(128, 128)}


def test_sipakmed_leaves_metaplastic_out_and_pads_without_stretching(shared_data, tmp_path):
    partitions = {"ssrl": 1, "downstream": 1}
    cfg = preset(TILE_PRESETS, "paper", tile_size=512, workers=1, partitions=partitions, balance=(), pseudonymize=False)
    manifest = make_tiles("cells", shared_data / "sipakmed", tmp_path / "s", cfg)
    assert len(manifest) == 20 and not manifest["tile_id"].str.contains("Metaplastic").any()
    assert manifest.groupby("patient_id")["partition"].nunique().max() == 1
    row = manifest[manifest["tile_id"].str.contains("Dyskeratotic")].iloc[0]
    crop_path = shared_data / "sipakmed" / "im_Dyskeratotic" / f"{row.tile_id.split('_', 2)[2]}.bmp"
    crop = np.asarray(Image.open(crop_path).convert("RGB")).astype(int)
    tile = np.asarray(Image.open(row.path)).astype(int)
    top, left = (512 - crop.shape[0]) // 2, (512 - crop.shape[1]) // 2
    centre = tile[top : top + crop.shape[0], left : left + crop.shape[1]]
    assert np.abs(centre - crop).mean() < 6  # the crop at its own size (JPEG noise only), not resized


def test_impossible_split_and_bad_cell_folders(shared_data, tmp_path):
    # SIPaKMeD here has 3 negative cluster images: they cannot fill 4 partitions.
    four = {"ssrl": 3, "downstream": 1, "evaluation": 1, "extra": 1}
    cfg = preset(TILE_PRESETS, "tiny", workers=1, partitions=four)
    with pytest.raises(CytoError, match="split cannot be met: partition '.*' gets no negative"):
        make_tiles("cells", shared_data / "sipakmed", tmp_path / "s", cfg)
    cfg.partitions = TILE_PRESETS["tiny"].partitions
    (tmp_path / "empty").mkdir()
    with pytest.raises(CytoError, match="no cell images"):
        make_tiles("cells", tmp_path / "empty", tmp_path / "e", cfg)
    (tmp_path / "odd" / "im_Weird").mkdir(parents=True)
    _field().save(tmp_path / "odd" / "im_Weird" / "001_01.bmp")
    with pytest.raises(CytoError, match="unknown cell class 'im_Weird'"):
        make_tiles("cells", tmp_path / "odd", tmp_path / "o", cfg)
