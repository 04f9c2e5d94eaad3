"""Real slides and cells of shared/data linked into a test's folder, and small slide folders written on the fly."""

from __future__ import annotations

from pathlib import Path

from PIL import Image, ImageDraw

CRIC_SIZE = (1376, 1020)  # CRIC's coordinates refer to the original image size (shared/data/README.md)
# The first ten CRIC fields of shared/data (its MANIFEST.csv order): every Bethesda class, and both classes in every
# partition of a split of them. The label check in test_tiles.py decodes the source field of every tile, on these.
CRIC_TEN = (
    "008df697b9283d9ad4774096584d2efb",
    "011fda505d7e4af4b8cc57545343624d",
    "023fcddb41b212f8ac3edde190d4ae5c",
    "02c7fb946ad5c5e5f9c1e1178c21fc92",
    "0f023f6ad3d33b33334016798995fe53",
    "424a7ee29385c53e950de973f411a30c",
    "77acea6065f24cef2351ef3bc2af43a1",
    "9b77f6a1b82859bc68b26fae965564fa",
    "9dc92f731aa43451aaccdaabbca220fa",
    "c5a3e789e449a8123509be5fd671b6b2",
)
CRIC_SPARSE = "3265df8f2ecb21f1688c33025e540df8"  # a field whose deposit covers no 300 px tile to 50 %
HERLEV_CELLS = 643  # shared/data/herlev/train: 410 abnormal, 233 normal


def linked(files, folder: Path, keep_parent: bool = False) -> Path:
    """A folder of symlinks to some shared files (never copies); keep_parent keeps each file's class folder."""
    for path in files:
        link = folder / (f"{path.parent.name}/{path.name}" if keep_parent else path.name)
        link.parent.mkdir(parents=True, exist_ok=True)
        link.symlink_to(path)
    return folder


def cric_fields(shared_data, folder: Path, names) -> Path:
    return linked([shared_data / "cric" / "dataset" / f"{name}.png" for name in names], folder)


def herlev_subset(shared_data, folder: Path) -> Path:
    """Every third Herlev cell (215 of 643) in its class folder: the whole set's code paths in a third of the time."""
    return linked(sorted((shared_data / "herlev" / "train").glob("*/*.BMP"))[::3], folder, keep_parent=True)


def _slides_folder(tmp_path, files: dict[str, object]):
    folder = tmp_path / "in"
    for name, content in files.items():
        (folder / name).parent.mkdir(parents=True, exist_ok=True)
        if isinstance(content, Image.Image):
            content.save(folder / name)
        elif isinstance(content, bytes):
            (folder / name).write_bytes(content)
        else:
            (folder / name).write_text(content)
    return folder


def _field(colour=(240, 240, 240), cell=True) -> Image.Image:
    image = Image.new("RGB", (400, 400), colour)
    if cell:
        ImageDraw.Draw(image).ellipse([50, 50, 350, 350], fill=(150, 90, 160))
    return image
