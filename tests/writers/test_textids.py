"""IDs written into CSVs stay text for readers that infer column types (pandas, FiftyOne)."""

from __future__ import annotations

import io

import pytest

from boxmask.writers.textids import PREFIXES, reads_as_non_text, source_id, written_id

NON_TEXT = ["1", "139", "000000000139", "-7", "+3", "1.5", "1e5", "1E-3", "inf", "-Infinity",
            "nan", "NaN", "NA", "n/a", "null", "None", "#N/A", "True", "false", "TRUE", " 12",
            "12 ", ""]
TEXT = ["677c122b0eaa5d16", "/m/0bt9lr", "n01440764", "n01440764_10026", "2007_000063", "1a",
        "0x1f", "e5", "1.2.3", "img-", "dog", "NAN-1"]


@pytest.mark.parametrize("value", NON_TEXT)
def test_values_a_reader_could_type_get_the_prefix(value):
    assert reads_as_non_text(value)
    assert written_id(value, "ImageID") == "img-" + value
    assert written_id(value, "LabelName") == "class-" + value
    assert written_id(value, "BoxID") == "box-" + value


@pytest.mark.parametrize("value", TEXT)
def test_text_ids_are_written_as_they_are(value):
    assert not reads_as_non_text(value)
    assert written_id(value, "LabelName") == value


def test_every_written_id_maps_back_to_exactly_one_source_id():
    sources = NON_TEXT + TEXT + ["img-7", "img-img-7", "7", "class-18", "18", "box-1"]
    for kind in PREFIXES:
        written = [written_id(s, kind) for s in sources]
        assert len(set(written)) == len(set(sources))
        assert [source_id(w, kind) for w in written] == sources
    assert written_id("img-7", "ImageID") == "img-img-7"  # already prefixed: prefixed again
    assert written_id("img-7", "LabelName") == "img-7"  # another kind's prefix: kept


def test_pandas_reads_every_written_id_back_as_the_same_text():
    """The failure the prefix prevents: pandas turns "139" into 139 and "NA" into NaN."""
    pd = pytest.importorskip("pandas", reason="pandas is not installed (FiftyOne needs it)")
    sources = NON_TEXT[:-3] + TEXT  # no surrounding spaces or empty ids: not valid file names
    text = "ImageID\n" + "".join(f"{s}\n" for s in sources)
    naive = pd.read_csv(io.StringIO(text))["ImageID"].tolist()
    assert naive != sources  # without the prefix, pandas changes them
    text = "ImageID\n" + "".join(f"{written_id(s, 'ImageID')}\n" for s in sources)
    read = pd.read_csv(io.StringIO(text))["ImageID"].tolist()
    assert read == [written_id(s, "ImageID") for s in sources]
    assert [source_id(r, "ImageID") for r in read] == sources
