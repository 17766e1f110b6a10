"""Write a simulated world to disk in SSW60's published layout, plus pretraining caption sets.

``export_world(world, out_dir)`` writes (column lists are `songsight.data.ssw60`'s)::

    out_dir/
      world.json            config, species with traits and tree path, held-out labels
      taxa.csv              SSW60's columns; family reads "Cresidae (Typical Chats)"
      audio_ml.csv          asset_id (Macaulay-like integer), label, split (train / test),
      audio_ml/{id}.wav     samplerate, channels, samples, duration_seconds; PCM16 mono, 10 s
      images_nabirds.csv    asset_id (32 hex digits), label, split (train / test), height,
      images_nabirds/{id}.jpg   width, channels, photographer
      images_inat.csv       asset_id (integer), label, split (train / val / test), height,
      images_inat/{id}.jpg      width, channels, rights_holder, license_id
      soundscapes.csv       path, start_s, end_s, label: one row per bout
      soundscapes/*.wav
      pretrain/photos.csv   path, caption, label (TreeOfLife-like captions, BioCLIP-2's side)
      pretrain/photos/*.jpg
      pretrain/calls.csv    path, caption, label (AnimalSpeak-like captions, 1..15 s clips)
      pretrain/calls/*.wav

Paths in ``soundscapes.csv`` and ``pretrain/*.csv`` are relative to the CSV's folder, as
`songsight.data.manifest` resolves them. The pretraining sets cover every species, held-out
ones included, as the real models saw them; ``held_out_labels`` only leave distillation. Every item draws from its own random stream keyed by
(purpose, label, split, index), so the pretraining sets never repeat an evaluation item and
the output is byte-identical for the same config, whatever ``workers``: CSVs are sorted, JPEGs
use fixed quality and 4:4:4 subsampling, WAVs are plain PCM16, and nothing records a time.
"""

from __future__ import annotations

import csv
import hashlib
import json
import shutil
import wave
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image

from songsight.data.manifest import SOUNDSCAPE_COLUMNS
from songsight.data.ssw60 import AUDIO_COLUMNS, INAT_COLUMNS, NABIRDS_COLUMNS, TAXA_COLUMNS
from songsight.errors import SongsightError
from songsight.provenance import package_version, stable_hash
from songsight.sim.calls import render_call, render_soundscape
from songsight.sim.captions import call_caption, photo_caption
from songsight.sim.photos import render_photo
from songsight.sim.world import World, item_rng

JPEG_QUALITY = 90
SPLIT_ORDER = ("train", "val", "test")
PRETRAIN_COLUMNS = ("path", "caption", "label")
# Every table: (CSV relative to out_dir, its columns, its media folder).
TABLES = {
    "audio": ("audio_ml.csv", AUDIO_COLUMNS, "audio_ml"),
    "nabirds": ("images_nabirds.csv", NABIRDS_COLUMNS, "images_nabirds"),
    "inat": ("images_inat.csv", INAT_COLUMNS, "images_inat"),
    "soundscapes": ("soundscapes.csv", SOUNDSCAPE_COLUMNS, "soundscapes"),
    "pretrain_photos": ("pretrain/photos.csv", PRETRAIN_COLUMNS, "pretrain/photos"),
    "pretrain_calls": ("pretrain/calls.csv", PRETRAIN_COLUMNS, "pretrain/calls"),
}
# Everything export_world writes: the only paths `overwrite=True` removes.
OUTPUTS = ("world.json", "taxa.csv", "pretrain") + tuple(
    p for csv_name, _, folder in TABLES.values() if "/" not in csv_name for p in (csv_name, folder)
)

_WORLD: World | None = None  # the world a worker process renders


@dataclass(frozen=True)
class _Item:
    """One file to render: its table, path under out_dir, stream key and known CSV fields."""

    table: str
    rel: str
    label: int
    split: str
    index: int
    row: dict = field(default_factory=dict)


def write_wav(path: str | Path, audio: np.ndarray, sample_rate_hz: int) -> int:
    """Write (N,) float audio in [-1, 1] as mono PCM16; returns N."""
    # float32 holds every int16 exactly, so rounding there is exact and half the memory traffic.
    pcm = np.rint(np.clip(np.asarray(audio, np.float32), -1.0, 1.0) * np.float32(32767.0))
    with wave.open(str(path), "wb") as fh:
        fh.setnchannels(1)
        fh.setsampwidth(2)
        fh.setframerate(int(sample_rate_hz))
        fh.writeframes(pcm.astype("<i2").tobytes())
    return len(pcm)


def write_jpeg(path: str | Path, image: np.ndarray) -> tuple[int, int, int]:
    """Write (H, W, 3) uint8 as a JPEG with fixed settings; returns (height, width, channels)."""
    Image.fromarray(image, "RGB").save(
        path, "JPEG", quality=JPEG_QUALITY, subsampling=0, optimize=False
    )
    return image.shape[0], image.shape[1], image.shape[2]


