"""Error types and the exit codes they map to.

The exit codes are a contract with the schedulers: 2, 3, 10-14 and 70 are permanent (do not retry), 128-255
retryable, as an Indexed Job's pod failure policy, Slurm's requeue and ``supervise`` (which keeps a launcher Job's
retries from rerunning a permanent failure: the MPI Operator has no ExitCode policy) read them. A bad YAML or a
corrupt model will not fix itself on a retry; a flaky NFS mount or a killed pod may.
"""

from __future__ import annotations

EXIT_OK = 0
EXIT_USAGE = 2  # argparse's own code for bad flags
EXIT_PARTIAL = 3  # the run finished, but some images failed (their records say why)
EXIT_DATASET = 10  # the dataset YAML is missing, malformed or inconsistent
EXIT_MODEL = 11  # the model is missing, corrupt, or does not fit the profile
EXIT_CONFIG = 12  # bad options, profile, or output folder
EXIT_TOPOLOGY = 13  # ranks are not where the job expected them (e.g. all on the launcher)
EXIT_LAUNCH = 14  # MPI's world is not what the launcher started (srun without PMI: N singletons)
EXIT_SOFTWARE = 70  # an unexpected exception: a bug, which a retry will not fix
EXIT_RETRYABLE = 200  # I/O trouble or an aborted peer: worth retrying (with --resume)
EXIT_STALLED = 201  # a stopped or blocked rank (mpi/watchdog.py): the ledger has what finished; retry with --resume
EXIT_INTERRUPTED = 202  # SIGTERM or SIGINT (an eviction, a preemption, Ctrl-C): worth retrying (with --resume)

EXIT_CODES = {
    EXIT_OK: "every selected image was scored (or predicted, where it has no mask)",
    EXIT_USAGE: "bad command-line usage",
    EXIT_PARTIAL: "finished, but some images failed; see per_image.csv",
    EXIT_DATASET: "dataset error (permanent)",
    EXIT_MODEL: "model error (permanent)",
    EXIT_CONFIG: "configuration or output-folder error (permanent)",
    EXIT_TOPOLOGY: "rank layout does not match --expect-hosts (permanent)",
    EXIT_LAUNCH: "MPI's world does not match what the launcher started (permanent)",
    EXIT_SOFTWARE: "unexpected internal error (permanent)",
    EXIT_RETRYABLE: "transient failure (I/O, a peer died); retry with --resume",
    EXIT_STALLED: "stalled: a rank finished no batch, or fell silent, for --stall-timeout seconds; retry with --resume",
    EXIT_INTERRUPTED: "interrupted (SIGTERM or SIGINT: an eviction, a preemption, Ctrl-C); retry with --resume",
}


def clip(text: str, limit: int = 200) -> str:
    """Input quoted in a message, capped: a 20 MB line must not become a 40 MB error."""
    text = str(text)
    return text if len(text) <= limit else f"{text[:limit]}... ({len(text)} characters)"


def quote(value: object, limit: int = 200) -> str:
    """``repr`` of a value from the input, capped like ``clip``."""
    return clip(repr(value), limit)


class MpiInferError(Exception):
    """Base class: carries the exit code the whole job should end with."""

    exit_code = EXIT_SOFTWARE


class UsageError(MpiInferError):
    """A bad command-line value found after argparse (e.g. an unbalanced quote in --run-args)."""

    exit_code = EXIT_USAGE


class DatasetError(MpiInferError):
    """The dataset YAML is unusable; the message names the file, the field and what was expected."""

    exit_code = EXIT_DATASET


class PlanError(MpiInferError):
    """The shard plan failed its own exactly-once check (a bug, never the user's fault)."""

    exit_code = EXIT_SOFTWARE


class ModelError(MpiInferError):
    """The model cannot be loaded or does not fit the preprocessing profile."""

    exit_code = EXIT_MODEL


class ConfigError(MpiInferError):
    """Bad options, an unknown profile, or an output folder that cannot be used."""

    exit_code = EXIT_CONFIG


class TopologyError(MpiInferError):
    """The ranks landed on fewer hosts than expected."""

    exit_code = EXIT_TOPOLOGY


class LaunchError(MpiInferError):
    """MPI's world differs from the launcher's: every process would run the whole dataset on its own."""

    exit_code = EXIT_LAUNCH


class RetryableError(MpiInferError):
    """A transient failure: the job may succeed if run again (with --resume)."""

    exit_code = EXIT_RETRYABLE


class Interrupted(RetryableError):
    """SIGTERM or SIGINT reached this rank: what finished is in the ledger; stopping is a retry, not a failure."""

    exit_code = EXIT_INTERRUPTED


class PeerLostError(RetryableError):
    """A rank died mid-run (SIGKILL, OOM, a lost node) and the job cannot go on without it."""


def exit_code_for(exc: BaseException) -> int:
    """The exit code for any exception: ours carry one; OS-level I/O trouble is retryable."""
    if isinstance(exc, MpiInferError):
        return exc.exit_code
    if isinstance(exc, (OSError, MemoryError)):
        return EXIT_RETRYABLE
    return EXIT_SOFTWARE
