#!/usr/bin/env python3
"""Train the demo model that ships in mpi_infer/models/ (a narrow SegNet), reproducibly.

    pip install -e .[train]        # torch is a dev-only dependency; the package never imports it
    python scripts/train_demo_model.py --out mpi_infer/models

The network is the upstream SegNet layer pattern with every hidden width divided by 8, trained with
BatchNorm for speed of convergence; BatchNorm is then folded into the convs (exact in eval mode), so
the exported model is a plain SegNet. It is written as an EDDL ``.bin`` record stream by our writer and
converted to ONNX by our own builder, so the shipped files are exactly what `mpi_infer convert` makes.
Data: the synthetic lesion set (seed 0), preprocessed with the segnet-192 profile by mpi_infer's loader.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time

import numpy as np
import torch
from torch import nn

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from mpi_infer.data.dataset import load_dataset  # noqa: E402
from mpi_infer.data.synth import SynthSpec, make_dataset  # noqa: E402
from mpi_infer.data.worklist import WorkItem
from mpi_infer.loaders.opencv import load_item, to_tensor  # noqa: E402
from mpi_infer.models.eddl_bin import write_records  # noqa: E402
from mpi_infer.models.segnet import DECODER_BLOCKS, ENCODER_BLOCKS, ConvLayer, build_onnx, segnet_widths  # noqa: E402
from mpi_infer.profiles import get_profile  # noqa: E402


class SegNetBN(nn.Module):
    def __init__(self, widths: list[int], in_ch: int = 3) -> None:
        super().__init__()
        self.convs = nn.ModuleList()
        self.bns = nn.ModuleList()
        cin = in_ch
        for k, w in enumerate(widths):
            self.convs.append(nn.Conv2d(cin, w, 3, padding=1))
            if k < len(widths) - 1:
                self.bns.append(nn.BatchNorm2d(w, eps=1e-5))
            cin = w

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # logits
        k = 0
        for n in ENCODER_BLOCKS:
            for _ in range(n):
                x = torch.relu(self.bns[k](self.convs[k](x)))
                k += 1
            x = nn.functional.max_pool2d(x, 2)
        for n in DECODER_BLOCKS:
            x = nn.functional.interpolate(x, scale_factor=2, mode="nearest")
            for _ in range(n):
                x = torch.relu(self.bns[k](self.convs[k](x)))
                k += 1
        return self.convs[k](x)

    def folded_layers(self) -> list[ConvLayer]:
        """Fold eval-mode BatchNorm into each conv: a plain SegNet with identical outputs."""
        layers = []
        for k, conv in enumerate(self.convs):
            w = conv.weight.detach().double().numpy()
            b = conv.bias.detach().double().numpy()
            if k < len(self.bns):
                bn = self.bns[k]
                scale = bn.weight.detach().double().numpy() / np.sqrt(bn.running_var.double().numpy() + bn.eps)
                w = w * scale[:, None, None, None]
                b = (b - bn.running_mean.double().numpy()) * scale + bn.bias.detach().double().numpy()
            layers.append(ConvLayer(w.astype(np.float32), b.astype(np.float32)))
        return layers


def tensors(yaml_path: str, profile) -> tuple[np.ndarray, np.ndarray]:
    ds = load_dataset(yaml_path)
    images, masks = [], []
    for i in range(len(ds)):
        s = ds.sample(i)
        loaded = load_item(WorkItem(i, "all", s.locations, s.label_path), profile)
        images.append(loaded.image)
        masks.append(loaded.mask)
    x = to_tensor(images, profile)
    y = (np.stack(masks)[:, None].astype(np.float32) / 255.0 >= profile.threshold).astype(np.float32)
    return x, y


def dice_scores(prob: np.ndarray, gt: np.ndarray, thr: float) -> np.ndarray:
    p = prob >= thr
    g = gt >= 0.5
    inter = (p & g).sum(axis=(1, 2, 3))
    return (2 * inter + 1e-6) / (p.sum(axis=(1, 2, 3)) + g.sum(axis=(1, 2, 3)) + 1e-6)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default="mpi_infer/models")
    ap.add_argument("--n-train", type=int, default=480)
    ap.add_argument("--n-val", type=int, default=64)
    ap.add_argument("--epochs", type=int, default=14)
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--lr", type=float, default=3e-3)
    ap.add_argument("--divisor", type=int, default=8)
    ap.add_argument("--threads", type=int, default=os.cpu_count() or 2)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()

    torch.manual_seed(args.seed)
    torch.set_num_threads(args.threads)
    profile = get_profile("segnet-192")
    with tempfile.TemporaryDirectory() as tmp:
        x, y = tensors(make_dataset(os.path.join(tmp, "train"), SynthSpec(n=args.n_train, seed=args.seed)), profile)
        xv, yv = tensors(make_dataset(os.path.join(tmp, "val"), SynthSpec(n=args.n_val, seed=args.seed + 1000)),
                         profile)
    print(f"data: train {x.shape}, val {xv.shape}", flush=True)

    widths = segnet_widths(args.divisor)
    net = SegNetBN(widths)
    opt = torch.optim.AdamW(net.parameters(), lr=args.lr, weight_decay=1e-4)
    steps = args.epochs * int(np.ceil(len(x) / args.batch_size))
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=args.lr, total_steps=steps, pct_start=0.15)
    bce = nn.BCEWithLogitsLoss()
    rng = np.random.default_rng(args.seed)
    xt, yt = torch.from_numpy(x), torch.from_numpy(y)
    for epoch in range(args.epochs):
        net.train()
        t0 = time.time()
        order = rng.permutation(len(x))
        total = 0.0
        for s in range(0, len(order), args.batch_size):
            idx = torch.from_numpy(order[s : s + args.batch_size])
            xb, yb = xt[idx], yt[idx]
            if rng.random() < 0.5:
                xb, yb = xb.flip(3), yb.flip(3)
            if rng.random() < 0.5:
                xb, yb = xb.flip(2), yb.flip(2)
            logits = net(xb)
            prob = torch.sigmoid(logits)
            soft_dice = 1 - (2 * (prob * yb).sum((1, 2, 3)) + 1) / (prob.sum((1, 2, 3)) + yb.sum((1, 2, 3)) + 1)
            loss = bce(logits, yb) + soft_dice.mean()
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
            total += float(loss.detach()) * len(idx)
        net.eval()
        with torch.no_grad():
            pv = torch.sigmoid(net(torch.from_numpy(xv))).numpy()
        print(f"epoch {epoch + 1}/{args.epochs}: loss {total / len(x):.4f}, "
              f"val mean Dice {dice_scores(pv, yv, profile.threshold).mean():.4f}, {time.time() - t0:.0f} s",
              flush=True)

    layers = net.folded_layers()
    from mpi_infer.models.segnet import records_from_layers

    os.makedirs(args.out, exist_ok=True)
    bin_path = os.path.join(args.out, "demo_segnet.bin")
    onnx_path = os.path.join(args.out, "demo_segnet.onnx")
    write_records(bin_path, records_from_layers(layers))
    model = build_onnx(layers, profile.height, profile.width, name="demo_segnet")
    with open(onnx_path, "wb") as fh:
        fh.write(model.SerializeToString())

    import onnxruntime as ort

    sess = ort.InferenceSession(onnx_path, providers=["CPUExecutionProvider"])
    po = sess.run(None, {"input": xv})[0]
    gap = float(np.abs(po - pv).max())
    val_dice = float(dice_scores(po, yv, profile.threshold).mean())
    meta = {"arch": "segnet", "width_divisor": args.divisor, "profile": profile.name,
            "params": int(sum(layer.weight.size + layer.bias.size for layer in layers)),
            "train": {"images": args.n_train, "seed": args.seed, "epochs": args.epochs},
            "val_mean_dice": round(val_dice, 4), "onnx_vs_torch_max_abs_diff": gap}
    with open(os.path.join(args.out, "demo_segnet.json"), "w") as fh:
        json.dump(meta, fh, indent=2)
    print(json.dumps(meta), flush=True)


if __name__ == "__main__":
    main()
