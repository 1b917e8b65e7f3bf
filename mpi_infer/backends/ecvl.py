"""The DeepHealth production path: ECVL's own loading (DLDataset) and EDDL's own network (pyeddl).

Written against pyecvl 1.3.0 / pyeddl 1.3.1 as reference/ecvl.md sections 2, 3 and 10 describe them;
pyecvl and pyeddl are imported only when this backend is used. Everything that does not need them
(the YAML handed to DLDataset, the augmentations for a profile, the GPU pick, the batch plan) is a
plain function, tested everywhere.

Per rank: the shard is written as an ECVL dataset YAML in a private temporary folder (images with a
mask and images without one go to separate splits, since ECVL decides "has labels" per split from its
first sample); DLDataset loads it with one augmentation container per split (resize with the profile's
interpolation, masks nearest; AugToFloat32(255, divisor_gt=255); AugNormalize when the profile has
mean/std); Start/GetBatch with drop_last off yields every image, the short last batch included (LoadBatch
would throw on it). GetBatch's order is not deterministic, so results are keyed by the returned samples.
The network is built, loaded and switched to test mode (set_mode(net, 0): upstream evaluated BatchNorm
nets in training mode), then run with forward(); the same metrics and records follow as for ONNX.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections import defaultdict, deque
from collections.abc import Iterable, Iterator
from typing import Any

import numpy as np

from ..archs import DECODER_BLOCKS, ENCODER_BLOCKS, layers_from_records
from ..dataset import dump_document
from ..eddl_bin import read_records
from ..errors import ConfigError, ModelError
from ..loader import Batch, Loaded, WorkItem
from ..modelfile import model_format
from ..profiles import Profile

NOLABEL = "--no-mask"


def shard_document(items: list[WorkItem], name: str) -> tuple[dict[str, Any], list[str]]:
    """The ECVL YAML for a shard (absolute paths) and its split names in order.

    Masked and unmasked images of a split go to ``<split>`` and ``<split>--no-mask``."""
    images: list[Any] = []
    split: dict[str, list[int]] = {}
    for it in items:
        key = it.split if it.label_path else it.split + NOLABEL
        split.setdefault(key, []).append(len(images))
        loc: Any = it.locations[0] if len(it.locations) == 1 else list(it.locations)
        images.append({"location": loc, "label": it.label_path} if it.label_path else {"location": loc})
    doc = {"name": name, "description": "mpi_infer shard for ECVL's DLDataset", "images": images, "split": split}
    return doc, list(split)


def augmentation_spec(profile: Profile) -> list[tuple[str, tuple]]:
    """The per-split augmentation chain for a profile, as (pyecvl class, arguments)."""
    chain: list[tuple[str, tuple]] = [
        ("AugResizeDim", ([profile.width, profile.height], profile.interpolation)),  # dims are [W, H]
        ("AugToFloat32", (255, 255)),  # image /255 and mask /255
    ]
    if profile.mean is not None and profile.std is not None:
        chain.append(("AugNormalize", (list(profile.mean), list(profile.std))))
    return chain


def gpu_flags(local_rank: int, visible: int) -> list[int]:
    """CS_GPU's on/off list: this rank's GPU is local rank mod the visible GPUs."""
    if visible < 1:
        raise ConfigError("--gpu: no GPU is visible on this host")
    flags = [0] * visible
    flags[local_rank % visible] = 1
    return flags


def batch_plan(count: int, batch_size: int) -> list[int]:
    """Batch sizes GetBatch yields with drop_last off: full batches, then the short remainder."""
    full, rest = divmod(count, batch_size)
    return [batch_size] * full + ([rest] if rest else [])


class EcvlBackend:
    name = "ecvl"

    def __init__(self, path: str, profile: Profile, *, threads: int, gpu: bool = False, device_id: int = 0,
                 arch: str | None = None, visible_gpus: int | None = None):
        from pyeddl import eddl  # noqa: F401 - fail here, clearly, when missing

        self.path, self.profile, self.threads, self.gpu = path, profile, max(1, threads), gpu
        self.arch = arch or "segnet"
        self.device_id = device_id
        self.visible_gpus = visible_gpus
        self.net = self._build()
        self.batch = 0

    # -- model ---------------------------------------------------------------------------------
    def _computing_service(self) -> Any:
        from pyeddl import eddl

        if self.gpu:
            return eddl.CS_GPU(gpu_flags(self.device_id, self.visible_gpus or 0), mem="full_mem")
        return eddl.CS_CPU(self.threads, mem="full_mem")

    def _build(self) -> Any:
        from pyeddl import eddl

        c, h, w = 3, self.profile.height, self.profile.width
        cs = self._computing_service()
        optimizer = eddl.adam(0.0001)  # build needs one; inference never steps it
        try:
            if model_format(self.path) == "bin":
                layers = layers_from_records(read_records(self.path), self.arch, source=self.path)
                in_ = eddl.Input([c, h, w])
                out = eddl.Sigmoid(segnet_eddl(in_, [layer.out_channels for layer in layers],
                                               self.arch == "segnet-bn"))
                net = eddl.Model([in_], [out])
                # init_weights=True first (build randomises), then load overwrites every param
                eddl.build(net, optimizer, ["binary_cross_entropy"], ["mean_squared_error"], cs, True)
                eddl.load(net, self.path, "bin")
            else:
                net = eddl.import_net_from_onnx_file(self.path, [c, h, w])
                eddl.build(net, optimizer, ["binary_cross_entropy"], ["mean_squared_error"], cs, False)
        except ModelError:
            raise
        except Exception as exc:  # pyeddl surfaces C++ errors as RuntimeError
            raise ModelError(f"{self.path}: EDDL cannot build or load the model: {exc}") from exc
        eddl.set_mode(net, 0)  # test mode: BatchNorm uses running statistics
        return net

    def predict(self, x: np.ndarray) -> np.ndarray:
        from pyeddl import eddl
        from pyeddl.tensor import Tensor

        n = int(x.shape[0])
        if n != self.batch:
            eddl.forward(self.net, b=n)  # resize the net for this batch (the short tail)
            self.batch = n
        eddl.forward(self.net, [Tensor.fromarray(np.ascontiguousarray(x, np.float32))])
        out = eddl.getOutput(eddl.getOut(self.net)[0])
        if self.gpu and hasattr(out, "toCPU"):
            out.toCPU()  # numpy can only view CPU tensors
        y = np.array(out, copy=True)
        return (y[:, 0] if y.ndim == 4 else y).astype(np.float32, copy=False)

    # -- loading (ECVL's own) ------------------------------------------------------------------
    def batches(self, items: Iterable[WorkItem], batch_size: int, threads: int) -> Iterator[Batch]:
        """ECVL-loaded batches (every image once, short tail included), keyed back to our items."""
        from pyecvl import ecvl

        items = list(items)
        ready, failed = [], []
        for it in items:  # ECVL throws from its loader threads on a missing file: catch those here
            missing = [p for p in (*it.locations, *([it.label_path] if it.label_path else [])) if not os.path.exists(p)]
            (failed if missing else ready).append((it, missing))
        for it, missing in failed:
            yield Batch([Loaded(it, status="failed", notes=[f"file not found: {missing[0]}"])], None, [])
        if not ready:
            return
        shard = [it for it, _ in ready]
        doc, split_names = shard_document(shard, "mpi_infer-shard")
        folder = tempfile.mkdtemp(prefix="mpi_infer-ecvl-")
        try:
            path = os.path.join(folder, "shard.yml")
            with open(path, "w", encoding="utf-8") as fh:
                fh.write(dump_document(doc))
            interp = getattr(ecvl.InterpolationType, self.profile.interpolation)
            chain = []
            for name, args in augmentation_spec(self.profile):
                if name == "AugResizeDim":
                    chain.append(ecvl.AugResizeDim(args[0], interp))
                elif name == "AugToFloat32":
                    chain.append(ecvl.AugToFloat32(args[0], divisor_gt=args[1]))
                else:
                    chain.append(ecvl.AugNormalize(*args))
            augs = ecvl.DatasetAugmentations([ecvl.SequentialAugmentationContainer(chain)] * len(split_names))
            dataset = ecvl.DLDataset(path, batch_size, augs, ecvl.ColorType.RGB, ecvl.ColorType.GRAY,
                                     num_workers=max(1, threads), queue_ratio_size=2,
                                     drop_last={s: False for s in split_names})
            by_location: dict[str, deque[WorkItem]] = defaultdict(deque)
            for it in shard:
                by_location[it.locations[0]].append(it)
            for s, name in enumerate(split_names):
                dataset.SetSplit(s)
                dataset.ResetBatch(s, False)
                dataset.Start()
                try:
                    for _ in range(dataset.GetNumBatches(s)):
                        samples, x, y = dataset.GetBatch()
                        yield self._to_batch(samples, x, y, by_location, has_masks=not name.endswith(NOLABEL))
                finally:
                    dataset.Stop()
        finally:
            shutil.rmtree(folder, ignore_errors=True)

    def _to_batch(self, samples: list, x: Any, y: Any, by_location: dict, has_masks: bool) -> Batch:
        xs = np.array(x, copy=True)
        ys = np.array(y, copy=True) if has_masks else None
        loaded = []
        for k, sample in enumerate(samples):
            item = by_location[sample.location_[0]].popleft()
            size = list(sample.size_)  # [W, H], filled on first load
            mask = None
            if ys is not None:
                mask = np.clip(np.rint(ys[k, 0] * 255.0), 0, 255).astype(np.uint8)  # back to 0..255
            loaded.append(Loaded(item, image=None, mask=mask, original_hw=(int(size[1]), int(size[0])),
                                 status="ok" if has_masks else "unscored"))
        return Batch(loaded, xs, list(range(len(loaded))))

    def describe(self) -> dict:
        return {"backend": self.name, "device": "gpu" if self.gpu else "cpu", "threads": self.threads,
                "arch": self.arch if model_format(self.path) == "bin" else "onnx-import", "loader": "ecvl.DLDataset"}


def segnet_eddl(x: Any, widths: list[int], batchnorm: bool) -> Any:
    """The SegNet layer pattern of archs.py in pyeddl (widths from the .bin records)."""
    from pyeddl import eddl

    conv = getattr(eddl, "Conv2D", None) or eddl.Conv
    pool = getattr(eddl, "MaxPool2D", None) or eddl.MaxPool
    up = getattr(eddl, "UpSampling2D", None) or eddl.UpSampling
    k = 0

    def block(x: Any, relu: bool = True) -> Any:
        nonlocal k
        x = conv(x, widths[k], [3, 3], [1, 1], "same")
        if batchnorm and relu:
            x = eddl.BatchNormalization(x, True)
        k += 1
        return eddl.ReLu(x) if relu else x

    for n in ENCODER_BLOCKS:
        for _ in range(n):
            x = block(x)
        x = pool(x, [2, 2], [2, 2], "none")
    for n in DECODER_BLOCKS:
        x = up(x, [2, 2])
        for _ in range(n):
            x = block(x)
    return block(x, relu=False)
