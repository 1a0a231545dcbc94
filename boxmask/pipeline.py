"""Conversion settings from pipeline files and options, checked before any work starts.

A pipeline is a TOML file that presets the options of ``boxmask convert`` and ``plan`` (see
``pipelines/``)::

    [convert]
    source = "coco"
    format = ["coco"]
    engine = "auto"

    [engine_options]          # optional: any other engine setting
    iterations = 5

    [inside_options]          # optional: settings of the inside-point policy
    max_rounds = 3

Options are named as in ``PIPELINE_KEYS``; the spellings of ``PIPELINE_ALIASES`` (the command
line's parameter names) are accepted too. Options given in Python (or on the command line)
replace the file's. Every check raises ``PipelineError``, whose message names the command-line
option at fault, so that the command line and Python report the same thing.
"""

from __future__ import annotations

import tomllib
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from .engines import ENGINES, NETWORK_ENGINES
from .jobs.plan import Settings
from .points import POLICIES
from .readers import SOURCES
from .writers import FORMATS

PIPELINE_KEYS = frozenset({
    "source", "input", "images_root", "labels_file", "split", "box_origin", "formats",
    "engine", "weights", "precision", "batch_size", "engine_options", "inside_point",
    "inside_options", "stage1_weights", "exif", "max_pixels", "min_box_side", "shard_size",
    "limit"})
"""Option names of a conversion, as ``read_pipeline`` and ``conversion_settings`` return and take
them."""

PIPELINE_ALIASES = {"input_path": "input", "labels": "labels_file", "format": "formats",
                    "engine_option": "engine_options", "inside_option": "inside_options"}
"""Other accepted spellings of option names -> their name in ``PIPELINE_KEYS``."""

DEFAULT_FORMATS = ("pixel-imagenet",)
"""Output formats of a conversion that names none."""

PRECISIONS = ("fp32", "bf16", "fp16")
"""Network arithmetic choices of the network engines."""

SPLITS = ("all", "train", "val")
"""ILSVRC-LOC splits a conversion can read."""

EXIF_POLICIES = ("auto", "apply", "ignore")
"""EXIF orientation policies (see ``boxmask.imageio``)."""

BOX_ORIGIN_SOURCES = ("ilsvrc-loc", "kaggle-loc")
"""Sources whose boxes may count pixels from 0 or 1 (``box_origin``)."""

_CHOICES: dict[str, tuple[Any, ...]] = {
    "source": SOURCES, "engine": ("auto",) + ENGINES, "precision": PRECISIONS,
    "inside_point": POLICIES, "split": SPLITS, "exif": EXIF_POLICIES, "box_origin": (0, 1)}
_INTEGERS = ("batch_size", "max_pixels", "min_box_side", "shard_size", "limit")
_TABLES = ("engine_options", "inside_options")


class PipelineError(ValueError):
    """Options that do not make a valid conversion (or segmentation).

    ``option``: the command-line option whose value is wrong (``--pipeline`` for a file that
    cannot be read or holds an unknown key); None when the options do not fit together.
    """

    def __init__(self, message: str, option: str | None = None) -> None:
        super().__init__(message)
        self.option = option


def _flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def canonical_options(options: Mapping[str, Any], origin: str = "options",
                      option: str | None = None) -> dict[str, Any]:
    """``options`` under their ``PIPELINE_KEYS`` names (aliases renamed); an unknown name raises
    ``PipelineError`` ("unknown key ... in ``origin``", naming ``option``)."""
    out: dict[str, Any] = {}
    for key, value in options.items():
        name = PIPELINE_ALIASES.get(key, key)
        if name not in PIPELINE_KEYS:
            raise PipelineError(f"unknown key {key!r} in {origin}", option=option)
        out[name] = value
    return out


def read_pipeline(path: str | Path) -> dict[str, Any]:
    """The options the pipeline TOML file ``path`` presets, under their ``PIPELINE_KEYS`` names.

    The ``[convert]`` table holds the options; top-level ``[engine_options]`` and
    ``[inside_options]`` tables, when present, replace the same keys of ``[convert]``. Other
    tables are ignored. Values are returned as written (``format`` may be one string). Raises
    ``PipelineError`` (option ``--pipeline``) when the file cannot be read or parsed or holds an
    unknown key.
    """
    try:
        data = tomllib.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as e:
        raise PipelineError(f"cannot read pipeline {path}: {e}", option="--pipeline") from None
    preset = dict(data.get("convert", {}))
    for table in _TABLES:
        if table in data:
            preset[table] = data[table]
    return canonical_options(preset, origin=str(path), option="--pipeline")


def _check_values(options: Mapping[str, Any]) -> None:
    """Refuse option values of the wrong type or outside their choices."""
    for name, choices in _CHOICES.items():
        value = options.get(name)
        if value is not None and (isinstance(value, bool) or value not in choices):
            raise PipelineError(f"{_flag(name)} {value!r} is not one of "
                                f"{', '.join(map(str, choices))}")
    for name in _INTEGERS:
        value = options.get(name)
        if value is not None and (isinstance(value, bool) or not isinstance(value, int)):
            raise PipelineError(f"{_flag(name)} must be an integer, not {value!r}")
    for name in _TABLES:
        value = options.get(name)
        if value is not None and not isinstance(value, Mapping):
            raise PipelineError(f"{name} must be a table of settings, not {value!r}")
    for fmt in _formats(options.get("formats")):
        if fmt not in FORMATS:
            raise PipelineError(f"--format {fmt!r} is not one of {', '.join(FORMATS)}")