def _digest(*parts: object) -> bytes:
    return hashlib.blake2b(repr(parts).encode(), digest_size=16).digest()


def _asset_ids(seed: int, source: str, keys: list[tuple]) -> dict[tuple, str]:
    """SSW60-like ids per key: Macaulay numbers (audio), 32 hex digits (NABirds), iNat numbers.

    Hashes of (seed, source, key), re-salted on a clash in key order, so an id never depends
    on how many other items there are.
    """
    low, span = {"audio": (10_000_000, 390_000_000), "inat": (10_000, 2_990_000)}.get(
        source, (0, 0)
    )
    out, used = {}, set()
    for key in keys:
        salt = 0
        while True:
            digest = _digest(seed, source, key, salt)
            asset = (
                digest.hex() if not span else str(low + int.from_bytes(digest[:8], "little") % span)
            )
            if asset not in used:
                break
            salt += 1
        used.add(asset)
        out[key] = asset
    return out


def _people(seed: int, n: int = 40) -> list[str]:
    """Made-up, pronounceable photographer names."""
    rng = item_rng(seed, "people")
    syl = "ka lo mi ren sa to vi da el an mar jo li ne bo".split()
    ends = "son er ini ova ez berg ley ton ard ski".split()
    names = []
    for _ in range(n):
        first = "".join(syl[i] for i in rng.integers(len(syl), size=2))
        last = "".join(syl[i] for i in rng.integers(len(syl), size=int(rng.integers(1, 3))))
        names.append(f"{first.capitalize()} {(last + ends[rng.integers(len(ends))]).capitalize()}")
    return names


def _items(world: World) -> list[_Item]:
    """Every file to render, in a canonical order (asset ids are fixed here)."""
    cfg, k = world.config, world.n_species
    counts = {
        "audio": {"train": cfg.ssw_clips_train, "test": cfg.ssw_clips_test},
        "nabirds": {"train": cfg.nabirds_train, "test": cfg.nabirds_test},
        "inat": {"train": cfg.inat_train, "val": cfg.inat_val, "test": cfg.inat_test},
    }
    people = _people(cfg.seed)

    def roll(*key) -> int:
        return int.from_bytes(_digest(cfg.seed, *key)[:4], "little")

    items = []
    for source, per_split in counts.items():
        keys = [(lab, sp, i) for lab in range(k) for sp, n in per_split.items() for i in range(n)]
        ids = _asset_ids(cfg.seed, source, keys)
        folder, suffix = TABLES[source][2], ".wav" if source == "audio" else ".jpg"
        for key in keys:
            row = {"asset_id": ids[key], "label": key[0], "split": key[1]}
            name = people[roll(source, "who", key) % len(people)]
            if source == "nabirds":
                row["photographer"] = name
            elif source == "inat":
                # iNaturalist rights holders are full names or usernames ("donadwell").
                handle = name if roll("handle", key) % 3 else name.lower().replace(" ", "")
                row.update(rights_holder=handle, license_id=1 + roll("license", key) % 7)
            items.append(_Item(source, f"{folder}/{ids[key]}{suffix}", *key, row))
    for table, n, suffix in (
        ("pretrain_photos", cfg.pretrain_photos, "jpg"),
        ("pretrain_calls", cfg.pretrain_calls, "wav"),
    ):
        folder = TABLES[table][2]
        items += [
            _Item(table, f"{folder}/{lab:03d}_{i:04d}.{suffix}", lab, "", i)
            for lab in range(k)
            for i in range(n)
        ]
    items += [
        _Item("soundscapes", f"soundscapes/soundscape_{i:03d}.wav", -1, "", i)
        for i in range(cfg.n_soundscapes)
    ]
    return items


