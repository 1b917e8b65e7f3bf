"""Preprocessing as ECVL does it, per-image faults, batching without a dropped tail, and the metrics."""

from __future__ import annotations

import cv2
import numpy as np
import pytest

from mpi_infer.data.worklist import WorkItem
from mpi_infer.loaders.opencv import iter_batches, load_item, to_tensor
from mpi_infer.profiles import get_profile
from mpi_infer.tasks.segmentation import aggregate, confusion, iou_dice, summarise

PROFILE = get_profile("segnet-192", size=(32, 32))


def png(path, array) -> str:
    assert cv2.imwrite(str(path), array)
    return str(path)


def item(img, mask=None, index=0) -> WorkItem:
    return WorkItem(index, "test", (str(img),), str(mask) if mask else None)


def test_rgb_order_uint8_resize_then_scale(tmp_path):
    bgr = np.zeros((40, 60, 3), np.uint8)
    bgr[..., 2] = 200  # red in OpenCV's BGR
    bgr[..., 0] = 10
    loaded = load_item(item(png(tmp_path / "a.png", bgr)), PROFILE)
    assert loaded.status == "unscored" and loaded.original_hw == (40, 60)
    x = to_tensor([loaded.image], PROFILE)
    assert x.shape == (1, 3, 32, 32) and x.dtype == np.float32
    assert np.allclose(x[0, 0], 200 / 255) and np.allclose(x[0, 2], 10 / 255)  # channel 0 is R
    # resized on uint8: every value is k/255
    assert np.allclose(np.rint(x * 255) / 255, x)


def test_mean_std_after_division():
    prof = get_profile("unet-224", size=(4, 4))
    img = np.full((4, 4, 3), 255, np.uint8)
    x = to_tensor([img], prof)
    assert np.allclose(x[0, :, 0, 0], (1 - np.array(prof.mean)) / np.array(prof.std), atol=1e-6)


def test_cubic_profile_uses_cubic(tmp_path):
    rng = np.random.default_rng(0)
    img = rng.integers(0, 256, (50, 70, 3), dtype=np.uint8)
    p = png(tmp_path / "r.png", img)
    prof = get_profile("unet-224", size=(32, 32))
    got = load_item(item(p), prof).image
    want = cv2.resize(cv2.cvtColor(img, cv2.COLOR_BGR2RGB), (32, 32), interpolation=cv2.INTER_CUBIC)
    assert np.array_equal(got, want)


def test_mask_nearest_and_scored(tmp_path):
    img = np.full((40, 60, 3), 128, np.uint8)
    mask = np.zeros((40, 60), np.uint8)
    mask[10:30, 20:50] = 255
    loaded = load_item(item(png(tmp_path / "i.png", img), png(tmp_path / "m.png", mask)), PROFILE)
    assert loaded.status == "ok"
    assert set(np.unique(loaded.mask)) == {0, 255}


@pytest.mark.parametrize(
    ("case", "status", "needle"),
    [
        ("missing", "failed", "image file not found"),
        ("garbage", "failed", "cannot be decoded"),
        ("mask_size", "failed", "mask size 30x20 differs from image size 60x40"),
        ("mask_01", "failed", "0/1 label image"),
        ("mask_soft", "converted", "value(s) other than 0 and 255"),
        ("grey", "converted", "image is grey; replicated to RGB"),
        ("rgba", "converted", "alpha channel"),
        ("deep", "converted", "16-bit"),
        ("mask_colour", "converted", "mask is colour"),
        ("mask_missing", "failed", "mask file not found"),
    ],
)
def test_per_image_faults(tmp_path, case, status, needle):
    img = np.full((40, 60, 3), 100, np.uint8)
    mask = np.zeros((40, 60), np.uint8)
    mask[5:20, 5:20] = 255
    ip, mp = tmp_path / "i.png", tmp_path / "m.png"
    png(ip, img)
    png(mp, mask)
    if case == "missing":
        ip = tmp_path / "nope.png"
    elif case == "garbage":
        ip.write_bytes(b"not an image at all")
    elif case == "mask_size":
        png(mp, np.zeros((20, 30), np.uint8))
    elif case == "mask_01":
        png(mp, (mask > 0).astype(np.uint8))
    elif case == "mask_soft":
        png(mp, cv2.GaussianBlur(mask, (5, 5), 2))
    elif case == "grey":
        png(ip, img[..., 0])
    elif case == "rgba":
        png(ip, np.dstack([img, np.full((40, 60), 255, np.uint8)]))
    elif case == "deep":
        png(ip, img.astype(np.uint16) * 257)
    elif case == "mask_colour":
        png(mp, np.dstack([mask] * 3))
    elif case == "mask_missing":
        mp = tmp_path / "gone.png"
    loaded = load_item(item(ip, mp), PROFILE)
    assert loaded.status == status
    assert needle in "; ".join(loaded.notes)
    if status == "converted":
        assert loaded.image.shape == (32, 32, 3) and loaded.mask is not None


