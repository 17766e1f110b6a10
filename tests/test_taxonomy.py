"""Species prompts against BioCLIP's published string formats, from real SSW60 taxa.csv rows."""

from __future__ import annotations

import pytest

from songsight.errors import DataNotFoundError, SongsightError
from songsight.prompt_templates import PROMPT_FORMATS, TEMPLATE_SETS
from songsight.taxonomy import (
    SPECIES_REQUIRED,
    Species,
    build_prompts,
    load_species_csv,
    species_from_row,
    write_species_csv,
)
from tests.helpers import write_csv

HEADER = ["label", "species_code", "inat_taxon_id", "inat2021_label", "nabirds_labels",
          "common_name", "scientific_name", "family", "order"]  # fmt: skip
# The first three rows of SSW60's taxa.csv, as published (family carries a description).
SSW60_ROWS = [
    ["0", "cangoo", "7089", "3226", "57 457", "Canada Goose", "Branta canadensis",
     "Anatidae (Ducks, Geese, and Waterfowl)", "Anseriformes"],
    ["1", "wooduc", "7107", "3188", "81 314 613", "Wood Duck", "Aix sponsa",
     "Anatidae (Ducks, Geese, and Waterfowl)", "Anseriformes"],
    ["2", "mallar3", "6930", "3201", "102 317 616", "Mallard", "Anas platyrhynchos",
     "Anatidae (Ducks, Geese, and Waterfowl)", "Anseriformes"],
]  # fmt: skip

# Expected strings written out by hand in BioCLIP's formats (REFERENCE.md: "Animalia Chordata
# Aves Passeriformes Corvidae Corvus corax with common name Common Raven").
EXPECTED = {
    "cangoo": {
        "taxon_com": "Animalia Chordata Aves Anseriformes Anatidae Branta canadensis with common name Canada Goose",
        "taxon": "Animalia Chordata Aves Anseriformes Anatidae Branta canadensis",
        "sci": "Branta canadensis",
        "com": "Canada Goose",
        "sci_com": "Branta canadensis with common name Canada Goose",
    },
    "wooduc": {
        "taxon_com": "Animalia Chordata Aves Anseriformes Anatidae Aix sponsa with common name Wood Duck",
        "taxon": "Animalia Chordata Aves Anseriformes Anatidae Aix sponsa",
        "sci": "Aix sponsa",
        "com": "Wood Duck",
        "sci_com": "Aix sponsa with common name Wood Duck",
    },
    "mallar3": {
        "taxon_com": "Animalia Chordata Aves Anseriformes Anatidae Anas platyrhynchos with common name Mallard",
        "taxon": "Animalia Chordata Aves Anseriformes Anatidae Anas platyrhynchos",
        "sci": "Anas platyrhynchos",
        "com": "Mallard",
        "sci_com": "Anas platyrhynchos with common name Mallard",
    },
}


@pytest.fixture
def taxa_csv(tmp_path):
    # Written in reverse label order: the loader must sort by label.
    return write_csv(tmp_path / "taxa.csv", SSW60_ROWS[::-1], HEADER)


@pytest.mark.parametrize("fmt", PROMPT_FORMATS)
def test_prompts_match_bioclip_formats(taxa_csv, fmt):
    species = load_species_csv(taxa_csv)
    assert [s.label for s in species] == [0, 1, 2]
    for sp in species:
        assert sp.prompt(fmt) == EXPECTED[sp.code][fmt]


def test_family_description_does_not_leak(taxa_csv):
    for sp in load_species_csv(taxa_csv):
        assert sp.family == "Anatidae"
        for fmt in PROMPT_FORMATS:
            text = sp.prompt(fmt)
            assert "(" not in text and "Ducks" not in text and "Waterfowl" not in text
            assert "  " not in text and text == text.strip()


def test_row_keeps_extra_columns_and_genus():
    sp = species_from_row(dict(zip(HEADER, SSW60_ROWS[0], strict=True)))
    assert sp.genus == "Branta" and sp.epithet == "canadensis"
    assert sp.extra["inat_taxon_id"] == "7089" and sp.extra["nabirds_labels"] == "57 457"
    assert "family" not in sp.extra and "label" not in sp.extra


