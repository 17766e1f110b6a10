"""Benchmark inputs on disk, rendered by the simulated world (`songsight.sim`).

Recordings are SSW60-like focal clips (song over coloured background noise, distractors,
clicks), 10 s mono PCM16 WAVs at 22.05 kHz as SSW60's ``audio_ml`` ships them; photos are the
world's bird photos drawn at 500 px and cut to 500x375 JPEGs. Same seed, same files.
"""

from __future__ import annotations

from functools import cache
from pathlib import Path

CLIP_RATE_HZ = 22_050  # SSW60's audio_ml clips
CLIP_S = 10.0
PHOTO_WH = (500, 375)
N_SPECIES = 12  # species the inputs cycle through


@cache
def _world(seed: int):
    from songsight.sim.world import WorldConfig, build_world

    return build_world(
        WorldConfig(
            seed=seed, n_species=N_SPECIES, sample_rate_hz=CLIP_RATE_HZ, image_size=PHOTO_WH[0]
        )
    )


def write_clips(folder: Path, n: int, seed: int = 0) -> list[Path]:
    """``n`` 10 s mono 16-bit WAVs at 22.05 kHz, one simulated focal recording each."""
    from songsight.sim.calls import render_call
    from songsight.sim.export import write_wav
    from songsight.sim.rng import item_rng

    folder.mkdir(parents=True, exist_ok=True)
    world = _world(seed)
    paths = []
    for i in range(n):
        path = folder / f"clip_{i:05d}.wav"
        wave = render_call(world, i % N_SPECIES, item_rng(seed, "benchmark/clip", i), CLIP_S)
        write_wav(path, wave, CLIP_RATE_HZ)
        paths.append(path)
    return paths


def write_photos(folder: Path, n: int, seed: int = 0) -> list[Path]:
    """``n`` 500x375 JPEGs: a simulated bird photo (NABirds style) cut to 4:3 around its middle."""
    from songsight.sim.export import write_jpeg
    from songsight.sim.photos import render_photo
    from songsight.sim.rng import item_rng

    folder.mkdir(parents=True, exist_ok=True)
    world = _world(seed)
    w, h = PHOTO_WH
    top = (w - h) // 2
    paths = []
    for i in range(n):
        path = folder / f"photo_{i:05d}.jpg"
        image = render_photo(world, i % N_SPECIES, item_rng(seed, "benchmark/photo", i), "nabirds")
        write_jpeg(path, image[top : top + h])
        paths.append(path)
    return paths
