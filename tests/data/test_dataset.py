"""The ECVL dataset model: every entry form, path rules, scalars as yaml-cpp keeps them, validation."""

from __future__ import annotations

import os
import textwrap

import numpy as np
import pytest

from mpi_infer.data.dataset import load_dataset, select_splits, selected_items
from mpi_infer.errors import DatasetError


def write(tmp_path, text: str, name: str = "d.yml") -> str:
    p = tmp_path / name
    p.write_text(textwrap.dedent(text))
    return str(p)


def test_ecvl_example_every_entry_form(ecvl_example):
    ds = load_dataset(ecvl_example)
    root = os.path.dirname(ecvl_example)
    assert ds.name == "Example dataset"
    assert ds.description.startswith("This is an example dataset description.")
    assert ds.classes == ["class_a", "class_b", "class_c"]
    assert ds.features == ["feature_1", "feature_2", "feature_3", "feature_4"]
    assert ds.task == "classification"
    assert len(ds) == 11
    s = [ds.sample(i) for i in range(len(ds))]
    # 1: class name in a list, positional values with nulls skipped
    assert s[0].locations == (os.path.join(root, "image_0.png"),)
    assert s[0].label == (0,) and s[0].label_path is None
    assert s[0].values == {0: "1", 2: "3.5"}
    # 2: a bare class index, values by feature name
    assert s[1].label == (2,) and s[1].values == {1: "11", 3: "abc"}
    # 3, 4: multi-class by name and by index
    assert s[2].label == (0, 2)
    assert s[3].label == (0, 2)
    # 5: a mask path (resolved against the YAML's folder)
    assert s[4].label is None and s[4].label_path == os.path.join(root, "ground_truth/image_4_gt.png")
    # 6: three planes, integer label 0
    assert s[5].locations == tuple(os.path.join(root, f"image_5_{c}.png") for c in "RGB")
    assert s[5].label == (0,)
    # 7, 8: no label; an absolute location stays as it is
    assert s[6].label is None and s[6].label_path is None
    assert s[7].locations == ("/data/absolute/image_7.png",)
    # 9, 10, 11: bare string, URL kept, bare list of four planes
    assert s[8].locations == (os.path.join(root, "image_8.png"),)
    assert s[9].locations == ("https://example.org/image_9.png",)
    assert len(s[10].locations) == 4
    assert list(ds.splits) == ["training", "validation", "test"]
    assert ds.splits["training"].tolist() == [0, 1]
    # images 4..10 are in no split: a warning, not an error
    assert any("in no split" in w for w in ds.warnings)


def test_yaml_12_scalars_stay_strings_like_yaml_cpp(tmp_path):
    p = write(tmp_path, """\
        classes: [no, on, yes, off, 'y']
        images:
          - {location: a.png, label: no}
          - {location: b.png, label: [on, off]}
          - {location: c.png, label: '2'}
          - {location: d.png, label: 2020-01-01.png}
        split: {test: [0, 1, 2, 3]}
        """)
    ds = load_dataset(p)
    assert ds.classes == ["no", "on", "yes", "off", "y"]
    assert ds.sample(0).label == (0,)
    assert ds.sample(1).label == (1, 3)
    assert ds.sample(2).label == (2,)  # a numeric string is a class index, as in ECVL's FindLabel
    assert ds.sample(3).label_path.endswith("2020-01-01.png")  # no date parsing


def test_misspelt_class_becomes_mask_path_as_in_ecvl(tmp_path):
    p = write(tmp_path, """\
        classes: [cat, dog]
        images: [{location: a.png, label: [cat, dgo]}]
        """)
    s = load_dataset(p).sample(0)
    assert s.label is None and s.label_path.endswith("dgo")


def test_mask_resolves_against_yaml_folder_even_with_absolute_location(tmp_path):
    # ECVL would leave this mask relative to the working directory; we resolve it (documented).
    p = write(tmp_path, """\
        images: [{location: /abs/img.png, label: gt/m.png}]
        split: {test: [0]}
        """)
    assert load_dataset(p).sample(0).label_path == str(tmp_path / "gt/m.png")


def test_multi_plane_mask_resolved_once(tmp_path):
    p = write(tmp_path, """\
        images: [{location: [a.png, b.png, c.png], label: gt.png}]
        """)
    assert load_dataset(p).sample(0).label_path == str(tmp_path / "gt.png")


def test_directive_and_bom_and_any_split_names(tmp_path):
    p = tmp_path / "x.yml"
    p.write_bytes("\ufeff%YAML:1.2\n---\nimages: [a.png, b.png]\nsplit:\n  fold-A: [1]\n  fold-B: [0]\n".encode())
    ds = load_dataset(str(p))
    assert list(ds.splits) == ["fold-A", "fold-B"]