def _formats(value: str | Iterable[str] | None) -> list[str]:
    if not value:
        return []
    return [value] if isinstance(value, str) else list(value)


def engine_options(engine: str, options: Mapping[str, Any] | None = None, *,
                   weights: str | Path | None = None, precision: str | None = None,
                   batch_size: int | None = None, refining: bool = False) -> dict[str, Any]:
    """The constructor options of ``engine`` (a name of ``ENGINES``, not ``auto``).

    ``options``: any engine settings; ``weights`` (a path or a registry name), ``precision`` and
    ``batch_size`` apply to the network engines only (``PipelineError`` otherwise) and replace
    the same keys of ``options``. Weights not given are the engine's default
    (``boxmask.api.default_weights``; ``refining``: the request has refinement clicks).
    """
    from .api import default_weights

    out = dict(options or {})
    for key, value in (("weights", weights), ("precision", precision),
                       ("batch_size", batch_size)):
        if value is not None:
            if engine not in NETWORK_ENGINES:
                raise PipelineError(f"{_flag(key)} applies to the network engines "
                                    f"({', '.join(NETWORK_ENGINES)}) only")
            out[key] = str(value) if key == "weights" else value
    default = default_weights(engine, refining=refining)
    if default is not None and "weights" not in out:
        out["weights"] = default
    return out


def inside_options(policy: str, options: Mapping[str, Any] | None = None, *,
                   stage1_weights: str | Path | None = None) -> dict[str, Any]:
    """The settings of the inside-point ``policy``: ``options`` plus, for ``stage1``, the
    first-stage checkpoint ``stage1_weights`` (``PipelineError`` for another policy)."""
    out = dict(options or {})
    if stage1_weights:
        if policy != "stage1":
            raise PipelineError("--stage1-weights applies to --inside-point stage1 only")
        out["weights"] = str(stage1_weights)
    return out


def conversion_settings(options: Mapping[str, Any], *,
                        pipeline: str | Path | None = None) -> Settings:
    """The settings of a conversion from its options (see ``PIPELINE_KEYS``).

    ``pipeline``: a TOML pipeline file whose options fill those not in ``options`` (None values
    and empty lists or tables count as not given). ``source`` and ``input`` are required; ``engine``
    ``auto`` (the default) becomes the engine ``boxmask.api.pick_engine_name`` picks; ``split``
    is read for ILSVRC-LOC only; ``box_origin`` (0 or 1, the first pixel's index in the source's
    boxes) applies to ILSVRC-LOC and Kaggle LOC only. Raises ``PipelineError``.
    """
    from .api import pick_engine_name

    given = {k: v for k, v in canonical_options(options).items()
             if v is not None and not (isinstance(v, (tuple, list, dict)) and not v)}
    p = {**(read_pipeline(pipeline) if pipeline is not None else {}), **given}
    for required in ("source", "input"):
        if not p.get(required):
            raise PipelineError(f"missing {_flag(required)} (on the command line or in "
                                "--pipeline)")
    _check_values(p)
    engine = pick_engine_name(p.get("engine") or "auto")
    reader_options: dict[str, Any] = {}
    if p.get("split") and p["source"] == "ilsvrc-loc":
        reader_options["split"] = p["split"]
    if p.get("box_origin") is not None:
        if p["source"] not in BOX_ORIGIN_SOURCES:
            raise PipelineError(f"--box-origin applies to {' and '.join(BOX_ORIGIN_SOURCES)} "
                                "only")
        reader_options["origin"] = p["box_origin"]
    policy = p.get("inside_point") or "center"
    settings = Settings(
        input_format=p["source"],
        input=str(p["input"]),
        formats=_formats(p.get("formats")) or list(DEFAULT_FORMATS),
        images_root=str(p["images_root"]) if p.get("images_root") else None,
        labels_file=str(p["labels_file"]) if p.get("labels_file") else None,
        reader_options=reader_options,
        engine=engine,
        engine_options=engine_options(engine, p.get("engine_options"), weights=p.get("weights"),
                                      precision=p.get("precision"),
                                      batch_size=p.get("batch_size")),
        inside_point=policy,
        inside_options=inside_options(policy, p.get("inside_options"),
                                      stage1_weights=p.get("stage1_weights")),
    )
    for key in ("exif", "max_pixels", "min_box_side", "shard_size", "limit"):
        if p.get(key) is not None:
            setattr(settings, key, p[key])
    return settings


def load_pipeline(path: str | Path, **options: Any) -> Settings:
    """The conversion settings of the pipeline file ``path``, ``options`` (keyword arguments
    named as in ``PIPELINE_KEYS``, e.g. ``input=``) replacing the file's. Raises
    ``PipelineError``."""
    return conversion_settings(options, pipeline=path)