def test_16bit_converted_like_opencv_anycolor(tmp_path):
    img16 = (np.arange(40 * 60 * 3).reshape(40, 60, 3) * 37 % 65536).astype(np.uint16)
    p = png(tmp_path / "d.png", img16)
    loaded = load_item(item(p), get_profile("segnet-192", size=(40, 60), interpolation="nearest"))
    want = cv2.cvtColor(cv2.imread(p, cv2.IMREAD_ANYCOLOR), cv2.COLOR_BGR2RGB)
    assert np.array_equal(loaded.image, want)


def test_batches_keep_the_short_tail_and_skip_failed_rows(tmp_path):
    img = np.full((20, 20, 3), 50, np.uint8)
    good = png(tmp_path / "g.png", img)
    items = [WorkItem(i, "test", (good if i != 3 else str(tmp_path / "missing.png"),), None) for i in range(11)]
    batches = list(iter_batches(items, PROFILE, batch_size=4, threads=3))
    assert [len(b.items) for b in batches] == [4, 4, 3]
    assert [it.item.index for b in batches for it in b.items] == list(range(11))
    assert batches[0].rows == [0, 1, 2] and batches[0].x.shape[0] == 3


def test_iou_dice_upstream_definitions():
    prob = np.zeros((3, 4, 4), np.float32)
    mask = np.zeros((3, 4, 4), np.uint8)
    prob[0, :2] = 0.9  # 8 predicted
    mask[0, 1:3] = 255  # 8 true, 4 overlap
    mask[2, 0, 0] = 255  # image 1: both empty; image 2: missed one pixel
    tp, fp, fn = confusion(prob, mask, 0.5)
    assert tp.tolist() == [4, 0, 0] and fp.tolist() == [4, 0, 0] and fn.tolist() == [4, 0, 1]
    iou, dice = iou_dice(tp, fp, fn)
    assert iou[0] == pytest.approx((4 + 1e-6) / (12 + 1e-6), abs=0)
    assert dice[0] == pytest.approx((8 + 1e-6) / (16 + 1e-6), abs=0)
    assert iou[1] == 1.0 and dice[1] == 1.0  # both empty: 1.0 upstream
    assert iou[2] < 1e-5


def test_threshold_is_inclusive_for_prediction_and_mask():
    prob = np.full((1, 1, 2), 0.5, np.float32)
    mask = np.array([[[128, 127]]], np.uint8)  # 128/255 >= 0.5, 127/255 < 0.5
    tp, fp, fn = confusion(prob, mask, 0.5)
    assert (tp[0], fp[0], fn[0]) == (1, 1, 0)


def test_aggregate_from_records_not_rank_means():
    recs = [
        {"split": "a", "status": "ok", "iou": 1.0, "dice": 1.0, "tp": 100, "fp": 0, "fn": 0},
        {"split": "a", "status": "ok", "iou": 0.0, "dice": 0.0, "tp": 0, "fp": 1, "fn": 0},
        {"split": "b", "status": "unscored", "iou": None, "dice": None, "tp": None, "fp": None, "fn": None},
        {"split": "b", "status": "failed", "iou": None, "dice": None, "tp": None, "fp": None, "fn": None},
        {"split": "b", "status": "converted", "iou": 0.5, "dice": 0.6, "tp": 1, "fp": 1, "fn": 0},
    ]
    s = summarise(recs, ["a", "b"])
    assert s["images"] == {"selected": 5, "scored": 3, "unscored": 1, "failed": 1, "converted": 1}
    assert s["metrics"]["mean_iou"] == pytest.approx(1.5 / 3)
    assert s["metrics"]["global_iou"] == pytest.approx((101 + 1e-6) / (103 + 1e-6))
    assert s["per_split"]["a"]["metrics"]["mean_dice"] == 0.5
    assert aggregate([])["metrics"]["mean_iou"] is None


