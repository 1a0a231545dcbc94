"""The plan's contract and the checks that hold a launcher or a worker to it.

The contract (``protocol.Contract``) fixes everything that determines the masks: normalised
settings (less the options that change speed only), the engine's description (with its weights'
sha256) and the inside-point policy's. ``convert`` on an existing output directory resumes only
when the requested contract equals the planned one; a worker refuses to start when its boxmask
version, engine or inside-point policy differs from the plan's, or the planned input file changed.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

from .. import __version__
from .protocol import Contract, Plan, PlanMismatchError
from .settings import Settings


def runtime_engine_options(engine: str) -> frozenset[str]:
    """Options of ``engine`` that change speed, not masks (``Engine.RUNTIME_OPTIONS``): a worker
    may choose them freely and the plan contract leaves them out."""
    from ..engines import engine_class

    return engine_class(engine).RUNTIME_OPTIONS


def policy_description(settings: Settings) -> dict[str, Any]:
    """What the inside-point policy of ``settings`` is (with its weights' sha256, if any). Builds
    the policy (for ``stage1`` that loads its network): describe a policy at hand instead."""
    from ..points import create_policy

    return create_policy(settings.inside_point, **settings.inside_options).describe()


def contract(settings: Settings, engine_description: dict[str, Any],
             inside_policy: dict[str, Any] | None = None) -> Contract:
    """The part of a plan two runs must agree on to share an output directory.

    ``inside_policy``: the policy's description when known (else ``policy_description``)."""
    from ..points import RUNTIME_OPTIONS

    normalized = settings.normalized()
    s = normalized.to_json()
    runtime = runtime_engine_options(settings.engine)
    s["engine_options"] = {k: v for k, v in s["engine_options"].items() if k not in runtime}
    s["inside_options"] = {k: v for k, v in s["inside_options"].items()
                           if k not in RUNTIME_OPTIONS}
    if inside_policy is None:
        inside_policy = policy_description(normalized)
    return Contract(Settings.from_json(s), engine_description, inside_policy)


def contract_hash(c: Contract | dict[str, Any]) -> str:
    """sha256 of a contract's JSON with sorted keys."""
    return c.hash() if isinstance(c, Contract) else Contract.from_json(c).hash()


def describe_differences(a: Any, b: Any, prefix: str = "") -> list[str]:
    """Human-readable list of the keys where two JSON-like values differ."""
    if isinstance(a, dict) and isinstance(b, dict):
        out: list[str] = []
        for k in sorted(set(a) | set(b)):
            out += describe_differences(a.get(k), b.get(k), f"{prefix}{k}.")
        return out
    if a != b:
        return [f"{prefix.rstrip('.')}: planned {a!r}, requested {b!r}"]
    return []


def check_version(plan: Plan) -> None:
    """Raise ``PlanMismatchError`` when the plan was made by another boxmask version (another
    version may produce other masks: finish the job with the version that planned it, or start
    over with ``--force``). The plan format is checked when the plan is read."""
    if plan.boxmask_version != __version__:
        raise PlanMismatchError(
            f"the conversion was planned with boxmask {plan.boxmask_version}, this is "
            f"boxmask {__version__}: finish it with the version that planned it, or use --force "
            "to discard it and start over.")


def input_fingerprint(settings: Settings) -> dict[str, Any] | None:
    """Size (bytes) and mtime (ns) of the input when it is one file (a COCO JSON, a CSV), else
    None (a folder of annotations is not fingerprinted)."""
    path = Path(settings.input)
    try:
        st = path.stat()
    except OSError:
        return None
    if not path.is_file():
        return None
    return {"path": str(path), "size": st.st_size, "mtime_ns": st.st_mtime_ns}


def check_input(plan: Plan) -> None:
    """Raise ``PlanMismatchError`` when the plan's input file changed since it was planned (its
    shards no longer describe it). An input this host cannot see (a worker node without the
    annotations) is not checked: workers need only the shards."""
    planned = plan.input
    if not planned:
        return
    try:
        st = Path(planned["path"]).stat()
    except OSError:
        return
    if (st.st_size, st.st_mtime_ns) != (planned["size"], planned["mtime_ns"]):
        raise PlanMismatchError(
            f"the input {planned['path']} changed after it was planned (size "
            f"{planned['size']} -> {st.st_size} bytes, modified "
            f"{time.strftime('%Y-%m-%d %H:%M:%S', time.localtime(st.st_mtime))}): the planned "
            "shards no longer describe it. Restore it, or use --force to plan it again.")


def check_contract(plan: Plan, requested: Contract) -> None:
    """Raise ``PlanMismatchError`` listing the differences when ``requested`` != the plan's
    contract (or the plan was made by another boxmask version)."""
    check_version(plan)
    if plan.contract.hash() == requested.hash():
        return
    diffs = describe_differences(plan.contract.to_json(), requested.to_json())
    raise PlanMismatchError(
        "the output directory holds a conversion with other settings:\n  "
        + "\n  ".join(diffs[:20])
        + "\nUse another --output, or --force to discard the existing conversion."
    )


def _check_description(what: str, planned: Any, actual: dict[str, Any]) -> None:
    if json.dumps(planned, sort_keys=True) != json.dumps(actual, sort_keys=True):
        diffs = describe_differences(planned, actual)
        raise PlanMismatchError(f"this worker's {what} differs from the plan:\n  "
                                + "\n  ".join(diffs[:20]))


def check_policy(plan: Plan, policy: Any) -> None:
    """Refuse an inside-point policy (``points.InsidePointPolicy``) whose description differs
    from the plan's (e.g. replaced weights)."""
    if plan.contract.inside_policy is not None:
        _check_description("inside-point policy", plan.contract.inside_policy, policy.describe())


def check_engine(plan: Plan, engine: Any) -> None:
    """Refuse an engine (``engines.base.Engine``) whose description differs from the plan's
    (other weights, settings)."""
    _check_description("engine", plan.contract.engine, engine.describe())


def check_worker_start(plan: Plan) -> None:
    """What a worker checks before it builds anything: the plan's boxmask version and input."""
    check_version(plan)
    check_input(plan)
