"""``mpi_infer split``: N valid ECVL files, original splits kept, paths that resolve, exact round trip."""

from __future__ import annotations

import os

import numpy as np
import pytest

from mpi_infer.cli import main
from mpi_infer.data.dataset import load_dataset
from mpi_infer.data.synth import SynthSpec, make_dataset


def isic_like_yaml(tmp_path, n_train=2000, n_val=150, n_test=600) -> str:
    n = n_train + n_val + n_test
    lines = ["name: ISIC", "description: ISIC segmentation dataset", "images:"]
    for i in range(n):
        lines.append(f"  - location: images_segmentation/ISIC_{i:07d}.jpg")
        lines.append(f"    label: ground_truth/ISIC_{i:07d}_segmentation.png")
    a, b = n_train, n_train + n_val
    lines += ["split:", f"  training: {list(range(0, a))}", f"  validation: {list(range(a, b))}",
              f"  test: {list(range(b, n))}"]
    p = tmp_path / "isic_segmentation.yml"
    p.write_text("\n".join(lines) + "\n")
    return str(p)


@pytest.mark.parametrize(("n", "sizes"), [(4, [687, 687, 687, 689]), (5, [550] * 5)])
def test_split_isic_sizes(tmp_path, capsys, n, sizes):
    src = isic_like_yaml(tmp_path)
    out = tmp_path / "parts"
    assert main(["split", src, "-n", str(n), "-o", str(out)]) == 0
    names = sorted(os.listdir(out))
    assert names == [f"part-{i:03d}-isic_segmentation.yml" for i in range(n)]
    got = [len(load_dataset(str(out / f)).entries) for f in names]
    assert got == sizes
    assert "part-003-isic_segmentation.yml" in capsys.readouterr().out


def test_split_round_trip_reproduces_selection(tmp_path):
    src = isic_like_yaml(tmp_path, 20, 3, 7)
    original = load_dataset(src)
    out = tmp_path / "elsewhere" / "parts"  # a different folder: paths must still resolve
    assert main(["split", src, "-n", "4", "-o", str(out), "--split", "test,validation"]) == 0
    seen = {}
    for i in range(4):
        part = load_dataset(str(out / f"part-{i:03d}-isic_segmentation.yml"), allow_empty=True)
        assert part.name == f"ISIC-part-{i}"
        assert part.description == original.description
        assert list(part.splits) == ["validation", "test"]  # original labels, file order
        for split, idx in part.splits.items():
            for j in idx:
                s = part.sample(int(j))
                key = (os.path.normpath(s.locations[0]), os.path.normpath(s.label_path))
                assert key not in seen
                seen[key] = split
    want = {}
    for split in ("validation", "test"):
        for j in original.splits[split]:
            s = original.sample(int(j))
            want[(os.path.normpath(s.locations[0]), os.path.normpath(s.label_path))] = split
    assert seen == want


def test_split_writes_all_n_files_even_empty_ones(tmp_path):
    src = make_dataset(str(tmp_path / "d"), SynthSpec(n=5, seed=3))
    out = tmp_path / "parts"
    assert main(["split", src, "-n", "8", "-o", str(out), "--split", "test"]) == 0
    files = sorted(os.listdir(out))
    assert len(files) == 8
    sizes = [len(load_dataset(str(out / f), allow_empty=True).entries) for f in files]
    assert sizes == [0] * 7 + [1]
    # a non-empty part is a dataset whose files exist
    part = load_dataset(str(out / files[-1]))
    s = part.sample(0)
    assert os.path.exists(s.locations[0]) and os.path.exists(s.label_path)


def test_split_keeps_classes_features_and_absolute_paths(tmp_path, ecvl_example):
    out = tmp_path / "parts"
    assert main(["split", ecvl_example, "-n", "2", "-o", str(out)]) == 0
    a = load_dataset(str(out / "part-000-ecvl_example.yml"))
    b = load_dataset(str(out / "part-001-ecvl_example.yml"))
    src = load_dataset(ecvl_example)
    assert a.classes == src.classes and a.features == src.features
    assert a.sample(0).label == (0,) and a.sample(0).values == {0: "1", 2: "3.5"}
    assert np.array_equal(b.splits["test"], [len(b.entries) - 1])
    assert b.sample(int(b.splits["test"][0])).label == (0, 2)


def test_split_bad_input_exits_with_dataset_code(tmp_path, capsys):
    p = tmp_path / "bad.yml"
    p.write_text("images: [a]\nsplit: {test: [3]}\n")
    assert main(["split", str(p), "-n", "2", "-o", str(tmp_path / "o")]) == 10
    assert "index 3 is out of range" in capsys.readouterr().err
