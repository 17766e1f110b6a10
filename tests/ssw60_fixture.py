"""A tiny SSW60-shaped dataset on disk, with the published CSV columns and file layout.

Import it from any test: ``from tests.ssw60_fixture import make_fake_ssw60``.
"""

from __future__ import annotations

import hashlib
import tarfile
from pathlib import Path

import numpy as np
import soundfile as sf
from PIL import Image

from tests.helpers import write_csv

# The first three rows are SSW60's own taxa.csv example rows.
FAKE_TAXA = [
    ("cangoo", 7089, 3226, "57 457", "Canada Goose", "Branta canadensis",
     "Anatidae (Ducks, Geese, and Waterfowl)", "Anseriformes"),
    ("wooduc", 7107, 3188, "81 314 613", "Wood Duck", "Aix sponsa",
     "Anatidae (Ducks, Geese, and Waterfowl)", "Anseriformes"),
    ("mallar3", 6930, 3201, "102 317 616", "Mallard", "Anas platyrhynchos",
     "Anatidae (Ducks, Geese, and Waterfowl)", "Anseriformes"),
    ("daejun", 10094, 4521, "388 780", "Dark-eyed Junco", "Junco hyemalis",
     "Passerellidae (New World Sparrows)", "Passeriformes"),
    ("blujay", 8229, 4123, "349", "Blue Jay", "Cyanocitta cristata",
     "Corvidae (Crows, Jays, and Magpies)", "Passeriformes"),
    ("norcar", 9083, 4391, "330 695", "Northern Cardinal", "Cardinalis cardinalis",
     "Cardinalidae (Cardinals, Grosbeaks, and Allies)", "Passeriformes"),
]  # fmt: skip

TAXA_HEADER = ["label", "species_code", "inat_taxon_id", "inat2021_label", "nabirds_labels",
               "common_name", "scientific_name", "family", "order"]  # fmt: skip
AUDIO_HEADER = ["asset_id", "label", "split", "samplerate", "channels", "samples",
                "duration_seconds"]  # fmt: skip
NABIRDS_HEADER = ["asset_id", "label", "split", "height", "width", "channels", "photographer"]
INAT_HEADER = ["asset_id", "label", "split", "height", "width", "channels", "rights_holder",
               "license_id"]  # fmt: skip


def _hex_id(*parts: object) -> str:
    return hashlib.md5("/".join(map(str, parts)).encode()).hexdigest()


def make_fake_ssw60(
    root: str | Path,
    n_species: int = 3,
    clips_per_split: int = 2,
    images_per_split: int = 2,
    missing_image: bool = True,
    *,
    subdir: str | None = "ssw60",
    clip_s: float = 10.0,
    sample_rate_hz: int = 22_050,
) -> Path:
    """Write a tiny SSW60 under ``root/subdir`` (or ``root``); returns the folder with taxa.csv.

    Per species: ``clips_per_split`` WAVs in train and test (mono, ``sample_rate_hz``, a tone at
    a species-specific pitch plus seeded noise), ``images_per_split`` 8x8 JPEGs per split for
    NABirds (train/test, hex ids) and iNat (train/val/test, integer ids). With
    ``missing_image``, the last NABirds test row's JPG is not written, as in the real archive.
    """
    if not 1 <= n_species <= len(FAKE_TAXA):
        raise ValueError(f"n_species must be in 1..{len(FAKE_TAXA)}")
    base = Path(root) / subdir if subdir else Path(root)
    for folder in ("audio_ml", "images_nabirds", "images_inat"):
        (base / folder).mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)

    write_csv(
        base / "taxa.csv", [[label, *FAKE_TAXA[label]] for label in range(n_species)], TAXA_HEADER
    )

    n_samples = int(round(clip_s * sample_rate_hz))
    t = np.arange(n_samples) / sample_rate_hz
    audio_rows = []
    for label in range(n_species):
        for split in ("train", "test"):
            for k in range(clips_per_split):
                asset_id = str(45_516_191 + 1000 * label + 10 * k + (split == "test"))
                wave = 0.3 * np.sin(2 * np.pi * (800 + 400 * label) * t)
                wave += 0.01 * rng.standard_normal(n_samples)
                sf.write(base / "audio_ml" / f"{asset_id}.wav", wave.astype(np.float32),
                         sample_rate_hz, subtype="PCM_16")  # fmt: skip
                audio_rows.append([asset_id, label, split, sample_rate_hz, 1, n_samples,
                                   f"{clip_s:g}"])  # fmt: skip
    write_csv(base / "audio_ml.csv", audio_rows, AUDIO_HEADER)

    def jpeg(path: Path, label: int) -> None:
        colour = (40 * label % 256, 200 - 30 * label % 200, 90)
        Image.new("RGB", (8, 8), colour).save(path, format="JPEG", quality=90)

    nabirds_rows = []
    for label in range(n_species):
        for split in ("train", "test"):
            for k in range(images_per_split):
                asset_id = _hex_id("nabirds", label, split, k)
                jpeg(base / "images_nabirds" / f"{asset_id}.jpg", label)
                nabirds_rows.append([asset_id, label, split, 8, 8, 3, f"Photographer {k}"])
    if missing_image and nabirds_rows:
        (base / "images_nabirds" / f"{nabirds_rows[-1][0]}.jpg").unlink()
    write_csv(base / "images_nabirds.csv", nabirds_rows, NABIRDS_HEADER)

    inat_rows = []
    for label in range(n_species):
        for s, split in enumerate(("train", "val", "test")):
            for k in range(images_per_split):
                asset_id = str(73_542 + 100 * label + 10 * s + k)
                jpeg(base / "images_inat" / f"{asset_id}.jpg", label)
                inat_rows.append([asset_id, label, split, 8, 8, 3, f"observer{k}", 1 + k % 6])
    write_csv(base / "images_inat.csv", inat_rows, INAT_HEADER)
    return base


def pack_tar_gz(folder: str | Path, archive: str | Path, arcname: str = "ssw60") -> Path:
    """Pack ``folder`` into ``archive`` (.tar.gz) under ``arcname/``, like ssw60.tar.gz."""
    archive = Path(archive)
    with tarfile.open(archive, "w:gz") as tar:
        tar.add(folder, arcname=arcname)
    return archive
