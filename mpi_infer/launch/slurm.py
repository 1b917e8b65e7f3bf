"""Slurm batch scripts for a run (``mpi_infer sbatch``), as ``manifest`` renders Kubernetes YAML.

Two modes:
- ``array``: an array job of N tasks, each ``run --part $SLURM_ARRAY_TASK_ID/N`` (one process, no MPI), at most
  P at once, then a merge job that depends on the whole array (``afterany``: the merge itself checks that every
  part finished, names those that did not and exits 200; ``afterok`` would leave a run with one unreadable image
  (its part exits 3) without a summary);
- ``mpi``: one job of N tasks, ``srun --mpi=pmix`` (checked against ``srun --mpi=list`` when the script is
  rendered where Slurm is, and again when it runs) or ``mpirun`` inside the allocation.
Both ask Slurm for ``--signal=B:USR1@S --requeue``: before the time limit (or a preemption that signals) the batch
shell gets USR1, stops the run with SIGTERM (the ledger has every finished image; exit 202) and requeues its own
job, which runs the same script again and resumes (every command carries ``--resume``).

Open MPI 5 under a plain ``srun`` (no PMIx) starts N singletons (open-mpi/ompi#13523): ``run`` refuses that world.
"""

from __future__ import annotations

import argparse
import os
import re
import shlex
import shutil
import subprocess
import sys
from dataclasses import dataclass, field

from .. import __version__
from ..errors import ConfigError, UsageError

SLURM_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")
SLURM_TIME = re.compile(r"(\d+-)?\d+(:\d{1,2}){0,2}|\d+-\d+")
OWNED = {"--out", "--dataset", "--model", "--config", "--part", "--resume", "--overwrite"}


def slurm_name(text: str) -> str:
    if not SLURM_NAME.fullmatch(text):
        raise argparse.ArgumentTypeError(f"expected a name of letters, digits, '_', '.', '-' (at most 64), "
                                         f"got {text[:80]!r}")
    return text


def slurm_time(text: str) -> str:
    if not SLURM_TIME.fullmatch(text):
        raise argparse.ArgumentTypeError(f"expected a Slurm time (MINUTES, HH:MM:SS, D-HH:MM:SS), got {text[:40]!r}")
    return text


def add_sbatch_arguments(p: argparse.ArgumentParser) -> None:
    from ..argtypes import MAX_PARTS, int_range, nonempty

    p.add_argument("--mode", choices=("array", "mpi"), default="array",
                   help="array: N one-process parts and a merge job (no MPI needed); mpi: one N-task MPI job")
    p.add_argument("--dataset", required=True, type=nonempty, help="dataset YAML (shared file system)")
    p.add_argument("--model", required=True, type=nonempty, action="append", metavar="[NAME=]PATH")
    p.add_argument("--out", required=True, type=nonempty, help="output folder (shared file system)")
    p.add_argument("-n", "--tasks", type=int_range(1, MAX_PARTS), required=True,
                   help="array: parts (array tasks); mpi: MPI ranks")
    p.add_argument("--parallel", type=int_range(1, MAX_PARTS), default=None, metavar="P",
                   help="array: at most P parts at once (--array=0-(N-1)%%P)")
    p.add_argument("--launcher", choices=("srun", "mpirun"), default="srun",
                   help="mpi mode: srun --mpi=pmix (default) or mpirun inside the allocation")
    p.add_argument("--name", type=slurm_name, default="mpi-infer", help="job name")
    p.add_argument("--partition", type=slurm_name, default=None)
    p.add_argument("--account", type=slurm_name, default=None)
    p.add_argument("--qos", type=slurm_name, default=None)
    p.add_argument("--time", type=slurm_time, default=None, help="time limit per job (array: per part)")
    p.add_argument("--cpus-per-task", type=int_range(1, 4096), default=None)
    p.add_argument("--mem", default=None, type=_slurm_mem, help="memory per node (e.g. 8G)")
    p.add_argument("--gpus", type=int_range(0, 64), default=0, metavar="K",
                   help="--gres=gpu:K per task (array) or per node (mpi), and `run --gpu`")
    p.add_argument("--signal-before", type=int_range(0, 65535), default=120, metavar="S",
                   help="USR1 this many seconds before the time limit: stop, requeue, resume (0: no requeue)")
    p.add_argument("--python", default=sys.executable, type=nonempty,
                   help="the Python that has mpi_infer on the nodes (default: this one)")
    p.add_argument("--mpirun", default=None, type=nonempty, help="mpi mode with --launcher mpirun: its path "
                   "(default: the one beside --python)")
    p.add_argument("--run-args", default="", help="extra arguments for `mpi_infer run` (one string)")
    p.add_argument("--report", action="store_true", help="the merge (or the run) also writes report.html")
    p.add_argument("-o", "--output", default="slurm", type=nonempty,
                   help="folder for the scripts and the jobs' logs (default ./slurm)")
    p.add_argument("--submit", action="store_true", help="also submit them with sbatch and print the job ids")