def test_record_table_round_trip_through_descriptor_index():
    from mpi_infer.data.worklist import WorkList
    from mpi_infer.mpi.gather import DescriptorIndex, RecordTable

    wl_a = WorkList("/root/", [5, 1], [("test", 1), ("training", 1)], ["a.jpg", "b.jpg"], ["a.png", None])
    wl_b = WorkList("", [3], [("test", 1)], [("/x/r.png", "/x/g.png", "/x/b.png")], ["/x/m.png"])
    recs = [
        {"index": 5, "status": "ok", "iou": 0.25, "dice": 0.4, "tp": 1, "fp": 2, "fn": 1, "tn": 9,
         "curve": list(range(57)), "error": ""},
        {"index": 1, "status": "unscored", "iou": None, "dice": None, "tp": None, "fp": None, "fn": None,
         "error": ""},
        {"index": 3, "status": "failed", "iou": None, "dice": None, "tp": None, "fp": None, "fn": None,
         "error": "image file not found: /x/r.png"},
    ]
    table = RecordTable(rank=2)
    table.extend(recs)
    assert len(table) == 3
    import pickle

    back = pickle.loads(pickle.dumps(table)).to_records(DescriptorIndex([wl_a, None, wl_b]))
    assert back[0] == {"index": 5, "split": "test", "location": "/root/a.jpg", "label": "/root/a.png", "rank": 2,
                       "iou": 0.25, "dice": 0.4, "tp": 1, "fp": 2, "fn": 1, "tn": 9, "curve": list(range(57)),
                       "hd95": None, "assd": None, "nsd": None, "status": "ok", "error": ""}
    assert back[1]["split"] == "training" and back[1]["label"] == "" and back[1]["iou"] is None
    assert back[2]["location"] == "/x/r.png;/x/g.png;/x/b.png" and back[2]["error"].startswith("image file")
    with pytest.raises(KeyError):
        DescriptorIndex([wl_a]).describe(3)


def test_onnx_engine_refuses_logits_and_wrong_shapes_naming_the_option(tmp_path):
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    from mpi_infer.engines.onnx import OnnxEngine
    from mpi_infer.errors import ModelError
    from mpi_infer.tasks.output import OutputSpec
    from mpi_infer.tasks.segmentation import SegmentationHead

    def model(path, out_channels, sigmoid, size=32):
        w = numpy_helper.from_array(np.full((out_channels, 3, 1, 1), -1.0, np.float32), "w")
        nodes = [helper.make_node("Conv", ["input", "w"], ["c"])]
        nodes.append(helper.make_node("Sigmoid", ["c"], ["output"]) if sigmoid else
                     helper.make_node("Sub", ["c", "c"], ["z"]))
        if not sigmoid:
            nodes.append(helper.make_node("Sub", ["z", "one"], ["output"]))
        inits = [w] + ([] if sigmoid else [numpy_helper.from_array(np.array(1.0, np.float32), "one")])
        graph = helper.make_graph(
            nodes, "m", [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["batch", 3, size, size])],
            [helper.make_tensor_value_info("output", TensorProto.FLOAT, None)], inits)
        onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)]), str(path))
        return str(path)

    prof = get_profile("segnet-192", size=(32, 32))
    head = SegmentationHead(OutputSpec(), prof)
    assert OnnxEngine(model(tmp_path / "ok.onnx", 1, True), prof, head, threads=1).predict(
        np.zeros((3, 3, 32, 32), np.float32)).shape == (3, 32, 32)
    with pytest.raises(ModelError, match="expected probabilities in \\[0, 1\\]; it looks like logits: add "
                                         "--activation sigmoid"):
        OnnxEngine(model(tmp_path / "logits.onnx", 1, False), prof, head, threads=1)
    with pytest.raises(ModelError, match="has 3 output channels: say which is the lesion with --class K"):
        OnnxEngine(model(tmp_path / "three.onnx", 3, True), prof, head, threads=1)
    with pytest.raises(ModelError, match="height is 64, but profile"):
        OnnxEngine(model(tmp_path / "big.onnx", 1, True, size=64), prof, head, threads=1)


def test_normalisation_multiplies_by_the_float32_reciprocal_of_255():
    """What the docs say is done: x * float32(1/255) (EDDL's Tensor::div_(255) is mult_(1.0f / 255)), which
    differs from a true float32 division on 126 of the 256 values, by one unit in the last place."""
    from mpi_infer.loaders.opencv import normalise

    values = np.arange(256, dtype=np.float32).reshape(1, 1, 16, 16).repeat(3, axis=1)
    got = normalise(values.copy(), get_profile("segnet-192"))
    assert np.array_equal(got, values * np.float32(1.0 / 255.0))
    assert np.count_nonzero(got[0, 0] != values[0, 0] / np.float32(255.0)) == 126


def mask16(path, value) -> str:
    m = np.zeros((40, 60), np.uint16)
    m[10:30, 15:45] = value
    return png(path, m)


