"""The run's settings, as every rank sees them (parsed from the same argv on each rank). Frozen: what rank 0
works out from them (the profile, the plan) travels in stages/prepare.py's ``Prepared``, never back in here."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class RunConfig:
    dataset: str
    out: str
    models: tuple[Any, ...]  # ModelSpec per --model (models/modelset.py), in order
    ensemble: str | None = None  # mean | vote: score the models' combined output as one more model, "ensemble"
    tta: str | None = None  # flip: each model also on the flipped batch, averaged, with a per-image uncertainty
    profile_name: str | None = None  # as given; None: the task's default (segnet-192, or vgg16-224)
    profile_overrides: dict = field(default_factory=dict)  # --size/--interp/--mean/--std/--threshold
    splits: tuple[str, ...] = ("test",)
    batch_size: int = 8
    backend: str | None = None  # shorthand: ecvl = ecvl loader + eddl engine, onnx = opencv + onnx
    loader: str = "auto"  # ecvl | opencv
    engine: str = "auto"  # onnx | eddl
    eddl_mem: str = "full_mem"  # EDDL's memory mode (full_mem, mid_mem, low_mem)
    arch: str = "auto"  # a .bin's architecture; auto: from the record shapes
    cls: int | None = None  # foreground channel of a C-channel output (default 1 when C = 2)
    output: str | None = None  # the ONNX output tensor to score (None: the model's only output)
    max_pixels: int = 64_000_000  # a PNG/JPEG declaring more is refused before decoding (--max-megapixels)
    decode: str = "exact"  # exact (ECVL's full decode) | reduced (JPEG DCT-domain scaling, then the resize)
    save_masks: bool = False
    bootstrap: int = 2000  # bootstrap replicates for the 95% CIs (0: none)
    seed: int = 0  # the bootstrap's seed
    score_at: str = "network"  # network (upstream's definition) | original (the image's own size, as ISIC scores)
    boundary: bool = False  # HD95, ASSD and NSD per image (opt-in: a distance transform per image)
    nsd_tolerance: float = 2.0  # pixels at the scoring resolution
    empty_boundary: str = "worst"  # one mask empty: worst case (diagonal, 0) | exclude (and count)
    group_by: str | None = None  # regex with one capture group over location: per-group results, group bootstrap
    patient_by: str | None = None  # REGEX over the whole path, or dicom:PatientID: per-patient results
    slice_order: str = "yaml"  # a DICOM list volume's slices: yaml (ECVL's stacking) | reversed (UC11's kidney)
    patient_vote: str = "majority"  # classification: a patient's prediction, majority (UC11's rule) | mean
    dry_run: bool = False
    balance: bool = False
    shard_by: str = "bytes"  # bytes: balance each split's shards by file bytes; images: by count (upstream rule)
    allow_overlap: bool = False
    confine_to_dataset: bool = False  # refuse image and mask paths outside the YAML's folder
    resume: bool = False
    overwrite: bool = False
    gpu: bool = False
    threads: int = 0  # 0: cores on the host / ranks on the host
    loader_threads: int = 0  # 0: automatic
    expect_hosts: int = 0
    stall_timeout: float = 600.0  # no batch for this long (s) ends the job with exit 201; 0: never
    fault_tolerant: bool = False  # survive a lost rank other than 0 (Open MPI's ULFM: mpirun --with-ft ulfm)
    schedule: str = "static"
    chunk_size: int = 0  # dynamic schedule: images per request (0: automatic)
    report: bool = False
    quiet: bool = False
    verbose: bool = False
    progress_interval: float = 5.0
    metrics_file: str | None = None  # rank 0's Prometheus text file (--metrics-file)
    pushgateway: str | None = None  # a Prometheus Pushgateway's URL (--pushgateway)
    pushgateway_job: str = "mpi_infer"  # the job label it groups the run's metrics under
    config: str | None = None  # --config: the options file (absolute path), recorded in run.json
    config_options: dict = field(default_factory=dict)  # what that file said, as loaded

    @property
    def model(self) -> str:
        """The first model's path (the run's model where there is one)."""
        return self.models[0].path

    @property
    def activation(self) -> str:
        """The first model's activation (each model has its own: ``models[k].activation``)."""
        return self.models[0].activation

    @property
    def outputs(self) -> list[str]:
        """The names scored per image: every model's, then the ensemble's."""
        names = [m.name for m in self.models] if self.models else ["model"]
        return names + (["ensemble"] if self.ensemble else [])

    @property
    def multi(self) -> bool:
        """More than one output per image: records and rows carry a ``model`` column."""
        return len(self.outputs) > 1