def _slurm_mem(text: str) -> str:
    if not re.fullmatch(r"\d+[KMGT]?", text):
        raise argparse.ArgumentTypeError(f"expected a Slurm memory size (e.g. 8G, 500M), got {text[:40]!r}")
    return text


@dataclass
class Scripts:
    """What ``sbatch`` renders: the scripts by file name, and the commands that submit them."""

    files: dict[str, str] = field(default_factory=dict)
    submit: list[str] = field(default_factory=list)


def _directives(args: argparse.Namespace, name: str, log: str) -> list[str]:
    lines = [f"#SBATCH --job-name={name}", f"#SBATCH --output={log}", "#SBATCH --open-mode=append"]
    for flag in ("partition", "account", "qos", "time", "mem"):
        if getattr(args, flag):
            lines.append(f"#SBATCH --{flag}={getattr(args, flag)}")
    if args.signal_before:
        lines += [f"#SBATCH --signal=B:USR1@{args.signal_before}", "#SBATCH --requeue"]
    return lines


def _run_command(args: argparse.Namespace, extra: list[str]) -> list[str]:
    models = [a for m in args.model for a in ("--model", _absolute_model(m))]
    return ["-m", "mpi_infer", "run", "--dataset", os.path.abspath(args.dataset), *models,
            "--out", os.path.abspath(args.out), "--resume", *(["--gpu"] if args.gpus else []),
            *(["--report"] if args.report and args.mode == "mpi" else []), *extra]


def _absolute_model(value: str) -> str:
    """A model path made absolute (the job may start elsewhere); a shipped model's name stays a name."""
    from ..models.files import DEMO_MODELS

    name, sep, path = value.partition("=")
    if not (sep and "/" not in name):
        name, path = "", value
    if path not in DEMO_MODELS:
        path = os.path.abspath(path)
    return f"{name}={path}" if name else path


# The batch shell's part: on USR1 stop the run (SIGTERM: it keeps every finished image and exits 202), then
# requeue this job, which starts this script again and resumes. Slurm signals only the shell (B:), so the
# command runs in the background and the shell waits for it.
REQUEUE = """\
child=""
requeue() {{
  echo "mpi_infer: USR1 from Slurm (time limit or preemption ahead): stopping {what} and requeueing job $SLURM_JOB_ID"
  [ -n "$child" ] && kill -TERM "$child" 2>/dev/null && wait "$child"
  scontrol requeue "$SLURM_JOB_ID"
  exit 0
}}
trap requeue USR1
"""


