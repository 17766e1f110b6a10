"""A species table's taxonomy reaches every prompt the same way: distill, evaluate, index, search.

A species goes from the table (`taxonomy.load_species_csv`) to `Species`, into a gallery's
store and back (`Gallery.species_list`). Frogs are the test: a bird-first reading would give
BioCLIP-2 "Animalia Chordata Aves Anura ..." at search time and "... Amphibia Anura ..." at
distillation time.
"""

from __future__ import annotations

import pyarrow.parquet as pq
import pytest
import soundfile as sf

from songsight.gallery import METADATA_COLUMNS, Gallery, build_gallery
from songsight.prompt_templates import PROMPT_FORMATS
from songsight.taxonomy import build_prompts, load_species_csv, write_species_csv
from tests.helpers import random_photos, tone, write_csv

HEADER = ["label", "scientific_name", "common_name", "kingdom", "phylum", "class", "order",
          "family", "genus", "species_code"]  # fmt: skip
FROGS = [
    [0, "Pseudacris crucifer", "Spring Peeper", "Animalia", "Chordata", "Amphibia", "Anura",
     "Hylidae", "Pseudacris", "sprpee"],
    [1, "Lithobates sylvaticus", "Wood Frog", "Animalia", "Chordata", "Amphibia", "Anura",
     "Ranidae", "Lithobates", "woofro"],
    [2, "Anaxyrus americanus", "American Toad", "Animalia", "Chordata", "Amphibia", "Anura",
     "Bufonidae", "Anaxyrus", "amitoa"],
]  # fmt: skip
# Every rank a template can name, so a rank lost anywhere changes a string.
EVERY_FIELD = "{kingdom}|{phylum}|{class}|{order}|{family}|{genus}|{epithet}|{code}|{label}|{}"


def _gallery_from(table, photos_dir, out, tiny_models):
    """A gallery of one photo per species of ``table``, named by label, as `index build` makes it."""
    species = load_species_csv(table)
    photos = random_photos(photos_dir, len(species), seed=3)
    manifest = write_csv(
        out.parent / f"{out.name}-photos.csv",
        [{"path": str(p), "label": s.label} for p, s in zip(photos, species, strict=True)],
    )
    build_gallery([], out, manifest=manifest, species_csv=table, image_model=tiny_models[1],
                  progress=False)  # fmt: skip
    return Gallery.open(out), photos


def _prompt_strings(species) -> list:
    return [build_prompts(species, fmt, EVERY_FIELD) for fmt in PROMPT_FORMATS]


@pytest.mark.parametrize("blank", [None, "class"], ids=["frogs", "frogs-class-left-blank"])
def test_gallery_species_are_the_tables(tiny_models, tmp_path, blank):
    """The species a gallery gives back hold what the table holds, blank ranks included (a
    blank class is no class in the prompt, not an assumed ``Aves``)."""
    rows = [list(r) for r in FROGS]
    if blank:
        rows[1][HEADER.index(blank)] = ""
    table = write_csv(tmp_path / "taxa.csv", rows, HEADER)
    gallery, _ = _gallery_from(table, tmp_path / "photos", tmp_path / "gallery", tiny_models)
    assert gallery.species_list() == load_species_csv(table)
    assert _prompt_strings(gallery.species_list()) == _prompt_strings(load_species_csv(table))
    wood_frog = gallery.species_list()[1]
    assert wood_frog.class_ == ("" if blank else "Amphibia")


def test_species_table_written_and_read_back_keeps_the_ranks(tmp_path):
    table = write_csv(tmp_path / "taxa.csv", FROGS, HEADER)
    frogs = load_species_csv(table)
    write_species_csv(frogs, tmp_path / "again.csv")
    again = load_species_csv(tmp_path / "again.csv")
    assert again == frogs and {s.class_ for s in again} == {"Amphibia"}


