"""Command line: ``mpi_infer run|merge|split|synth|convert|manifest|sbatch|supervise|report`` (``python -m
mpi_infer``)."""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence
from typing import TYPE_CHECKING

from . import __version__
from .argtypes import (
    MAX_PARTS,
    MAX_RANKS_HINT,
    ArgumentParser,
    float_range,
    group_pattern,
    int_range,
    nonempty,
    patient_pattern,
    split_names,
)
from .errors import EXIT_CODES, EXIT_OK, EXIT_USAGE, ConfigError, MpiInferError, UsageError, clip
from .options import expand_argv

if TYPE_CHECKING:
    from .config import RunConfig


def _model_path(value: str) -> str:
    from .models.files import DEMO_MODELS, demo_model

    if value in DEMO_MODELS:
        name, kind = DEMO_MODELS[value]
        return demo_model(kind, name)
    return value


def _add_profile_options(p: argparse.ArgumentParser) -> None:
    from .profiles import INTERPOLATIONS, PROFILES

    g = p.add_argument_group("preprocessing (a named profile, any field overridable)")
    g.add_argument("--profile", default=None, help=f"one of {', '.join(PROFILES)} (default segnet-192)")
    g.add_argument("--size", nargs=2, type=int_range(1, 65536), metavar=("H", "W"),
                   help="network input height and width")
    g.add_argument("--interp", choices=INTERPOLATIONS, help="image resize interpolation (masks: nearest)")
    g.add_argument("--mean", nargs="+", type=float_range(-1e6, 1e6), metavar="M",
                   help="per-channel mean (R G B, or one value for a grey model), in the units after the intensity "
                        "step ([0,1] after /255)")
    g.add_argument("--std", nargs="+", type=float_range(0, 1e6, lo_open=True), metavar="S",
                   help="per-channel std (R G B, or one value)")
    g.add_argument("--intensity", choices=("255", "minmax", "raw"), default=None,
                   help="255: /255 (ECVL's AugToFloat32(255)); minmax: each image's min-max to 0..255 first; raw: the "
                        "values as read (a CT's Hounsfield units), as the volume pipelines feed them")
    g.add_argument("--threshold", type=float_range(0, 1, lo_open=True),
                   help="binarisation threshold in (0, 1] (prediction and ground truth)")


def _profile_overrides(args: argparse.Namespace) -> dict:
    return {"size": args.size, "interpolation": args.interp, "mean": args.mean, "std": args.std,
            "threshold": args.threshold, "intensity": args.intensity}


def _profile(args: argparse.Namespace):
    from .profiles import get_profile

    return get_profile(args.profile, **_profile_overrides(args))


def _part_spec(text: str) -> tuple[int, int]:
    from .parts.layout import part_spec

    try:
        return part_spec(text)
    except UsageError as exc:
        raise argparse.ArgumentTypeError(str(exc).removeprefix("argument --part: ")) from None


