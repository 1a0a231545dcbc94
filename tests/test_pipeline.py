"""Pipeline files and conversion options from Python (``boxmask.pipeline``), and the command line's
report of the same errors."""

from __future__ import annotations

from pathlib import Path

import pytest
from click.testing import CliRunner

from boxmask.cli import cli
from boxmask.jobs.plan import Settings
from boxmask.pipeline import (
    PIPELINE_ALIASES,
    PIPELINE_KEYS,
    PipelineError,
    conversion_settings,
    engine_options,
    inside_options,
    load_pipeline,
    read_pipeline,
)
from boxmask.weights import DEFAULT_REFINEMENT_WEIGHTS, DEFAULT_WEIGHTS

REPO = Path(__file__).resolve().parents[1]
PIPELINES = sorted((REPO / "pipelines").glob("*.toml"))
SAMPLE = REPO / "data" / "samples" / "ilsvrc_loc"
COCO_JSON = REPO / "tests" / "data" / "readers" / "coco" / "instances_mval.json"

BUNDLED = {"coco_boxes_to_rle.toml": ("coco", ["coco"]),
           "ilsvrc_loc_to_pixel_imagenet.toml": ("ilsvrc-loc", ["pixel-imagenet"]),
           "openimages_to_masks.toml": ("openimages", ["openimages"])}


