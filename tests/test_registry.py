"""The one registry pattern: engines, readers, writers and inside-point policies by name."""

from __future__ import annotations

import subprocess
import sys

import pytest

from boxmask.engines import ENGINE_CLASSES, ENGINES, Engine
from boxmask.points import POLICIES, POLICY_CLASSES, InsidePointPolicy
from boxmask.readers import READERS, SOURCES, Reader
from boxmask.registry import Registry
from boxmask.writers import FORMATS, Writer
from boxmask.writers.registry import WRITERS

ALL = [(ENGINE_CLASSES, Engine), (POLICY_CLASSES, InsidePointPolicy), (READERS, Reader),
       (WRITERS, Writer)]


@pytest.mark.parametrize(("registry", "base"), ALL, ids=lambda x: getattr(x, "kind", ""))
def test_every_name_resolves_to_a_subclass_of_its_kind(registry, base):
    for name in registry.entries:
        cls = registry.get(name)
        assert issubclass(cls, base), name


@pytest.mark.parametrize("registry", [ENGINE_CLASSES, POLICY_CLASSES, WRITERS],
                         ids=["engines", "policies", "writers"])
def test_a_class_registered_under_a_name_carries_that_name(registry):
    assert [registry.get(name).name for name in registry.names] == list(registry.names)


def test_the_offered_names_are_what_the_command_line_and_pipelines_accept():
    assert ENGINES == ("fused", "u2net", "grabcut", "iog", "box")
    assert POLICIES == ("center", "iterate", "grabcut", "u2net", "stage1")
    assert SOURCES == ("ilsvrc-loc", "kaggle-loc", "openimages", "coco")
    assert FORMATS == ("pixel-imagenet", "coco", "openimages")
    assert "records" in READERS and "records" not in SOURCES  # read, not offered


@pytest.mark.parametrize(("registry", "message"), [
    (ENGINE_CLASSES, "unknown engine 'nope'; choose from fused, u2net"),
    (POLICY_CLASSES, "unknown inside-point policy 'nope'; choose from center"),
    (READERS, "unknown source 'nope'; choose from ilsvrc-loc, kaggle-loc, openimages, coco"),
    (WRITERS, "unknown output format 'nope'; choose from pixel-imagenet"),
])
def test_an_unknown_name_is_refused_with_the_choices(registry, message):
    with pytest.raises(ValueError, match=message):
        registry.get("nope")


def test_listing_the_names_imports_no_network_engine():
    code = ("import sys; from boxmask.engines import ENGINES; from boxmask.readers import SOURCES; "
            "import boxmask.engines as e; e.engine_class('grabcut'); "
            "print('torch' in sys.modules, 'boxmask.engines.iog' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["False", "False"]


def test_a_class_of_the_registry_module_itself_and_hidden_names():
    registry: Registry[object] = Registry("thing", "boxmask.registry", {"r": ":Registry",
                                                                        "h": ":Registry"},
                                          hidden=frozenset({"h"}))
    assert registry.names == ("r",)
    assert registry.get("h") is Registry
    assert registry.classes() == [Registry]
