"""Typed settings of stages 1 and 2: the synthetic cohort, CSV annotations and tiling, with the named presets.

`preset(TILE_PRESETS, name, **overrides)` (cyto_ssrl.config) gives a copy with overrides applied.
"""

from __future__ import annotations

from dataclasses import dataclass, field

# SIPaKMeD (Plissiti et al. 2018) and Herlev (Jantzen et al. 2005) class folders -> label. None leaves the class out:
# Metaplastic cells are neither normal squamous nor abnormal (SIPaKMeD paper; Stegmueller et al.).
DEFAULT_CELL_CLASSES: dict[str, str | None] = {
    "dyskeratotic": "positive",
    "koilocytotic": "positive",
    "superficial-intermediate": "negative",
    "parabasal": "negative",
    "metaplastic": None,
    "carcinoma_in_situ": "positive",
    "light_dysplastic": "positive",
    "moderate_dysplastic": "positive",
    "severe_dysplastic": "positive",
    "normal_columnar": "negative",
    "normal_intermediate": "negative",
    "normal_superficiel": "negative",
}


# The paper's tile counts per partition (120,000 : 40,000 : 8,000); only the proportions matter.
PAPER_PARTITIONS: dict[str, float] = {"ssrl": 120_000, "downstream": 40_000, "evaluation": 8_000}


@dataclass
class SyntheticConfig:
    """A cohort of synthetic pyramidal slides with QuPath GeoJSON cell annotations."""

    n_slides: int = 12
    positive_slide_fraction: float = 0.5
    prevalence: float = 0.01  # fraction of cells on a positive slide that are positive (paper Fig. 1: about 1 %)
    # What a positive cell looks like: the knob that makes the cohort a positive control of the study.
    # "distinct": HSIL-like (a small dense cell with a large, hyperchromatic, irregular nucleus), a look no negative
    # cell has. An encoder learns it only from its pool's positive tiles, so the study should find accuracy falling
    # from 1:1 to 1:100 where few labels cannot make up for it.
    # "shared": a negative-looking squamous cell whose round nucleus is enlarged (10-14 um against 5-8). What tells
    # the classes apart, nuclear size and darkness, varies among negative cells too, so every pool teaches it and
    # the study should find no drop.
    positive_look: str = "distinct"
    mpps: tuple[float, ...] = (0.243, 0.293, 0.180)  # the paper's three scanners, cycled over slides
    deposit_um: float = 1000.0  # diameter of the cell-deposit region
    margin_um: float = 120.0  # bright background around the deposit
    cells_per_mm2: float = 450.0
    levels: int = 5  # 1, 2, 4, 8, 16: down to a few hundred px, like a scanner's pyramid (the deposit check reads it)
    level_downsample: int = 2
    tiff_tile: int = 256
    compression: str = "jpeg"  # or "zlib"
    seed: int = 0


@dataclass
class CsvAnnotationConfig:
    """How to read cell points from a CSV (CRIC's classifications.csv by default)."""

    image_column: str = "image_filename"
    x_column: str = "nucleus_x"
    y_column: str = "nucleus_y"
    label_column: str = "bethesda_system"
    negative_classes: tuple[str, ...] = ("Negative for intraepithelial lesion",)
    # Size of the image the coordinates refer to; None when they are level-0 pixels of the slide itself.
    image_size: tuple[int, int] | None = None


@dataclass
class TileConfig:
    """Stage 1: slides (or cell crops) to a labelled tile manifest."""

    tile_size: int = 512
    target_mpp: float = 0.293
    min_deposit: float = 0.5  # fraction of a tile's area that must be cell deposit
    partitions: dict[str, float] = field(default_factory=lambda: dict(PAPER_PARTITIONS))
    # Partitions drawn 1:1 positive:negative from their own slides' tiles, after the split and the labels, before any
    # tile is cut; their ambiguous and unlabelled tiles go. The paper's downstream partition is 1:1 (a budget of b %
    # is drawn 1:1 from it, 100 % is all of it). The paper does not say how its evaluation partition was drawn: 1:1
    # here, so accuracy equals balanced accuracy and precision and F1 do not depend on the collection's prevalence
    # (the paper reports Acc next to SP and SE); ("downstream",) keeps the natural prevalence in evaluation, () in
    # both. Never ssrl: pools are drawn from all its tiles at each ratio.
    balance: tuple[str, ...] = ("downstream", "evaluation")
    positive_cell_fraction: float = (
        0.0  # 0: a positive cell's centre must lie in the tile; >0: this part of its polygon
    )
    default_mpp: float | None = None  # used for slides whose metadata has none
    slide_mpp: dict[str, float] = field(default_factory=dict)  # per-slide override, by slide id
    max_tiles_per_slide: int | None = None
    image_format: str = "jpg"
    jpeg_quality: int = 90
    workers: int = 2
    seed: int = 0
    strict: bool = False  # a slide that gives no tile (unreadable, no deposit) stops the run instead of being skipped
    # Slide, patient and tile ids as keyed hashes (data/pseudonyms.py): slide names and patient ids identify people.
    # False keeps the real names, for public data.
    pseudonymize: bool = True
    pseudonym_key: str | None = None  # the secret's file; None: private/pseudonym.key in the output folder
    cell_classes: dict[str, str | None] = field(default_factory=lambda: dict(DEFAULT_CELL_CLASSES))
    csv: CsvAnnotationConfig = field(default_factory=CsvAnnotationConfig)
    synthetic: SyntheticConfig = field(default_factory=SyntheticConfig)


TILE_PRESETS: dict[str, TileConfig] = {
    "paper": TileConfig(),
    # 64 px at 4 x 0.293 um/px covers 75 um, a couple of cells. The demo cohort carries far more positive cells than
    # a smear, and enough slides that the downstream partition gets two slides of each class: 189 tiles a class,
    # drawn 1:1, so all five paper budgets (1 % needs 350 tiles) and pools of 200 at 1:1 and 1:100 can be drawn.
    "tiny": TileConfig(
        tile_size=64, target_mpp=1.172, synthetic=SyntheticConfig(n_slides=16, deposit_um=1200.0, prevalence=0.6)
    ),
    # The same cohort with the positive control switched off: positives look like enlarged negatives (see
    # SyntheticConfig.positive_look), so no pool's ratio should matter.
    "tiny-shared": TileConfig(
        tile_size=64,
        target_mpp=1.172,
        synthetic=SyntheticConfig(n_slides=16, deposit_um=1200.0, prevalence=0.6, positive_look="shared"),
    ),
}