def write_pipeline(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "pipeline.toml"
    path.write_text(text, encoding="utf-8")
    return path


def test_every_bundled_pipeline_is_covered() -> None:
    assert {p.name for p in PIPELINES} == set(BUNDLED)


@pytest.mark.parametrize("path", PIPELINES, ids=lambda p: p.name)
def test_bundled_pipelines_load_from_python(path: Path, weights_home: Path) -> None:
    source, formats = BUNDLED[path.name]
    preset = read_pipeline(path)
    assert set(preset) <= PIPELINE_KEYS
    assert preset["source"] == source and preset["formats"] == formats
    settings = load_pipeline(path, input="annotations", images_root="images")
    assert isinstance(settings, Settings)
    assert settings.input_format == source and settings.formats == formats
    assert settings.input == "annotations" and settings.images_root == "images"
    assert settings.engine == "grabcut"  # auto with an empty weights cache
    assert settings.engine_options == {} and settings.inside_point == "center"
    assert settings.shard_size == 1000
    iog = load_pipeline(path, input="annotations", engine="iog")
    assert iog.engine == "iog" and iog.engine_options == {"weights": DEFAULT_WEIGHTS}


def test_aliases_and_option_tables(tmp_path: Path) -> None:
    path = write_pipeline(tmp_path, """
[convert]
source = "coco"
input = "instances.json"
labels = "classes.txt"
format = "coco"
engine = "grabcut"
engine_option = {iterations = 2}
inside_option = {max_rounds = 9}

[engine_options]
iterations = 5
margin = 0.5

[inside_options]
max_rounds = 3
""")
    preset = read_pipeline(path)
    assert preset == {"source": "coco", "input": "instances.json", "labels_file": "classes.txt",
                      "formats": "coco", "engine": "grabcut",
                      "engine_options": {"iterations": 5, "margin": 0.5},
                      "inside_options": {"max_rounds": 3}}
    s = load_pipeline(path)
    assert s.formats == ["coco"] and s.labels_file == "classes.txt"
    assert s.engine_options == {"iterations": 5, "margin": 0.5}
    assert s.inside_options == {"max_rounds": 3}
    # the command line's parameter names are aliases too; given options replace the file's
    s = load_pipeline(path, input_path="other.json", engine_option={"iterations": 1},
                      format=["coco", "openimages"], limit=2)
    assert s.input == "other.json" and s.engine_options == {"iterations": 1}
    assert s.formats == ["coco", "openimages"] and s.limit == 2
    assert set(PIPELINE_ALIASES.values()) <= PIPELINE_KEYS


def test_options_without_a_pipeline_file() -> None:
    s = conversion_settings({"source": "ilsvrc-loc", "input": SAMPLE, "engine": "box",
                             "split": "val", "box_origin": 1, "max_pixels": 1000,
                             "formats": (), "images_root": None})
    assert s.input == str(SAMPLE) and s.formats == ["pixel-imagenet"]
    assert s.reader_options == {"split": "val", "origin": 1}
    assert s.max_pixels == 1000 and s.images_root is None
    # the split is an ILSVRC-LOC option; other sources ignore it
    assert conversion_settings({"source": "coco", "input": "x.json", "engine": "box",
                                "split": "val"}).reader_options == {}


def test_engine_and_inside_options() -> None:
    assert engine_options("iog") == {"weights": DEFAULT_WEIGHTS}
    assert engine_options("iog", refining=True) == {"weights": DEFAULT_REFINEMENT_WEIGHTS}
    assert engine_options("iog", {"weights": "mine.pth"}) == {"weights": "mine.pth"}
    assert engine_options("u2net", {"x": 1}, precision="bf16", batch_size=4,
                          weights=Path("u.pth")) == {"x": 1, "precision": "bf16",
                                                     "batch_size": 4, "weights": "u.pth"}
    assert engine_options("fused") == {} and engine_options("grabcut", {"iterations": 3}) == {
        "iterations": 3}
    assert inside_options("stage1", {"a": 1}, stage1_weights=Path("s1.pth")) == {
        "a": 1, "weights": "s1.pth"}
    assert inside_options("center") == {}


@pytest.mark.parametrize(("text", "overrides", "message"), [
    ("[convert\nsource = 'coco'", {}, "cannot read pipeline"),
    ("[convert]\ncolour = 'red'", {}, "unknown key 'colour' in "),
    ("[convert]\nsource = 'coco'", {}, "missing --input (on the command line or in --pipeline)"),
    ("[convert]\ninput = 'x'", {}, "missing --source"),
    ("[convert]\nsource = 'coco'\ninput = 'x'\nengine = 'grabcut'\nweights = 'w.pth'", {},
     "--weights applies to the network engines (iog, u2net, fused) only"),
    ("[convert]\nsource = 'coco'\ninput = 'x'", {"engine": "box", "precision": "bf16"},
     "--precision applies to the network engines"),
    ("[convert]\nsource = 'coco'\ninput = 'x'", {"engine": "box", "batch_size": 8},
     "--batch-size applies to the network engines"),
    ("[convert]\nsource = 'coco'\ninput = 'x'\nbox_origin = 1", {"engine": "box"},
     "--box-origin applies to ilsvrc-loc and kaggle-loc only"),
    ("[convert]\nsource = 'coco'\ninput = 'x'\nstage1_weights = 's.pth'", {"engine": "box"},
     "--stage1-weights applies to --inside-point stage1 only"),
    ("[convert]\nsource = 'pascal'\ninput = 'x'", {}, "--source 'pascal' is not one of"),
    ("[convert]\nsource = 'coco'\ninput = 'x'\nformat = ['coco', 'png']", {},
     "--format 'png' is not one of"),
    ("[convert]\nsource = 'coco'\ninput = 'x'\nengine = 'sam'", {}, "--engine 'sam' is not one"),
    ("[convert]\nsource = 'coco'\ninput = 'x'\nshard_size = '10'", {},
     "--shard-size must be an integer"),
    ("[convert]\nsource = 'coco'\ninput = 'x'\nengine_options = ['iterations=5']", {},
     "engine_options must be a table"),
])
def test_invalid_pipelines_raise_pipeline_errors(tmp_path: Path, text: str,
                                                 overrides: dict, message: str) -> None:
    path = write_pipeline(tmp_path, text)
    with pytest.raises(PipelineError) as raised:
        load_pipeline(path, **overrides)
    assert message in str(raised.value)
    assert isinstance(raised.value, ValueError)
    file_problem = message.startswith(("cannot read", "unknown key"))
    assert raised.value.option == ("--pipeline" if file_problem else None)


def test_unknown_python_option_is_refused(tmp_path: Path) -> None:
    path = write_pipeline(tmp_path, "[convert]\nsource = 'coco'\ninput = 'x'")
    with pytest.raises(PipelineError, match="unknown key 'colour' in options"):
        load_pipeline(path, colour="red")


def test_command_line_reports_pipeline_errors_as_usage_errors(tmp_path: Path,
                                                              weights_home: Path) -> None:
    runner = CliRunner()
    out = str(tmp_path / "out")
    unknown = write_pipeline(tmp_path, "[convert]\ncolour = 'red'")
    res = runner.invoke(cli, ["convert", "--pipeline", str(unknown), "--output", out])
    assert res.exit_code == 2
    assert "Invalid value for --pipeline" in res.output
    assert f"unknown key 'colour' in {unknown}" in res.output
    res = runner.invoke(cli, ["plan", "--pipeline", str(PIPELINES[0]), "--output", out])
    assert res.exit_code == 2 and "missing --input" in res.output
    res = runner.invoke(cli, ["convert", "--source", "coco", "--input", str(COCO_JSON),
                              "--engine", "grabcut", "--weights", "w.pth", "--output", out])
    assert res.exit_code == 2
    assert "--weights applies to the network engines (iog, u2net, fused) only" in res.output
    res = runner.invoke(cli, ["convert", "--source", "coco", "--input", str(COCO_JSON),
                              "--engine", "box", "--engine-option", "iterations", "--output",
                              out])
    assert res.exit_code == 2 and "'iterations' is not KEY=VALUE" in res.output
    assert not (tmp_path / "out").exists()