@pytest.mark.parametrize(
    ("text", "needle"),
    [
        ("name: x\n", "missing 'images'"),
        ("images: []\n", "'images' must be a non-empty list"),
        ("images: a.png\n", "'images' must be a non-empty list"),
        ("- a\n- b\n", "expected a mapping"),
        ("images: [a.png]\nsplit: {test: [1]}\n", "split 'test'[0]: index 1 is out of range"),
        ("images: [a.png]\nsplit: {test: [-1]}\n", "index -1 is out of range"),
        ("images: [a.png]\nsplit: {test: [0.5]}\n", "split 'test'[0]: expected an integer image index, got 0.5"),
        ("images: [a.png]\nsplit: {test: ['0']}\n", "expected an integer image index, got '0'"),
        ("images: [a.png]\nsplit: {test: [true]}\n", "expected an integer image index, got True"),
        ("images: [a.png, b.png]\nsplit: {test: [1, 0, 1]}\n", "image index 1 is listed 2 times"),
        ("images: [a.png, b.png]\nsplit: {training: [0, 1], test: [1]}\n", "image 1 is also in split 'training'"),
        ("images: [a.png]\nsplit: [0]\n", "'split' must be a mapping"),
        ("images: [a.png]\nsplit: {test: 0}\n", "split 'test': expected a list of image indices"),
        ("images: [{label: x.png}]\n", "images[0]: missing 'location'"),
        ("images: [{location: []}]\n", "images[0].location: expected a path or a non-empty list"),
        ("images: [{location: a.png, label: {x: 1}}]\n", "images[0].label: expected a class name"),
        ("features: [f]\nimages: [{location: a.png, values: {g: 1}}]\n", "unknown feature 'g'"),
        ("classes: {a: 1}\nimages: [a.png]\n", "'classes' must be a list of names"),
        ("images: [a.png\n", "not valid YAML"),
    ],
)
def test_validation_errors_name_file_field_and_expectation(tmp_path, text, needle):
    p = write(tmp_path, text)
    with pytest.raises(DatasetError) as err:
        load_dataset(p)
    assert needle in str(err.value)
    assert str(p) in str(err.value)


def test_missing_file_and_not_utf8(tmp_path):
    with pytest.raises(DatasetError, match="does not exist"):
        load_dataset(str(tmp_path / "nope.yml"))
    bad = tmp_path / "bin.yml"
    bad.write_bytes(b"\xff\xfe\x00garbage")
    with pytest.raises(DatasetError, match="not UTF-8"):
        load_dataset(str(bad))


def test_overlap_allowed_scores_each_image_once_in_first_split(tmp_path):
    p = write(tmp_path, "images: [a, b, c]\nsplit: {validation: [0, 1], test: [1, 2]}\n")
    ds = load_dataset(p, allow_overlap=True)
    assert any("also in split 'validation'" in w for w in ds.warnings)
    sel = selected_items(ds, select_splits(ds, ["all"]))
    assert sel["validation"].tolist() == [0, 1] and sel["test"].tolist() == [2]
    only_test = selected_items(ds, select_splits(ds, ["test"]))
    assert only_test["test"].tolist() == [1, 2]


def test_warnings_for_empty_split_and_unassigned_images(tmp_path):
    p = write(tmp_path, "images: [a, b, c]\nsplit: {training: [0], validation: [], test:}\n")
    ds = load_dataset(p)
    assert any("split 'validation' is empty" in w for w in ds.warnings)
    assert any("split 'test' is empty" in w for w in ds.warnings)
    assert any("2 image(s) are in no split" in w for w in ds.warnings)


def test_unknown_split_lists_those_that_exist(tmp_path):
    p = write(tmp_path, "images: [a, b]\nsplit: {training: [0], validation: [1]}\n")
    ds = load_dataset(p)
    with pytest.raises(DatasetError, match="split 'test' does not exist; the dataset has: training, validation"):
        select_splits(ds, ["test"])
    assert select_splits(ds, ["validation,training"]) == ["training", "validation"]
    assert select_splits(ds, ["all"]) == ["training", "validation"]


def test_no_split_mapping_means_all_images_under_all(tmp_path):
    ds = load_dataset(write(tmp_path, "images: [a, b]\n"))
    assert select_splits(ds, ["all"]) == ["all"]
    assert np.array_equal(ds.splits["all"], [0, 1])
    with pytest.raises(DatasetError, match="no 'split' mapping"):
        select_splits(ds, ["test"])


def test_yaml_is_loaded_without_object_construction(tmp_path):
    marker = tmp_path / "pwned"
    p = write(tmp_path, f"images: !!python/object/apply:os.system ['touch {marker}']\n")
    ds = load_dataset(p)  # the tag is ignored: the value is plain data, a path that is never run
    assert not marker.exists()
    assert ds.entries == [f"touch {marker}"]


def _items_via_sample(ds, parts):
    return [(i, split, ds.sample(i).locations, ds.sample(i).label_path) for split, idx in parts.items() for i in idx]


def test_work_list_matches_sample_for_plain_and_general_datasets(tmp_path, ecvl_example):
    plain = load_dataset(write(tmp_path, """\
        images:
          - {location: a/x.jpg, label: gt/x.png}
          - {location: b.jpg}
          - {location: c.jpg, label: gt/c.png}
        split: {training: [0], test: [2, 1]}
        """))
    assert plain.plain
    general = load_dataset(ecvl_example)
    assert not general.plain
    for ds, parts in ((plain, {"test": [2, 1], "training": [0]}), (general, {"training": [1, 0], "test": [3]})):
        wl = ds.work_list(parts)
        got = [(w.index, w.split, w.locations, w.label_path) for w in wl]
        assert got == _items_via_sample(ds, parts)
        pieces = wl.chunks(2)
        assert [len(p) for p in pieces] == [2, 1]
        assert [(w.index, w.split) for p in pieces for w in p] == [(g[0], g[1]) for g in got]


@pytest.mark.parametrize("label", ["/abs/m.png", "3", "7th.png", "cat", "http://x/m.png"])
def test_work_list_general_rules_when_any_entry_is_not_plain(tmp_path, label):
    ds = load_dataset(write(tmp_path, f"""\
        classes: [cat]
        images:
          - {{location: a.jpg, label: gt.png}}
          - {{location: b.jpg, label: "{label}"}}
        """))
    assert not ds.plain
    parts = {"all": [0, 1]}
    assert [(w.index, w.split, w.locations, w.label_path) for w in ds.work_list(parts)] == _items_via_sample(ds, parts)
