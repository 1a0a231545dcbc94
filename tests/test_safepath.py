"""Untrusted ids and paths from annotation files never lead outside their folder."""

from __future__ import annotations

import csv
import os
from pathlib import Path, PurePosixPath

import numpy as np
import pytest

from boxmask.safepath import (
    MAX_COMPONENT,
    UnsafePathError,
    check_component,
    join_inside,
    safe_relative,
    sanitize_component,
)

REPO = Path(__file__).resolve().parents[1]

LOOKALIKES = [
    "\uff0e\uff0e",      # fullwidth full stops '．．'
    "\u2025",            # two dot leader '‥'
    "\u2024\u2024",      # one dot leaders '․․'
    "\u2215etc",         # division slash '∕'
    "\uff0fetc",         # fullwidth solidus '／'
    "\u29f8etc",         # big solidus '⧸'
    "n\uff101440764",    # fullwidth digit zero
    "\u0430bc",          # Cyrillic 'а'
    "caf\u00e9",         # non-ASCII letter
    "a\u200bb",          # zero-width space
    "\u202eexe.png",     # right-to-left override
]

BAD_COMPONENTS = [
    "", ".", "..", "../x", "a/b", "/abs", "a\\b", "..\\x", "a\x00b", "\x00", ".hidden", "-rf",
    "~", "~root", "a..b", "abc\n", "abc\r", "a b", "a\tb", "x" * (MAX_COMPONENT + 1),
    *LOOKALIKES,
]


@pytest.mark.parametrize("name", ["n01440764_10040", "000002b66c9c498e", "a.b-c_d", "_x",
                                  "ILSVRC2012_val_00000293", "9a041d52", "x" * MAX_COMPONENT])
def test_check_component_accepts_plain_ids(name):
    assert check_component(name) == name


@pytest.mark.parametrize("name", BAD_COMPONENTS)
def test_check_component_refuses_anything_but_a_plain_name(name):
    with pytest.raises(UnsafePathError, match="not a safe file name"):
        check_component(name, "image id")


@pytest.mark.parametrize("value", [None, b"abc", 5, ["a"]])
def test_check_component_refuses_non_strings(value):
    with pytest.raises(UnsafePathError):
        check_component(value)


# --- sanitize_component ---------------------------------------------------------------------

def test_sanitize_maps_open_images_mids_to_plain_names():
    assert sanitize_component("/m/01g317") == "m01g317"
    assert sanitize_component("/m/0k4j") == "m0k4j"
    assert sanitize_component("/g/11bc5g2j3z") == "g11bc5g2j3z"


def test_sanitize_keeps_every_real_open_images_class_distinct():
    path = REPO / "tests/data/openimages/class-descriptions-boxable_with-header.csv"
    with open(path, newline="", encoding="utf-8") as f:
        mids = [row["label"] for row in csv.DictReader(f)]
    assert len(mids) == 601
    names = [sanitize_component(m) for m in mids]
    assert len(set(names)) == len(mids)
    for mid, name in zip(mids, names, strict=True):
        assert name == mid.replace("/", "")
        assert check_component(name) == name


@pytest.mark.parametrize("label, expected", [
    ("Human face", "Human_face"),
    ("..hidden", "hidden"),
    ("--x", "x"),
    ("a...b", "a.b"),
    ("../../etc/passwd", "etcpasswd"),
    ("caf\u00e9 au lait", "caf_au_lait"),
    ("n01440764", "n01440764"),
])
def test_sanitize_turns_labels_into_safe_names(label, expected):
    assert sanitize_component(label) == expected


def test_sanitize_cuts_long_labels_and_refuses_labels_with_nothing_left():
    assert sanitize_component("y" * 500) == "y" * MAX_COMPONENT
    for hopeless in ["", "...", "\u65e5\u672c", "//", "-", None]:
        with pytest.raises(UnsafePathError):
            sanitize_component(hopeless)


# --- safe_relative / join_inside ---------------------------------------------------------------

def test_safe_relative_normalises_harmless_forms():
    assert safe_relative("train/n01440764/x.JPEG") == PurePosixPath("train/n01440764/x.JPEG")
    assert safe_relative("a/./b//c") == PurePosixPath("a/b/c")
    assert safe_relative("a/~/b") == PurePosixPath("a/~/b")


@pytest.mark.parametrize("path", [
    "", ".", "./", "..", "../x", "a/../../x", "a/..", "/etc/passwd", "//server/share",
    "~", "~/x", "~root/x", "a\\..\\b", "..\\x", "a\x00b", "a/\x00", "a\nb", "a\rb", "a\x7fb",
])
def test_safe_relative_refuses_escapes_and_odd_characters(path):
    with pytest.raises(UnsafePathError):
        safe_relative(path, "image path")


def test_safe_relative_bounds_each_component_to_255_bytes():
    assert safe_relative("d/" + "x" * 255)
    for too_long in ["x" * 256, "\u00e9" * 128, "ok/" + "\u65e5" * 86]:
        with pytest.raises(UnsafePathError, match="255 bytes"):
            safe_relative(too_long)
    with pytest.raises(UnsafePathError, match="encoded"):
        safe_relative("a\ud800b")


def test_join_inside_accepts_every_real_sample_path(tmp_path):
    root = REPO / "data/samples/ilsvrc_loc"
    rels = [p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file()]
    assert len(rels) >= 100
    for rel in rels:
        out = join_inside(root, rel)
        assert out == root / rel and out.is_file()


def nasty_paths(rng: np.random.Generator, n: int) -> list[str]:
    atoms = ["..", ".", "", "~", "/", "\\", "\x00", "a", "b.png", "..a", "a..", "...",
             "%2e%2e", "%2f", "C:", "\n", " ", "-", ".hidden", "x" * 300, *LOOKALIKES]
    out = []
    for _ in range(n):
        parts = [atoms[i] for i in rng.integers(0, len(atoms), int(rng.integers(1, 6)))]
        sep = "/" if rng.random() < 0.8 else ""
        lead = "/" if rng.random() < 0.1 else ""
        out.append(lead + sep.join(parts))
    return out


def test_join_inside_never_leaves_the_root(tmp_path):
    """Random mixtures of escape tricks: either refused, or a path strictly below the root."""
    root = tmp_path / "out"
    root.mkdir()
    real_root = os.path.realpath(root)
    rng = np.random.default_rng(0)
    accepted = refused = 0
    for rel in nasty_paths(rng, 5000) + [p for p in LOOKALIKES]:
        for relative in (rel, PurePosixPath(rel) if rel else rel):
            try:
                out = join_inside(root, relative, "box id")
            except UnsafePathError:
                refused += 1
                continue
            accepted += 1
            real = os.path.realpath(out)
            assert real.startswith(real_root + os.sep), (rel, real)
            assert os.path.normpath(out) != os.path.normpath(root)
    assert accepted > 500 and refused > 500


def test_lookalike_names_stay_literal_files_inside_the_root(tmp_path):
    root = tmp_path / "out"
    root.mkdir()
    for name in LOOKALIKES:
        target = join_inside(root, f"{name}/{name}")
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text("x")
    written = [p for p in tmp_path.rglob("*") if p.is_file()]
    assert len(written) == len(LOOKALIKES)
    assert all(root in p.parents for p in written)


def test_join_inside_with_an_unnormalised_root(tmp_path):
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    root = tmp_path / "a" / ".." / "b"
    assert join_inside(root, "x.png") == root / "x.png"
    with pytest.raises(UnsafePathError):
        join_inside(root, "../a/x.png")