def test_a_16_bit_mask_holding_0_255_is_refused_not_scored_as_empty(tmp_path):
    img = png(tmp_path / "i.png", np.full((40, 60, 3), 120, np.uint8))
    loaded = load_item(item(img, mask16(tmp_path / "m.png", 255)), PROFILE)
    assert loaded.status == "failed" and loaded.mask is None
    assert "16-bit with values 0..255" in loaded.notes[-1] and "empty mask" in loaded.notes[-1]
    full = load_item(item(img, mask16(tmp_path / "m65535.png", 65535)), PROFILE)  # 0/65535: 0/255 after / 256
    assert full.status == "converted" and set(np.unique(full.mask)) == {0, 255}
    assert "16-bit; converted to 8-bit as ECVL does (value / 256)" in full.notes[0]


def exif_jpeg(path, array, orientation: int) -> str:
    from PIL import Image

    exif = Image.Exif()
    exif[0x0112] = orientation
    Image.fromarray(array).save(path, quality=95, exif=exif)
    return str(path)


def test_an_exif_rotated_jpeg_whose_mask_is_in_stored_orientation_says_why(tmp_path):
    """OpenCV's imread (so ECVL's reader) applies the EXIF rotation: the image decodes 40x60 from a stored 60x40."""
    img = exif_jpeg(tmp_path / "i.jpg", np.full((40, 60, 3), 120, np.uint8), 6)
    stored = png(tmp_path / "m.png", np.zeros((40, 60), np.uint8))  # 60 wide, 40 high: as stored
    loaded = load_item(item(img, stored), PROFILE)
    assert loaded.status == "failed" and loaded.original_hw == (60, 40)
    assert "after its EXIF Orientation 6 (rotated 90° clockwise) was applied" in loaded.notes[-1]
    assert "matches the image as stored (60x40)" in loaded.notes[-1]
    upright = png(tmp_path / "m2.png", np.zeros((60, 40), np.uint8))
    assert load_item(item(img, upright), PROFILE).status == "ok"


def test_the_ecvl_loaders_precheck_sees_the_exif_rotation_too(tmp_path):
    from mpi_infer.loaders.ecvl import precheck
    from mpi_infer.loaders.imagefiles import ImageFault

    img = exif_jpeg(tmp_path / "i.jpg", np.full((40, 60, 3), 120, np.uint8), 8)
    with pytest.raises(ImageFault, match="EXIF Orientation 8"):
        precheck(item(img, png(tmp_path / "m.png", np.zeros((40, 60), np.uint8))))
    assert precheck(item(img, png(tmp_path / "m2.png", np.zeros((60, 40), np.uint8)))) == []
    with pytest.raises(ImageFault, match="16-bit with values 0..255"):
        precheck(item(img, mask16(tmp_path / "m3.png", 255)))  # found before the size check


def test_mean_dice_does_not_depend_on_the_order_records_arrive_in():
    rng = np.random.default_rng(3)
    records = [{"status": "ok", "iou": float(v), "dice": float(d), "tp": 1, "fp": 0, "fn": 0, "split": "test"}
               for v, d in rng.random((1000, 2))]
    forward, backward = aggregate(records)["metrics"], aggregate(records[::-1])["metrics"]
    assert forward["mean_dice"] == backward["mean_dice"] and forward["mean_iou"] == backward["mean_iou"]


@pytest.mark.parametrize("interp", ["linear", "cubic", "area", "lanczos4", "nearest"])
def test_colour_order_after_the_resize_gives_the_same_pixels(interp, tmp_path):
    """The loader resizes BGR first and swaps to RGB on the small image: the pixels must equal swapping first.
    (Grey is replicated before the resize: OpenCV's one-channel cubic upscale rounds 3 pixels differently.)"""
    from mpi_infer.loaders.opencv import CV_INTERP

    rng = np.random.default_rng(11)
    bgr = cv2.GaussianBlur(rng.integers(0, 256, (301, 457, 3), dtype=np.uint8), (0, 0), 1.0)
    grey = bgr[..., 1].copy()
    colour_file, grey_file = png(tmp_path / "c.png", bgr), png(tmp_path / "g.png", grey)
    for h, w in ((192, 192), (160, 224), (512, 512)):
        profile = get_profile("segnet-192", size=(h, w), interpolation=interp)
        flag = CV_INTERP[interp]
        for path, rgb in ((colour_file, cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)),
                          (grey_file, cv2.cvtColor(grey, cv2.COLOR_GRAY2RGB))):
            loaded = load_item(item(path), profile)
            assert np.array_equal(loaded.image, cv2.resize(rgb, (w, h), interpolation=flag)), (path, h, w)
