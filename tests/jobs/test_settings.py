"""Job settings: the input format's name and the deprecated ``source=`` keyword."""

from __future__ import annotations

import pytest

from boxmask.jobs.settings import Settings


def test_source_keyword_still_builds_the_same_settings_with_a_deprecation_warning():
    with pytest.warns(DeprecationWarning, match="use input_format="):
        old = Settings(source="coco", input="a.json", formats=["coco"])
    assert old == Settings(input_format="coco", input="a.json", formats=["coco"])
    assert old.input_format == "coco"


def test_settings_round_trip_through_json_under_the_new_name():
    s = Settings(input_format="openimages", input="boxes.csv", formats=["openimages"])
    d = s.to_json()
    assert d["input_format"] == "openimages" and "source" not in d
    assert Settings.from_json(d) == s