def build_parser() -> argparse.ArgumentParser:
    exit_help = "\n".join(f"  {code:>3}  {text}" for code, text in EXIT_CODES.items())
    parser = ArgumentParser(
        prog="mpi_infer",
        description="Segmentation inference over a whole ECVL dataset with MPI; one exact report.",
        epilog=f"exit codes:\n{exit_help}",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"mpi_infer {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)

    run = sub.add_parser("run", help="run inference (under mpirun, or as one process)",
                         description="mpirun -n N python -m mpi_infer run --dataset D.yml --model M --out DIR")
    run.add_argument("--config", default=None, metavar="RUN.yaml",
                     help="a YAML file of run options, keys named like the flags (batch-size: 4, split: [test], "
                          "model: {a: a.onnx}); flags given as well override it; recorded in run.json")
    run.add_argument("--dataset", required=True, type=nonempty, help="ECVL dataset YAML")
    run.add_argument("--model", required=True, type=nonempty, action="append", metavar="[NAME=]PATH",
                     help="ONNX model or EDDL .bin (with --arch); 'demo' / 'demo-onnx' = the shipped demo model; "
                          "repeat it (or give a folder or a glob) to run several models on every batch, each named "
                          "NAME (default: the file's stem)")
    run.add_argument("--ensemble", choices=("mean", "vote"), default=None,
                     help="also score the models' combined output as the model 'ensemble': mean probabilities, "
                          "or (classification) the share of votes")
    run.add_argument("--tta", choices=("flip",), default=None,
                     help="test-time augmentation: every model also on the h-, v- and hv-flipped batch, averaged; "
                          "per_image.csv gets each image's uncertainty (the spread across the four)")
    run.add_argument("--arch", default="auto", choices=("auto", "segnet", "segnet-bn", "vgg16", "lenet"),
                     help="architecture of a .bin (default: recognised from the record shapes)")
    run.add_argument("--activation", action="append", default=None, metavar="[NAME=]none|sigmoid|softmax",
                     help="applied to an ONNX model's raw output (logits: sigmoid, or softmax for C classes); "
                          "NAME=... for one model of several (repeatable); an activation on outputs that already "
                          "are probabilities is refused (exit 11)")
    run.add_argument("--class", dest="cls", type=int_range(0, 1 << 16), default=None,
                     help="foreground channel of a C-channel output (default 1 when C = 2)")
    run.add_argument("--output", default=None, type=nonempty, metavar="NAME",
                     help="the ONNX output tensor to score, for a model with several outputs")
    run.add_argument("--out", required=True, type=nonempty,
                     help="output folder (on shared storage for multi-host runs)")
    run.add_argument("--split", action="append", default=None, type=split_names,
                     help="split(s) to run, repeatable or comma-separated; 'all' = every split (default: test)")
    run.add_argument("--batch-size", type=int_range(1, 65536), default=8)
    _add_profile_options(run)
    run.add_argument("--loader", default="auto", choices=("auto", "ecvl", "opencv"),
                     help="image loading: ECVL's DLDataset (where pyecvl imports; auto's pick) or OpenCV")
    run.add_argument("--engine", default="auto", choices=("auto", "onnx", "eddl"),
                     help="network: ONNX Runtime (auto's pick; a .bin is converted once) or EDDL")
    run.add_argument("--backend", default=None, choices=("auto", "onnx", "ecvl"),
                     help="shorthand: ecvl = --loader ecvl --engine eddl, onnx = --loader opencv --engine onnx")
    run.add_argument("--eddl-mem", default="full_mem", choices=("full_mem", "mid_mem", "low_mem"),
                     help="EDDL engine memory mode (default full_mem)")
    run.add_argument("--gpu", action="store_true", help="use the rank's local GPU (local rank mod GPUs)")
    run.add_argument("--threads", type=int_range(0, 4096), default=0,
                     help="intra-op threads per rank (default: cores/ranks)")
    run.add_argument("--loader-threads", type=int_range(0, 4096), default=0, help="image-loading threads per rank")
    run.add_argument("--save-masks", action="store_true", help="write predicted masks (0/255 PNG, original size)")
    run.add_argument("--dry-run", action="store_true", help="print the plan; load no model, write nothing")
    run.add_argument("--balance", action="store_true", help="shard sizes differ by at most one per split")
    run.add_argument("--bootstrap", type=int_range(0, 1_000_000), default=2000, metavar="B",
                     help="bootstrap replicates for the 95%% confidence intervals (0: none)")
    run.add_argument("--seed", type=int_range(0, 2**32 - 1), default=0, help="the bootstrap's seed")
    run.add_argument("--score-at", choices=("network", "original"), default="network",
                     help="network (default, upstream): score at the network's input size; original: resize the "
                          "prediction to each image's own size and score against the full-size mask, as ISIC does")
    run.add_argument("--boundary-metrics", action="store_true",
                     help="also HD95, ASSD and normalized surface Dice per image (pixels, at the scoring size)")
    run.add_argument("--nsd-tolerance", type=float_range(0, 1e6), default=2.0, metavar="PX",
                     help="normalized surface Dice tolerance in pixels (default 2)")
    run.add_argument("--empty-boundary", choices=("worst", "exclude"), default="worst",
                     help="one mask empty: worst case (the image diagonal, NSD 0; default) or exclude and count")
    run.add_argument("--group-by", type=group_pattern, default=None, metavar="REGEX",
                     help="one capture group over each image's location (e.g. a patient ID): per-group results, "
                          "and the bootstrap resamples groups")
    run.add_argument("--slice-order", choices=("yaml", "reversed"), default="yaml",
                     help="a volume given as a list of per-slice DICOM files: slice k is file k (yaml, ECVL's "
                          "stacking) or file Z-1-k (reversed: UC11's kidney pipeline, whose labels run the other way)")
    run.add_argument("--patient-by", type=patient_pattern, default=None, metavar="REGEX|dicom:PatientID",
                     help="each image's patient: the first capture group (else the match) of REGEX over the whole "
                          "path, or a DICOM tag; per-patient results in summary.json and patients.csv")
    run.add_argument("--patient-vote", choices=("majority", "mean"), default="majority",
                     help="classification: a patient's prediction is its images' majority class (UC11's rule; a tie "
                          "to the higher class) or the argmax of their mean probabilities")
    run.add_argument("--stall-timeout", type=float_range(0, 7 * 86400), default=600.0, metavar="S",
                     help="end the job (exit 201, retryable) when a rank finishes no batch for S seconds or falls "
                          "silent; 0: never (default 600)")
    run.add_argument("--fault-tolerant", action="store_true",
                     help="survive a lost rank (not rank 0): the survivors run its unfinished images and the job "
                          "ends normally; needs Open MPI 5 launched with `mpirun --with-ft ulfm` (docs/faults.md)")
    run.add_argument("--metrics-file", default=None, type=nonempty, metavar="PATH",
                     help="a Prometheus text file rank 0 rewrites every few seconds and at the end: images done and "
                          "failed, ETA, images/s per rank, stalled and lost ranks, stage seconds, last success")
    run.add_argument("--pushgateway", default=None, type=nonempty, metavar="URL",
                     help="also push those metrics to a Prometheus Pushgateway (e.g. http://pushgateway:9091), "
                          "grouped by --pushgateway-job and run (the --out folder's name); an unreachable gateway is "
                          "a warning, never the end of the run")
    run.add_argument("--pushgateway-job", default="mpi_infer", type=nonempty, metavar="NAME",
                     help="the job label of the pushed group (default mpi_infer)")
    run.add_argument("--max-megapixels", type=float_range(0.01, 1e5), default=None, metavar="MP",
                     help="refuse (that image's record fails) a PNG or JPEG whose header declares more pixels, before "
                          "decoding it (default 64: twice the largest ISIC photograph)")
    run.add_argument("--decode", choices=("exact", "reduced"), default="exact",
                     help="reduced: decode JPEGs at 1/2-1/8 scale in libjpeg (at least twice the network input), "
                          "then resize; much faster on multi-megapixel photographs, not bit-identical to ECVL")
    run.add_argument("--shard-by", choices=("bytes", "images"), default="bytes",
                     help="bytes (default): each split's shards carry equal file bytes, so large images spread "
                          "over the ranks; images: equal counts, the last shard taking the remainder (upstream)")
    run.add_argument("--schedule", choices=("static", "dynamic"), default="static",
                     help="dynamic: rank 0 hands out chunks pull-style (absorbs slow ranks)")
    run.add_argument("--chunk-size", type=int_range(1, 1 << 30), default=0,
                     help="dynamic schedule: images per chunk (default: the batch size)")
    run.add_argument("--allow-overlap", action="store_true", help="accept images listed in two splits")
    run.add_argument("--confine-to-dataset", action="store_true",
                     help="refuse (exit 10) image and mask paths outside the dataset YAML's folder, symlinks "
                          "resolved (without it they are counted in a warning)")
    run.add_argument("--part", type=_part_spec, default=None, metavar="K/N",
                     help="run part K (from 0) of the exact N-way plan as one process, without MPI (a Slurm array "
                          "task, an Indexed Job's pod), into OUT/parts/; then `mpi_infer merge OUT` (docs/slurm.md)")
    run.add_argument("--resume", action="store_true", help="skip images finished by an earlier attempt")
    run.add_argument("--overwrite", action="store_true", help="replace the results already in --out")
    run.add_argument("--expect-hosts", type=int_range(0, MAX_RANKS_HINT), default=0,
                     help="fail unless ranks span this many hosts")
    run.add_argument("--report", action="store_true", help="also write report.html")
    run.add_argument("--progress-interval", type=float_range(0, 86400, lo_open=True), default=5.0,
                     help="seconds between progress log lines")
    run.add_argument("--quiet", action="store_true")
    run.add_argument("--verbose", action="store_true")

    split = sub.add_parser("split", help="write N ECVL sub-YAMLs (part-000-<name> ...), one per shard")
    split.add_argument("dataset")
    split.add_argument("-n", "--parts", type=int_range(1, MAX_PARTS), required=True)
    split.add_argument("-o", "--out", required=True, type=nonempty)
    split.add_argument("--split", action="append", default=None, type=split_names,
                       help="split(s) to keep (default: all)")
    split.add_argument("--balance", action="store_true")
    split.add_argument("--allow-overlap", action="store_true")

    synth = sub.add_parser("synth", help="generate the synthetic lesion dataset")
    synth.add_argument("out")
    synth.add_argument("--n", type=int_range(1, 1_000_000), default=64)
    synth.add_argument("--seed", type=int_range(0, 2**32 - 1), default=0)
    synth.add_argument("--preset", choices=("small", "isic", "ct", "mri"), default="small",
                       help="small: 150-320 px images (tests, demo); isic: ISIC-sized photographs, 0.8-30 MP; ct: "
                            "volumes as per-slice DICOM series with NIfTI labels (UC11's layout); mri: NIfTI volumes "
                            "with scl_slope set (MSSEG's layout); ct and mri also write model.onnx, a threshold model")
    synth.add_argument("--task", choices=("segmentation", "classification"), default="segmentation",
                       help="lesion masks, or three lesion classes (nevus, melanoma, keratosis)")

    conv = sub.add_parser("convert", help="EDDL .bin (SegNet family) -> ONNX")
    conv.add_argument("model")
    conv.add_argument("--arch", default="auto", choices=("auto", "segnet", "segnet-bn", "vgg16", "lenet"))
    conv.add_argument("--out", required=True)
    conv.add_argument("--size", nargs=2, type=int_range(32, 65536), metavar=("H", "W"), default=None,
                      help="input size, multiples of 32 (default: the profile's)")
    conv.add_argument("--profile", default=None)

    man = sub.add_parser("manifest", help="render the Kubernetes PV/PVC/MPIJob YAML")
    from .launch.manifest import add_manifest_arguments

    add_manifest_arguments(man)

    sb = sub.add_parser("sbatch", help="render Slurm batch scripts: an array of `run --part` plus the merge, or "
                                       "one MPI job (srun --mpi=pmix or mpirun); --submit submits them")
    from .launch.slurm import add_sbatch_arguments

    add_sbatch_arguments(sb)

    sup = sub.add_parser("supervise", help="run `-- mpirun ...` (the MPIJob launcher's command); its exit 0 "
                                           "without a finished run (a lost host) becomes exit 200, retryable")
    sup.add_argument("--wait-for-workers", type=float_range(0, 86400), default=0, metavar="SECONDS",
                     help="first wait (at most this long) until every --hostfile entry's sshd answers; past it, "
                          "exit 200 (retryable) naming those that never did (a gang-scheduled launcher starts "
                          "before its workers)")
    sup.add_argument("--hostfile", default="/etc/mpi/hostfile", help="the hostfile the workers are read from")
    sup.add_argument("--ssh-port", type=int_range(1, 65535), default=2222)
    sup.add_argument("argv", nargs=argparse.REMAINDER, metavar="-- COMMAND",
                     help="mpirun ... python -m mpi_infer run ... --out DIR ...")

    mer = sub.add_parser("merge", help="check that every `run --part K/N` finished; write the one summary.json, "
                                       "per_image.csv (and report) an MPI run writes")
    mer.add_argument("dir", help="the --out every part ran with")
    mer.add_argument("--report", action="store_true", default=None, help="also write report.html")
    mer.add_argument("--quiet", action="store_true")
    mer.add_argument("--parts", type=int_range(1, MAX_PARTS), default=None, metavar="N",
                     help="the N every part ran with (a part that never started is then named too)")
    mer.add_argument("--wait", type=float_range(0, 30 * 86400), default=0, metavar="S",
                     help="first wait up to S seconds for every part to finish (a merge pod started with the parts)")

    rep = sub.add_parser("report", help="write <DIR>/report.html from a finished run")
    rep.add_argument("dir")
    rep.add_argument("--worst", type=int_range(0, 1000), default=8, help="how many worst and best images to show")
    parser.run_parser = run  # the run options' one checker (options.py, the Python API)
    return parser


def parse(argv: Sequence[str]) -> argparse.Namespace:
    """The command line (after ``@file`` and ``run --config`` expansion), checked: a bad one exits 2 with the
    reason (raises UsageError under the Python API)."""
    parser = build_parser()
    try:
        argv, config_options = expand_argv(argv, parser.run_parser)
    except (UsageError, ConfigError) as exc:
        parser.error(str(exc).removeprefix("argument "))
    args = parser.parse_args(argv)
    args.config_options = config_options
    if args.command in ("run", "convert"):  # the recipe is part of the command line: check it now, once
        try:
            args.profile_obj = _profile(args) if args.command == "run" else None
        except ConfigError as exc:
            parser.error(f"argument --profile/--size/--interp/--mean/--std/--threshold/--intensity: {exc}")
        if args.command == "run":
            from .models.modelset import parse_models, with_activations

            try:
                args.models = with_activations(parse_models(args.model, _model_path), args.activation)
            except UsageError as exc:
                parser.error(str(exc).removeprefix("argument "))
            bins = [m for m in args.models if m.path.endswith(".bin") and m.activation != "none"]
            if bins:
                parser.error(f"argument --activation: {bins[0].path} is an EDDL .bin, whose network ends in its "
                             f"own Sigmoid (SegNet) or Softmax (VGG16, LeNet); --activation is for ONNX models")
            if args.part and (args.schedule == "dynamic" or args.fault_tolerant):
                parser.error("argument --part: a part is one process with its own share of the plan; "
                             "--schedule dynamic and --fault-tolerant are for an MPI run")
            if args.ensemble and len(args.models) < 2:
                parser.error("argument --ensemble: needs two or more models (--model a=... --model b=...)")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse(sys.argv[1:] if argv is None else argv)
    try:
        return _dispatch(args)
    except MpiInferError as exc:
        print(f"mpi_infer: error: {clip(str(exc), 2000)}", file=sys.stderr)
        return exc.exit_code


def run_config(args: argparse.Namespace) -> RunConfig:
    """The run's frozen settings from its checked command line (the CLI's and the Python API's)."""
    from .config import RunConfig
    from .loaders.imagefiles import DEFAULT_MAX_MEGAPIXELS

    return RunConfig(
        dataset=args.dataset, out=args.out, models=tuple(args.models), ensemble=args.ensemble, tta=args.tta,
        profile_name=args.profile, profile_overrides=_profile_overrides(args),
        splits=tuple(args.split or ["test"]), batch_size=args.batch_size, backend=args.backend, loader=args.loader,
        engine=args.engine, eddl_mem=args.eddl_mem, arch=args.arch, cls=args.cls, output=args.output,
        save_masks=args.save_masks or args.report, dry_run=args.dry_run, balance=args.balance,
        shard_by=args.shard_by, decode=args.decode, bootstrap=args.bootstrap, seed=args.seed,
        group_by=args.group_by, patient_by=args.patient_by, patient_vote=args.patient_vote,
        slice_order=args.slice_order,
        stall_timeout=args.stall_timeout, boundary=args.boundary_metrics,
        fault_tolerant=args.fault_tolerant, score_at=args.score_at,
        nsd_tolerance=args.nsd_tolerance, empty_boundary=args.empty_boundary,
        allow_overlap=args.allow_overlap, confine_to_dataset=args.confine_to_dataset,
        resume=args.resume, overwrite=args.overwrite, gpu=args.gpu,
        threads=args.threads, loader_threads=args.loader_threads, expect_hosts=args.expect_hosts,
        schedule=args.schedule, chunk_size=args.chunk_size, report=args.report, quiet=args.quiet,
        verbose=args.verbose, progress_interval=args.progress_interval, metrics_file=args.metrics_file,
        pushgateway=args.pushgateway, pushgateway_job=args.pushgateway_job,
        max_pixels=int((args.max_megapixels or DEFAULT_MAX_MEGAPIXELS) * 1e6),
        config=os.path.abspath(args.config) if args.config else None, config_options=args.config_options or {},
    )


def _dispatch(args: argparse.Namespace) -> int:
    if args.command == "run":
        if args.part:
            from .parts.run import run_part

            return run_part(run_config(args), args.part)
        from .mpi.job import run_job

        return run_job(run_config(args))
    if args.command == "merge":
        from .parts.merge import merge_parts

        return merge_parts(args.dir, report=args.report, quiet=args.quiet, parts=args.parts, wait=args.wait)[1]
    if args.command == "split":
        return _split(args)
    if args.command == "synth":
        from .data.synth import SynthSpec, make_classification_dataset, make_dataset

        make = make_classification_dataset if args.task == "classification" else make_dataset
        if args.preset != "small" and args.task == "classification":
            print(f"mpi_infer: error: --preset {args.preset} makes a segmentation set", file=sys.stderr)
            return EXIT_USAGE
        if args.preset in ("ct", "mri"):
            from .data.synth_volumes import make_volume_dataset

            path = make_volume_dataset(args.out, SynthSpec(n=args.n, seed=args.seed), args.preset)
            print(f"wrote {args.n} volumes, {os.path.join(args.out, 'model.onnx')} and {path}")
            return EXIT_OK
        path = make(args.out, SynthSpec(n=args.n, seed=args.seed, preset=args.preset))
        print(f"wrote {args.n} images and {path}")
        return EXIT_OK
    if args.command == "convert":
        from .models.convert import convert_bin

        if args.size:
            h, w = args.size
        else:
            from .profiles import get_profile

            h, w = get_profile(args.profile).size
        out = convert_bin(_model_path(args.model), args.arch, h, w, args.out)
        print(f"wrote {out} ({args.arch}, input [batch, 3, {h}, {w}])")
        return EXIT_OK
    if args.command == "manifest":
        from .launch.manifest import manifest_from_args

        text = manifest_from_args(args)
        if args.output in (None, "-"):
            sys.stdout.write(text)
        else:
            from .atomic import write_text

            write_text(args.output, text)
        return EXIT_OK
    if args.command == "sbatch":
        from .launch.slurm import submit, write_scripts

        scripts = write_scripts(args)
        for name in scripts.files:
            print(f"wrote {os.path.join(os.path.abspath(args.output), name)}")
        if args.submit:
            ids = submit(scripts, args.output)
            print("submitted: " + ", ".join(f"{name} as job {jid}" for name, jid in zip(scripts.files, ids)))
        else:
            print("submit with:\n  " + "\n  ".join(scripts.submit))
        return EXIT_OK
    if args.command == "supervise":
        from .launch.supervise import supervise

        command = args.argv[1:] if args.argv[:1] == ["--"] else args.argv
        if args.wait_for_workers:
            from .launch.supervise import wait_for_workers

            code = wait_for_workers(args.hostfile, args.ssh_port, args.wait_for_workers)
            if code:
                return code
        return supervise(command)
    if args.command == "report":
        from .outputs.report import write_report

        path = write_report(args.dir, k=args.worst)
        print(f"wrote {path}")
        return EXIT_OK
    raise AssertionError(args.command)


def _split(args: argparse.Namespace) -> int:
    from .data.dataset import load_dataset, select_splits, selected_items
    from .data.partition import plan
    from .data.parts import write_parts

    dataset = load_dataset(args.dataset, allow_overlap=args.allow_overlap)
    for w in dataset.warnings:
        print(f"warning: {w}", file=sys.stderr)
    splits = select_splits(dataset, args.split or ["all"])
    shards = plan(selected_items(dataset, splits), args.parts, balance=args.balance)
    if os.path.exists(args.out) and not os.path.isdir(args.out):
        raise ConfigError(f"-o {args.out}: exists and is not a folder")
    try:
        paths = write_parts(dataset, [s.parts for s in shards], args.out)
    except OSError as exc:
        raise ConfigError(f"-o {args.out}: cannot write the parts: {exc.strerror or exc}"
                          f"{': ' + str(exc.filename) if exc.filename else ''}") from exc
    for path, shard in zip(paths, shards):
        per = ", ".join(f"{k} {v}" for k, v in shard.sizes().items())
        print(f"{os.path.basename(path)}: {len(shard)} image(s) ({per})")
    return EXIT_OK