def test_unknown_ranks_are_skipped_not_blank():
    sp = Species(label=3, scientific_name="Corvus corax", common_name="Common Raven",
                 order="Passeriformes", family="")  # fmt: skip
    assert sp.prompt("taxon") == "Animalia Chordata Aves Passeriformes Corvus corax"
    with pytest.raises(ValueError, match="unknown prompt format"):
        sp.prompt("latin")


def test_write_then_load_round_trips(taxa_csv, tmp_path):
    species = load_species_csv(taxa_csv)
    out = tmp_path / "again.csv"
    write_species_csv(species, out)
    again = load_species_csv(out)
    assert again == species
    assert [s.prompt("taxon_com") for s in again] == [s.prompt("taxon_com") for s in species]
    assert again[0].extra["inat_taxon_id"] == "7089"


def _without(tmp_path, dropped: str):
    keep = [i for i, c in enumerate(HEADER) if c != dropped]
    return write_csv(tmp_path / "taxa.csv", [[r[i] for i in keep] for r in SSW60_ROWS], [HEADER[i] for i in keep])  # fmt: skip


@pytest.mark.parametrize("dropped", SPECIES_REQUIRED)
def test_missing_name_column_is_data_not_found(tmp_path, dropped):
    with pytest.raises(DataNotFoundError, match=f"missing column.s. {dropped}"):
        load_species_csv(_without(tmp_path, dropped))


@pytest.mark.parametrize("dropped", ["label", "order", "family", "species_code"])
def test_optional_columns_may_be_left_out(tmp_path, dropped):
    species = load_species_csv(_without(tmp_path, dropped))
    assert [s.scientific_name for s in species] == [r[6] for r in SSW60_ROWS]
    assert [s.label for s in species] == [0, 1, 2]
    assert species[0].order == ("" if dropped == "order" else "Anseriformes")


def test_missing_file_and_duplicate_labels(tmp_path):
    with pytest.raises(DataNotFoundError, match="not found"):
        load_species_csv(tmp_path / "nope.csv")
    dup = write_csv(tmp_path / "dup.csv", [SSW60_ROWS[0], SSW60_ROWS[0]], HEADER)
    with pytest.raises(DataNotFoundError, match="duplicate"):
        load_species_csv(dup)


def test_templates_expand_every_species(taxa_csv):
    species = load_species_csv(taxa_csv)
    bare = build_prompts(species, "sci")
    assert bare == [["Branta canadensis"], ["Aix sponsa"], ["Anas platyrhynchos"]]

    openai = build_prompts(species, "com", "openai")
    assert len(TEMPLATE_SETS["openai"]) == 80 and len(set(TEMPLATE_SETS["openai"])) == 80
    assert [len(row) for row in openai] == [80, 80, 80]
    assert openai[0][0] == "a bad photo of a Canada Goose."
    assert "a photo of a Mallard." in openai[2]
    # Order follows the template list, the same for every species.
    for sp, row in zip(species, openai, strict=True):
        assert row == [t.format(sp.common_name) for t in TEMPLATE_SETS["openai"]]

    custom = build_prompts(species[:1], "taxon_com", ("{} sings", "hear {}"))
    name = EXPECTED["cangoo"]["taxon_com"]
    assert custom == [[f"{name} sings", f"hear {name}"]]
    with pytest.raises(SongsightError, match="unknown template set 'no-such-set'"):
        build_prompts(species, "sci", "no-such-set")


@pytest.mark.parametrize(
    "rows, expected",
    [
        ([["x", "cangoo", "", "", "", "Canada Goose", "Branta canadensis", "Anatidae", "Anseriformes"]],
         "'label' must hold integers.*row 0: 'x'"),
        ([SSW60_ROWS[0], ["1", "wooduc", "", "", "", "Wood Duck", "Aix sponsa", "", "", ""], SSW60_ROWS[2]],
         "line 3: 10 fields where the header names 9"),
        ([SSW60_ROWS[0], ["1.5"] + SSW60_ROWS[1][1:]], "row 1: '1.5'"),
        ([SSW60_ROWS[0], ["1", "wooduc"]], "line 3: 2 fields where the header names 9"),
    ],
)  # fmt: skip
def test_bad_rows_are_one_clear_error(tmp_path, rows, expected):
    path = write_csv(tmp_path / "taxa.csv", rows, HEADER)
    with pytest.raises(DataNotFoundError, match=expected):
        load_species_csv(path)