def _render(item: _Item, out: Path) -> list[dict]:
    """Render and write one item from its own random stream; returns its CSV row(s)."""
    world = _WORLD
    cfg, sr = world.config, world.config.sample_rate_hz
    path, label, index = out / item.rel, item.label, item.index
    if item.table == "audio":
        rng = item_rng(cfg.seed, f"ssw_audio/{item.split}", label, index)
        n = write_wav(path, render_call(world, label, rng, cfg.ssw_clip_s), sr)
        meta = dict(samplerate=sr, channels=1, samples=n, duration_seconds=round(n / sr, 6))
        return [{**item.row, **meta}]
    if item.table in ("nabirds", "inat"):
        rng = item_rng(cfg.seed, f"{item.table}/{item.split}", label, index)
        h, w, c = write_jpeg(path, render_photo(world, label, rng, item.table))
        return [{**item.row, "height": h, "width": w, "channels": c}]
    rel = item.rel.removeprefix("pretrain/")  # relative to the CSV's folder
    if item.table == "pretrain_photos":
        rng = item_rng(cfg.seed, "pretrain_photos", label, index)
        write_jpeg(path, render_photo(world, label, rng, "pretrain"))
        # Captions draw from their own streams, so caption knobs never change the media.
        cap_rng = item_rng(cfg.seed, "pretrain_photo_captions", label, index)
        caption = photo_caption(world.species[label], cap_rng, cfg.photo_partial_rate)
        return [{"path": rel, "caption": caption, "label": label}]
    if item.table == "pretrain_calls":
        rng = item_rng(cfg.seed, "pretrain_calls", label, index)
        low, high = np.log(cfg.clip_s_range)
        duration_s = float(np.exp(rng.uniform(low, high)))  # log-uniform: short clips are common
        write_wav(path, render_call(world, label, rng, duration_s), sr)
        cap_rng = item_rng(cfg.seed, "pretrain_call_captions", label, index)
        caption, _ = call_caption(world, label, cap_rng)
        return [{"path": rel, "caption": caption, "label": label}]
    audio, events = render_soundscape(
        world, item_rng(cfg.seed, "soundscapes", index), cfg.soundscape_s
    )
    write_wav(path, audio, sr)
    return [
        {"path": rel, "start_s": f"{s:.3f}", "end_s": f"{e:.3f}", "label": lab}
        for s, e, lab in events
    ]


def _render_in_worker(args: tuple[_Item, Path]) -> list[dict]:
    return _render(*args)


def _set_world(world: World) -> None:
    global _WORLD
    _WORLD = world


def _sort_key(row: dict) -> tuple:
    if "asset_id" in row:
        return row["label"], SPLIT_ORDER.index(row["split"]), row["asset_id"]
    if "start_s" in row:
        return row["path"], float(row["start_s"]), float(row["end_s"]), row["label"]
    return (row["path"],) if "path" in row else (row["label"],)


def _write_csv(path: Path, columns: tuple[str, ...], rows: list[dict]) -> None:
    with path.open("w", newline="", encoding="utf-8") as fh:
        writer = csv.DictWriter(fh, fieldnames=list(columns), lineterminator="\n")
        writer.writeheader()
        writer.writerows(sorted(rows, key=_sort_key))


def _taxa_row(world: World, label: int) -> dict:
    s = world.species[label]
    return {
        "label": s.label, "species_code": s.code, "inat_taxon_id": s.extra["inat_taxon_id"],
        "inat2021_label": s.extra["inat2021_label"], "nabirds_labels": s.extra["nabirds_labels"],
        "common_name": s.common_name, "scientific_name": s.scientific_name,
        "family": world.family_with_description(label), "order": s.order,
    }  # fmt: skip


def _prepare(out: Path, overwrite: bool) -> None:
    existing = [name for name in OUTPUTS if (out / name).exists()]
    if existing and not overwrite:
        raise SongsightError(
            f"{out} already holds a simulated world ({', '.join(existing)}); pass "
            "overwrite=True (CLI: --overwrite) or choose an empty folder"
        )
    for name in existing:
        target = out / name
        shutil.rmtree(target) if target.is_dir() else target.unlink()
    for _, _, folder in TABLES.values():
        (out / folder).mkdir(parents=True, exist_ok=True)


def export_world(
    world: World, out_dir: str | Path, *, workers: int = 1, overwrite: bool = False
) -> Path:
    """Render and write ``world`` under ``out_dir`` (layout in the module docstring).

    ``workers`` > 1 renders in that many processes; the bytes written do not depend on it.
    An ``out_dir`` already holding an export is refused unless ``overwrite``, which removes
    only the paths this function writes. Returns ``out_dir`` (absolute).
    """
    out = Path(out_dir).expanduser().absolute()
    _prepare(out, overwrite)
    cfg = world.config
    record = {
        **world.to_dict(),
        "config_hash": stable_hash(cfg.to_dict()),
        "songsight_version": package_version(),
    }
    text = json.dumps(record, indent=1, sort_keys=True) + "\n"
    (out / "world.json").write_text(text, encoding="utf-8")
    _write_csv(out / "taxa.csv", TAXA_COLUMNS, [_taxa_row(world, s.label) for s in world.species])

    items = _items(world)
    if workers > 1:
        chunk = max(1, len(items) // (8 * workers))
        with ProcessPoolExecutor(workers, initializer=_set_world, initargs=(world,)) as pool:
            results = list(
                pool.map(_render_in_worker, [(it, out) for it in items], chunksize=chunk)
            )
    else:
        _set_world(world)
        results = [_render(it, out) for it in items]
    rows: dict[str, list[dict]] = {table: [] for table in TABLES}
    for item, result in zip(items, results, strict=True):
        rows[item.table] += result
    for table, (csv_name, columns, _) in TABLES.items():
        _write_csv(out / csv_name, columns, rows[table])
    return out