def render_scripts(args: argparse.Namespace) -> Scripts:
    """The batch scripts for ``args`` (see the module's docstring)."""
    extra = split_run_args(args.run_args)
    if args.mode == "mpi" and args.launcher == "srun":
        check_pmix()
    py = shlex.quote(args.python)
    out = os.path.abspath(args.output)
    log_dir = os.path.join(out, "logs")
    run = " ".join(shlex.quote(a) for a in _run_command(args, extra))
    head = ["#!/bin/bash"]
    note = f"# Rendered by mpi_infer {__version__} (mpi_infer sbatch). Every command resumes: rerun or requeue freely."
    body_env = ["set -uo pipefail", 'export OMP_NUM_THREADS="${SLURM_CPUS_PER_TASK:-1}"', "cd \"$SLURM_SUBMIT_DIR\""]
    scripts = Scripts()
    if args.mode == "array":
        n = args.tasks
        array = f"0-{n - 1}" + (f"%{args.parallel}" if args.parallel else "")
        directives = [*_directives(args, args.name, os.path.join(log_dir, f"{args.name}-%A_%a.out")),
                      f"#SBATCH --array={array}", "#SBATCH --ntasks=1"]
        if args.cpus_per_task:
            directives.append(f"#SBATCH --cpus-per-task={args.cpus_per_task}")
        if args.gpus:
            directives.append(f"#SBATCH --gres=gpu:{args.gpus}")
        part = ('part="${SLURM_ARRAY_TASK_ID:?submit this script with sbatch: it is an array job}"\n'
                f'{py} {run} --part "$part/{n}" &\nchild=$!\n')
        text = "\n".join([*head, *directives, note, f"# Part $SLURM_ARRAY_TASK_ID of {n}; {args.name}-merge.sbatch "
                          f"merges them once the whole array has ended.", *body_env]) + "\n"
        text += (REQUEUE.format(what="part $part") if args.signal_before else "") + part
        text += 'wait "$child"\n'
        merge_dirs = _directives(argparse.Namespace(**{**vars(args), "signal_before": 0}), f"{args.name}-merge",
                                 os.path.join(log_dir, f"{args.name}-merge-%j.out"))
        merge = "\n".join([*head, *merge_dirs, "#SBATCH --ntasks=1", note,
                           f"# The merge: checks that each of the {n} parts finished (exit 200 naming those that did "
                           f"not), then writes the one summary.", *body_env,
                           f"exec {py} -m mpi_infer merge {shlex.quote(os.path.abspath(args.out))} --parts {n}"
                           + (" --report" if args.report else "")]) + "\n"
        parts_file, merge_file = f"{args.name}.sbatch", f"{args.name}-merge.sbatch"
        scripts.files = {parts_file: text, merge_file: merge}
        scripts.submit = [f"jid=$(sbatch --parsable {shlex.quote(os.path.join(out, parts_file))})",
                          f"sbatch --dependency=afterany:$jid {shlex.quote(os.path.join(out, merge_file))}"]
    else:
        n = args.tasks
        directives = [*_directives(args, args.name, os.path.join(log_dir, f"{args.name}-%j.out")),
                      f"#SBATCH --ntasks={n}"]
        if args.cpus_per_task:
            directives.append(f"#SBATCH --cpus-per-task={args.cpus_per_task}")
        if args.gpus:
            directives.append(f"#SBATCH --gres=gpu:{args.gpus}")
        if args.launcher == "srun":
            launch = ("srun --mpi=list 2>&1 | grep -qw pmix || { echo \"mpi_infer: this Slurm's srun has no pmix "
                      "plugin (srun --mpi=list); render with --launcher mpirun\" >&2; exit 14; }\n"
                      f"srun --mpi=pmix {py} {run} &\n")
        else:
            mpirun = shlex.quote(args.mpirun or os.path.join(os.path.dirname(args.python), "mpirun"))
            launch = f'{mpirun} -n "$SLURM_NTASKS" {py} {run} &\n'
        text = "\n".join([*head, *directives, note, f"# {n} MPI ranks ({args.launcher}); rank 0 writes the summary.",
                          *body_env]) + "\n"
        text += (REQUEUE.format(what="the run") if args.signal_before else "") + launch + "child=$!\n"
        text += 'wait "$child"\n'
        scripts.files = {f"{args.name}.sbatch": text}
        scripts.submit = [f"sbatch {shlex.quote(os.path.join(out, args.name + '.sbatch'))}"]
    return scripts


def split_run_args(text: str) -> list[str]:
    try:
        args = shlex.split(text)
    except ValueError as exc:
        raise UsageError(f"--run-args {text[:200]!r}: {exc}") from None
    for arg in args:
        if arg.split("=", 1)[0] in OWNED:
            raise UsageError(f"--run-args: {arg.split('=', 1)[0]} is set by the script itself")
    return args


def check_pmix() -> None:
    """Where Slurm is installed, its srun must offer PMIx (Open MPI 5 needs it; without it srun starts N
    singletons)."""
    srun = shutil.which("srun")
    if srun is None:
        return  # rendered away from the cluster: the script checks again when it runs
    try:
        listed = subprocess.run([srun, "--mpi=list"], capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired):
        return
    plugins = re.findall(r"^\s*(\S+)\s*$", listed.stdout + listed.stderr, flags=re.M)
    if "pmix" not in plugins:
        raise ConfigError(f"--launcher srun: this Slurm's srun offers no pmix plugin (srun --mpi=list: "
                          f"{', '.join(p for p in plugins if not p.endswith(':')) or 'nothing'}); Open MPI 5 needs "
                          f"PMIx under srun. Use --launcher mpirun, or ask for Slurm's mpi/pmix plugin "
                          f"(Debian: libpmix-dev next to slurm-wlm)")


def write_scripts(args: argparse.Namespace) -> Scripts:
    """Render, write (scripts executable, a logs/ folder beside them) and, with --submit, submit."""
    scripts = render_scripts(args)
    out = os.path.abspath(args.output)
    os.makedirs(os.path.join(out, "logs"), exist_ok=True)
    from ..atomic import write_text

    for name, text in scripts.files.items():
        write_text(os.path.join(out, name), text)
        os.chmod(os.path.join(out, name), 0o755)
    return scripts


def submit(scripts: Scripts, output: str) -> list[str]:
    """Submit the rendered scripts (array, then the merge depending on it); returns the job ids."""
    if shutil.which("sbatch") is None:
        raise ConfigError("--submit: no sbatch on PATH; submit the scripts on the cluster's login node")
    out = os.path.abspath(output)
    names = list(scripts.files)
    ids: list[str] = []
    for k, name in enumerate(names):
        cmd = ["sbatch", "--parsable"] + ([f"--dependency=afterany:{ids[0]}"] if k else []) + [os.path.join(out, name)]
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=60)
        if proc.returncode != 0:
            raise ConfigError(f"sbatch {name}: {proc.stderr.strip()[:500]}")
        ids.append(proc.stdout.strip().split(";")[0])
    return ids