def test_names_in_any_script_and_empty_ones_load_and_prompt(tmp_path):
    rows = [
        ["0", "", "", "", "", "Grünling Élégant", "Chloris chloris", "Fringillidae", "Passeriformes"],
        ["1", "", "", "", "", "ヒヨドリ 🐦", "Hypsipetes amaurotis", "", ""],
        ["2", "", "", "", "", "", "", "", ""],
    ]  # fmt: skip
    species = load_species_csv(write_csv(tmp_path / "taxa.csv", rows, HEADER))
    assert [s.common_name for s in species] == ["Grünling Élégant", "ヒヨドリ 🐦", ""]
    assert species[0].prompt("sci_com") == "Chloris chloris with common name Grünling Élégant"
    # No scientific name: no genus, and the taxon forms keep only the ranks that are known.
    assert species[2].genus == "" and species[2].prompt("taxon") == "Animalia Chordata Aves"


# --- templates the user owns -----------------------------------------------------------------


def test_named_fields_fill_from_the_species(taxa_csv):
    from songsight.prompt_templates import resolve_templates

    goose, duck, _ = load_species_csv(taxa_csv)
    owl = Species(
        9, "Bubo virginianus", "Great Horned Owl", order="Strigiformes", family="Strigidae"
    )
    egret = Species(8, "Ardea alba", "Eastern Great Egret")
    assert build_prompts([goose, egret], "com", "the sound of {article} {common_lower}") == [
        ["the sound of a canada goose"],
        ["the sound of an eastern great egret"],
    ]
    rich = (
        "{scientific} ({genus} {epithet}; {family}, {order}, {class}) aka {common} #{label} {code}"
    )
    assert build_prompts([duck], "com", rich) == [
        ["Aix sponsa (Aix sponsa; Anatidae, Anseriformes, Aves) aka Wood Duck #1 wooduc"]
    ]
    # {} (and {prompt}) is the species in the chosen prompt format; formats are fields too.
    mixed = ("{} calling", "{prompt}!", "{sci_com}", "{taxon} / {kingdom} {phylum}")
    assert build_prompts([owl], "com", mixed) == [
        [
            "Great Horned Owl calling",
            "Great Horned Owl!",
            "Bubo virginianus with common name Great Horned Owl",
            "Animalia Chordata Aves Strigiformes Strigidae Bubo virginianus / Animalia Chordata",
        ]
    ]
    tmpl = resolve_templates("a {common_lower} sings")
    assert tmpl.provenance() == {
        "spec": "a {common_lower} sings",
        "templates": ["a {common_lower} sings"],
    }
    # A set name resolves to the set itself.
    assert resolve_templates("sound").templates == TEMPLATE_SETS["sound"]


def test_templates_file(tmp_path, taxa_csv):
    from songsight.prompt_templates import resolve_templates

    path = tmp_path / "captions.txt"
    path.write_text(
        "# how my model was taught\n\nthe sound of {article} {common_lower}\n  {common} singing  \n",
        encoding="utf-8",
    )
    tmpl = resolve_templates(str(path))
    assert tmpl.spec == str(path)
    assert tmpl.templates == ("the sound of {article} {common_lower}", "{common} singing")
    goose = load_species_csv(taxa_csv)[0]
    assert build_prompts([goose], "com", str(path)) == [
        ["the sound of a canada goose", "Canada Goose singing"]
    ]


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("the sound of {commmon}", r"unknown field\(s\) \{commmon\}"),
        ("{common.upper}", "unknown field"),
        ("the sound of {common", "not a valid template"),
        ("{} and {0}", "not a valid template"),
        ("birdsong", "unknown template set 'birdsong'"),
    ],
)
def test_bad_template_strings_are_one_clear_error(text, message):
    from songsight.prompt_templates import resolve_templates

    with pytest.raises(SongsightError, match=message) as info:
        resolve_templates(text)
    assert "\n" not in str(info.value)


def test_bad_templates_files_name_the_line(tmp_path):
    from songsight.prompt_templates import resolve_templates

    bad = tmp_path / "bad.txt"
    bad.write_text("{common} calling\nthe sound of birds\n", encoding="utf-8")
    with pytest.raises(SongsightError, match=r"bad.txt, line 2: .*has no field"):
        resolve_templates(str(bad))
    empty = tmp_path / "empty.txt"
    empty.write_text("# nothing yet\n\n", encoding="utf-8")
    with pytest.raises(SongsightError, match="holds no template"):
        resolve_templates(str(empty))
    latin1 = tmp_path / "latin1.txt"
    latin1.write_bytes("{common} chante à l'aube\n".encode("latin-1"))
    with pytest.raises(SongsightError, match="cannot read templates file"):
        resolve_templates(str(latin1))


