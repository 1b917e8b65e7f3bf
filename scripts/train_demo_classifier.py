#!/usr/bin/env python3
"""Train the demo classifier that ships in mpi_infer/models/ (a narrow LeNet), reproducibly.

    pip install -e .[train]        # torch is a dev-only dependency; the package never imports it
    python scripts/train_demo_classifier.py --out mpi_infer/models

The network is the use case's LeNet layer pattern (pyecvl examples/use_case_pipeline models.py: 5x5 "same"
conv + ReLU + 2x2 max-pool twice, Dense + ReLU, Dense C + Softmax) with narrow widths (8, 16, 64), on 64x64
RGB/255 input (the lenet-64 profile), for the synthetic three-class lesion set (seed 0). It is written as an
EDDL ``.bin`` record stream by our writer (conv K [out, in, 5, 5], bias; Dense W [in, out], bias: EDDL's
layout) and converted to ONNX by our own builder, so the shipped files are exactly what `mpi_infer convert`
makes of the .bin.
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
from mpi_infer.data.synth import CLASSES, SynthSpec, make_classification_dataset  # noqa: E402
from mpi_infer.loaders.opencv import load_item, to_tensor  # noqa: E402
from mpi_infer.models.classifiers import Classifier, build_classifier_onnx, records_from_classifier  # noqa: E402
from mpi_infer.models.eddl_bin import write_records  # noqa: E402
from mpi_infer.profiles import get_profile  # noqa: E402

WIDTHS, DENSE = (8, 16), 64


class LeNet(nn.Module):
    def __init__(self, classes: int, size: int) -> None:
        super().__init__()
        self.c1 = nn.Conv2d(3, WIDTHS[0], 5, padding=2)
        self.c2 = nn.Conv2d(WIDTHS[0], WIDTHS[1], 5, padding=2)
        self.d1 = nn.Linear(WIDTHS[1] * (size // 4) ** 2, DENSE)
        self.d2 = nn.Linear(DENSE, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # logits
        x = nn.functional.max_pool2d(torch.relu(self.c1(x)), 2)
        x = nn.functional.max_pool2d(torch.relu(self.c2(x)), 2)
        return self.d2(torch.relu(self.d1(torch.flatten(x, 1))))


def tensors(dataset: str, split: str) -> tuple[np.ndarray, np.ndarray]:
    ds = load_dataset(dataset)
    profile = get_profile("lenet-64")
    items = list(ds.work_list({split: ds.splits[split]}))
    x = to_tensor([load_item(it, profile).image for it in items], profile)
    return x, np.array([it.target for it in items])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default="mpi_infer/models")
    ap.add_argument("--images", type=int, default=2400)
    ap.add_argument("--epochs", type=int, default=24)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    torch.manual_seed(args.seed)
    torch.set_num_threads(os.cpu_count() or 1)
    with tempfile.TemporaryDirectory() as tmp:
        dataset = make_classification_dataset(tmp, SynthSpec(n=args.images, seed=args.seed))
        xtr, ytr = tensors(dataset, "training")
        xva, yva = tensors(dataset, "validation")
    net = LeNet(len(CLASSES), 64)
    opt = torch.optim.Adam(net.parameters(), lr=2e-3)
    xt, yt = torch.from_numpy(xtr), torch.from_numpy(ytr)
    t0 = time.time()
    for epoch in range(args.epochs):
        net.train()
        order = torch.randperm(len(xt))
        for k in range(0, len(xt), 32):
            idx = order[k : k + 32]
            xb = xt[idx]
            if torch.rand(1).item() < 0.5:  # flips: a lesion's class does not depend on its orientation
                xb = torch.flip(xb, dims=[3])
            if torch.rand(1).item() < 0.5:
                xb = torch.flip(xb, dims=[2])
            opt.zero_grad()
            loss = nn.functional.cross_entropy(net(xb), yt[idx])
            loss.backward()
            opt.step()
        net.eval()
        with torch.no_grad():
            acc = float((net(torch.from_numpy(xva)).argmax(1).numpy() == yva).mean())
        print(f"epoch {epoch + 1}: loss {loss.item():.4f}, validation accuracy {acc:.3f}", flush=True)
    sd = {k: v.detach().numpy().astype(np.float32) for k, v in net.state_dict().items()}
    clf = Classifier("lenet", [(sd["c1.weight"], sd["c1.bias"]), (sd["c2.weight"], sd["c2.bias"])],
                     [(sd["d1.weight"].T.copy(), sd["d1.bias"]), (sd["d2.weight"].T.copy(), sd["d2.bias"])])
    os.makedirs(args.out, exist_ok=True)
    write_records(os.path.join(args.out, "demo_lenet.bin"), records_from_classifier(clf))
    model = build_classifier_onnx(clf, 64, 64, name="demo_lenet")
    with open(os.path.join(args.out, "demo_lenet.onnx"), "wb") as fh:
        fh.write(model.SerializeToString())
    import onnxruntime as ort

    ours = ort.InferenceSession(model.SerializeToString()).run(None, {"input": xva})[0]
    with torch.no_grad():
        theirs = torch.softmax(net(torch.from_numpy(xva)), 1).numpy()
    info = {"arch": "lenet", "widths": list(WIDTHS), "dense": DENSE, "classes": list(CLASSES), "profile": "lenet-64",
            "params": int(sum(p.numel() for p in net.parameters())),
            "train": {"images": int(len(xtr)), "seed": args.seed, "epochs": args.epochs},
            "val_accuracy": round(acc, 4), "onnx_vs_torch_max_abs_diff": float(np.abs(ours - theirs).max()),
            "train_seconds": round(time.time() - t0, 1)}
    with open(os.path.join(args.out, "demo_lenet.json"), "w") as fh:
        json.dump(info, fh, indent=2)
    print(json.dumps(info))


if __name__ == "__main__":
    main()
