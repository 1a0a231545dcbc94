"""IDs in CSV outputs that stay text when a reader infers column types.

A CSV carries no types. pandas (and FiftyOne, which reads Open Images CSVs with it), spreadsheets
and many loaders turn ``"139"`` into the integer 139, ``"000123"`` into 123, ``"1e5"`` into
100000.0, ``"NA"`` into a missing value and ``"True"`` into a boolean. An ID read that way no
longer matches the same ID read as text elsewhere (a file name, another CSV read without type
inference), and a lookup fails; FiftyOne then loads every image with no labels and no error.

So a source ID that such a reader could take for anything but text is written with a prefix
naming what it is: ``139`` -> ``img-139`` (an ImageID), ``18`` -> ``class-18`` (a LabelName),
``1768`` -> ``box-1768`` (a BoxID). An ID that already starts with its prefix gets it once more
(``img-7`` -> ``img-img-7``), so that every written ID maps back to exactly one source ID
(``source_id`` strips one prefix, if any). Every other ID is written as it is (Open Images
hex ImageIDs, ``/m/`` MIDs, WordNet ids, ILSVRC file stems).
"""

from __future__ import annotations

PREFIXES = {"ImageID": "img-", "LabelName": "class-", "BoxID": "box-"}
"""The prefix of each kind of ID (Open Images column name -> prefix)."""

_NOT_TEXT = frozenset({
    # pandas' default missing-value markers (``read_csv(na_values=None)``), lower-cased
    "", "#n/a", "#n/a n/a", "#na", "-1.#ind", "-1.#qnan", "-nan", "1.#ind", "1.#qnan", "<na>",
    "n/a", "na", "null", "nan", "none",
    # booleans (pandas' true/false values; spreadsheets)
    "true", "false",
})


def reads_as_non_text(value: str) -> bool:
    """True when a type-inferring CSV reader could turn ``value`` into a number, a boolean or a
    missing value: anything ``float()`` parses (integers, decimals, exponents, ``inf``, ``nan``)
    except with an ``_`` (``2007_000063``: only Python reads digit groups), pandas'
    missing-value markers and booleans in any case, and values with surrounding whitespace
    (which readers strip)."""
    if value != value.strip() or value.lower() in _NOT_TEXT:
        return True
    if "_" in value:
        return False
    try:
        float(value)
    except ValueError:
        return False
    return True


def written_id(source: str, kind: str) -> str:
    """The ID written for ``source`` in a column of ``kind`` (a key of ``PREFIXES``)."""
    prefix = PREFIXES[kind]
    if reads_as_non_text(source) or source.startswith(prefix):
        return prefix + source
    return source


def source_id(written: str, kind: str) -> str:
    """The source ID that ``written_id`` wrote as ``written``."""
    prefix = PREFIXES[kind]
    return written[len(prefix):] if written.startswith(prefix) else written