# --- species tables as people write them -----------------------------------------------------


def _text_file(path, text: str):
    path.write_bytes(text.encode("utf-8"))
    return path


@pytest.mark.parametrize(
    "header",
    ["Common Name,Scientific Name", "english_name,species", "Vernacular name,Latin-Name"],
)
def test_a_table_of_names_alone_is_numbered_in_row_order(tmp_path, header):
    path = _text_file(
        tmp_path / "birds.csv", f"{header}\nWood Duck,Aix sponsa\nCanada Goose,Branta canadensis\n"
    )
    duck, goose = load_species_csv(path)
    assert (duck.label, duck.common_name, duck.scientific_name) == (0, "Wood Duck", "Aix sponsa")
    assert (goose.label, goose.genus, goose.order, goose.family) == (1, "Branta", "", "")
    assert goose.prompt("taxon_com") == (
        "Animalia Chordata Aves Branta canadensis with common name Canada Goose"
    )
    assert duck.extra == {}


@pytest.mark.parametrize("sep", [";", "\t"])
def test_semicolon_and_tab_tables_read_as_the_comma_one(taxa_csv, tmp_path, sep):
    # Written the way a spreadsheet exports: a BOM, CRLF, and commas inside the family cells.
    lines = [sep.join(HEADER)] + [sep.join(row) for row in SSW60_ROWS]
    path = tmp_path / "taxa_sep.csv"
    path.write_bytes(("\ufeff" + "\r\n".join(lines) + "\r\n").encode("utf-8"))
    species = load_species_csv(path)
    assert species == load_species_csv(taxa_csv)
    assert species[0].family == "Anatidae" and species[0].extra["nabirds_labels"] == "57 457"


@pytest.mark.parametrize(
    ("header", "meant"),
    [("label,Common Name,Scientific Nmae", "scientific_name"), ("common_name,scientific_name,familly", "family")],
)  # fmt: skip
def test_near_miss_species_column_is_named(tmp_path, header, meant):
    path = _text_file(tmp_path / "t.csv", f"{header}\n0,Mallard,Anas platyrhynchos\n")
    with pytest.raises(DataNotFoundError, match=f"is not one songsight reads; did you mean '{meant}'"):  # fmt: skip
        load_species_csv(path)


def test_a_frog_table_keeps_its_own_ranks(tmp_path):
    path = _text_file(
        tmp_path / "frogs.csv",
        "Kingdom,Phylum,Class,Order,Family,Scientific Name,Common Name,call_type\n"
        "Animalia,Chordata,Amphibia,Anura,Hylidae,Pseudacris crucifer,Spring Peeper,peep\n"
        "Animalia,Chordata,,Anura,Ranidae,Lithobates sylvaticus,Wood Frog,clack\n",
    )
    peeper, wood_frog = load_species_csv(path)
    assert (peeper.label, peeper.class_, peeper.order) == (0, "Amphibia", "Anura")
    assert peeper.prompt("taxon") == "Animalia Chordata Amphibia Anura Hylidae Pseudacris crucifer"
    # A blank cell in a column the table has is unknown, never the bird default.
    assert wood_frog.class_ == "" and "Aves" not in wood_frog.prompt("taxon_com")
    assert peeper.extra == {"call_type": "peep"}


def test_a_parquet_table_with_labels(tmp_path):
    pd = pytest.importorskip("pandas")
    path = tmp_path / "taxa.parquet"
    pd.DataFrame(
        {"species_id": [7, 3], "Scientific_Name": ["Aix sponsa", "Branta canadensis"],
         "common": ["Wood Duck", "Canada Goose"], "inat_taxon_id": [7107, 7089]}
    ).to_parquet(path)  # fmt: skip
    goose, duck = load_species_csv(path)
    assert (goose.label, goose.common_name, duck.label, duck.scientific_name) == (
        3, "Canada Goose", 7, "Aix sponsa"
    )  # fmt: skip
    assert duck.extra == {"inat_taxon_id": 7107}