def test_a_gallery_without_rank_columns_reads_as_before(tiny_models, tmp_path):
    """A gallery stored before the ranks were kept has none of their columns: its species are
    read as then (Animalia, Chordata, Aves), and an add to it works."""
    table = write_csv(tmp_path / "taxa.csv", FROGS, HEADER)
    out = tmp_path / "gallery"
    _gallery_from(table, tmp_path / "photos", out, tiny_models)
    store = out / "gallery.parquet"
    old = pq.read_table(store)
    old = old.drop([c for c in ("kingdom", "phylum", "class") if c in old.column_names])
    pq.write_table(old, store)
    gallery = Gallery.open(out)
    assert [(s.kingdom, s.phylum, s.class_, s.order) for s in gallery.species_list()] == [
        ("Animalia", "Chordata", "Aves", "Anura")
    ] * 3
    more = random_photos(tmp_path / "more", 1, seed=9)
    gallery.add(more, progress=False)
    assert len(gallery) == 4 and gallery.species_list()[0].class_ == "Aves"
    assert pq.read_schema(store).names == ["path", "sha256", *METADATA_COLUMNS, "embedding"]


def test_prompts_are_the_same_at_distill_evaluate_and_search(tiny_models, tmp_path, monkeypatch):
    """The strings BioCLIP-2's and BioLingual's text towers are given for a frog table: by the
    distillation's teacher and student set-up, by the evaluation's set-up, and by a search of
    a gallery indexed with that table (the cascade, which embeds the gallery's species)."""
    from songsight.config import DistillConfig
    from songsight.distill.hooks import DistillHooks
    from songsight.distill.models import load_student, load_teacher
    from songsight.encoders.bioclip import BioCLIPEncoder
    from songsight.encoders.biolingual import BioLingualEncoder
    from songsight.encoders.loading import resolve_model
    from songsight.eval.config import EvalConfig
    from songsight.eval.datasets import manifest_data
    from songsight.eval.setup import load_run
    from songsight.retrieval.queries import build_cascade_query_encoder

    audio_model, image_model = map(str, tiny_models)
    table = write_csv(tmp_path / "taxa.csv", FROGS, HEADER)
    seen: dict[str, list[str]] = {"image": [], "audio": []}

    def spy(cls, role):
        original = cls.embed_texts

        def embed_texts(self, texts, *args, **kwargs):
            seen[role].extend(texts)
            return original(self, texts, *args, **kwargs)

        monkeypatch.setattr(cls, "embed_texts", embed_texts)

    spy(BioCLIPEncoder, "image")
    spy(BioLingualEncoder, "audio")

    def taken() -> dict[str, list[str]]:
        out = {k: list(v) for k, v in seen.items()}
        for v in seen.values():
            v.clear()
        return out

    # Distillation: the species table as `distill.setup.load_inputs` reads it, the teacher's
    # targets and the student's cascade text as `build_run` computes them.
    cfg = DistillConfig()
    species = load_species_csv(table)
    targets, *_ = load_teacher(image_model, species, cfg, "cpu", tmp_path / "targets", None,
                               DistillHooks())  # fmt: skip
    load_student(resolve_model(audio_model, "audio"), species, cfg, targets.shape[1], "cpu",
                 DistillHooks())  # fmt: skip
    distill = taken()

    # Evaluation on the user's own manifests and the same table.
    gallery, photos = _gallery_from(table, tmp_path / "photos", tmp_path / "gallery", tiny_models)
    sf.write(tmp_path / "peeper.wav", tone(2000.0, 1.0, 16_000), 16_000)
    audio_csv = write_csv(tmp_path / "audio.csv", [{"path": str(tmp_path / "peeper.wav"), "label": 0}])  # fmt: skip
    photos_csv = write_csv(
        tmp_path / "eval-photos.csv",
        [{"path": str(p), "label": i} for i, p in enumerate(photos)],
    )
    data = manifest_data(audio_csv, photos_csv, table)
    ecfg = EvalConfig(audio=str(audio_csv), photos=str(photos_csv), species=str(table),
                      audio_model=audio_model, image_model=image_model, device="cpu",
                      runtime="torch", progress=False, figures=False)  # fmt: skip
    load_run(ecfg, data, tasks=[])
    evaluate = taken()

    # Search: the gallery indexed with that table, searched by the zero-shot cascade.
    build_cascade_query_encoder(gallery, audio_model, device="cpu", runtime="torch", quiet=True)
    search = taken()

    assert distill["image"][0].startswith(
        "Animalia Chordata Amphibia Anura Hylidae Pseudacris crucifer with common name"
    )
    assert distill["image"] == evaluate["image"] == search["image"]
    assert distill["audio"] == evaluate["audio"] == search["audio"]
