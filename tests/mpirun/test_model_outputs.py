"""ONNX models as people bring them: one channel of logits, 2 and 3 class channels, training-mode exports.

The models are written here with onnx.helper. Their logits are a scaled colour difference, offset so that no
pixel sits on the decision boundary (no score can flip on a last-bit difference between two float paths).
Expected per-image scores are computed here from the model's raw output with numpy."""

from __future__ import annotations

import csv
import json
import os

import cv2
import numpy as np
import onnx
import onnxruntime as ort
import pytest
from conftest import mpirun
from onnx import TensorProto, helper, numpy_helper

from mpi_infer.data.dataset import load_dataset
from mpi_infer.stages.stack import pyecvl_available

pytestmark = pytest.mark.mpi
SCALE = 20.0 / 255.0  # logit per grey level of (R - G); +0.5 level keeps every logit off zero


def class_logits(channels: int) -> np.ndarray:
    """A 1x1 conv's weights [C, 3, 1, 1] and biases: channel c's logit = s*((c+1)(R - G) + 0.5 + c)."""
    w = np.zeros((channels, 3, 1, 1), np.float32)
    b = np.zeros(channels, np.float32)
    for c in range(channels):
        w[c, 0, 0, 0], w[c, 1, 0, 0] = SCALE * 255 * (c + 1), -SCALE * 255 * (c + 1)
        b[c] = SCALE * (0.5 + c * 0.37)
    return w, b


def write_model(path: str, channels: int, *, final: str | None = None, training: bool = False,
                use_stats: bool = False, spatial: tuple = ("H", "W")) -> str:
    """input [batch, 3, H, W] -> conv 1x1 -> (training-mode BN, Dropout) -> [final] -> [batch, C, H, W]."""
    w, b = class_logits(channels)
    inits = [numpy_helper.from_array(w, "w"), numpy_helper.from_array(b, "b")]
    nodes = [helper.make_node("Conv", ["input", "w", "b"], ["logits"], name="conv")]
    x, outputs = "logits", []
    if training:
        c = channels
        inits += [numpy_helper.from_array(np.full(c, 2.0, np.float32), "bn_scale"),
                  numpy_helper.from_array(np.full(c, 0.25, np.float32), "bn_bias"),
                  numpy_helper.from_array(np.full(c, 0.1, np.float32), "bn_mean"),
                  numpy_helper.from_array(np.full(c, 4.0, np.float32), "bn_var"),
                  numpy_helper.from_array(np.array(0.5, np.float32), "ratio"),
                  numpy_helper.from_array(np.array(True), "train")]
        nodes.append(helper.make_node("BatchNormalization", [x, "bn_scale", "bn_bias", "bn_mean", "bn_var"],
                                      ["bn", "running_mean", "running_var"], training_mode=1, name="bn"))
        nodes.append(helper.make_node("Dropout", ["bn", "ratio", "train"], ["dropped", "mask"], name="drop"))
        x = "dropped"
        if use_stats:
            outputs.append(helper.make_tensor_value_info("running_mean", TensorProto.FLOAT, [c]))
    if final:
        nodes.append(helper.make_node(final, [x], ["output"], **({"axis": 1} if final == "Softmax" else {})))
        x = "output"
    graph = helper.make_graph(nodes, "m", [helper.make_tensor_value_info("input", TensorProto.FLOAT,
                                                                         ["batch", 3, *spatial])],
                              [helper.make_tensor_value_info(x, TensorProto.FLOAT, None), *outputs], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 15)])
    model.ir_version = 8
    onnx.save(model, path)
    return path


def expected_scores(dataset: str, model: str, activation, cls: int, bn=None) -> dict[int, tuple[float, float]]:
    """Per image: preprocess as ECVL (RGB, linear 192x192, /255), the raw output, the activation, channel cls,
    then IoU/Dice at 0.5 (upstream's definitions)."""
    ds = load_dataset(dataset)
    sess = ort.InferenceSession(model)
    out = {}
    for i in range(len(ds)):
        s = ds.sample(i)
        img = cv2.resize(cv2.cvtColor(cv2.imread(s.locations[0]), cv2.COLOR_BGR2RGB), (192, 192),
                         interpolation=cv2.INTER_LINEAR)
        x = (img.astype(np.float32) / 255.0).transpose(2, 0, 1)[None]
        raw = sess.run(None, {"input": x})[0].astype(np.float64)
        if bn is not None:  # inference semantics: running statistics, no dropout
            scale, bias, mean, var = bn
            raw = (raw - mean) / np.sqrt(var + 1e-5) * scale + bias
        prob = activation(raw)[0, cls]
        gt = cv2.resize(cv2.imread(s.label_path, cv2.IMREAD_GRAYSCALE), (192, 192),
                        interpolation=cv2.INTER_NEAREST) >= 128
        p = prob >= 0.5
        inter, union = float((p & gt).sum()), float((p | gt).sum())
        out[i] = ((inter + 1e-6) / (union + 1e-6), (2 * inter + 1e-6) / (p.sum() + gt.sum() + 1e-6))
    return out


def sigmoid(z):
    return 1 / (1 + np.exp(-z))


def softmax(z):
    e = np.exp(z - z.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


def rows(out: str) -> dict[int, dict[str, str]]:
    with open(os.path.join(out, "per_image.csv"), newline="") as fh:
        return {int(r["index"]): r for r in csv.DictReader(fh)}


def run_matches(dataset: str, model: str, out: str, want: dict, *flags: str) -> dict:
    """Run the model at N=2 over every split; each image's Dice must equal ``want``'s; returns summary.json."""
    proc = mpirun(2, "run", "--dataset", dataset, "--model", model, "--out", out, "--split", "all", *flags)
    assert proc.returncode == 0, proc.stderr
    for i, r in rows(out).items():
        assert abs(float(r["dice"]) - want[i][1]) <= 1e-6
    with open(os.path.join(out, "summary.json")) as fh:
        return json.load(fh)


LOADERS = ["opencv", "ecvl"] if pyecvl_available() else ["opencv"]
CASES = {  # name: (channels, final node in the graph, flags, activation, foreground channel)
    "logits": (1, None, ["--activation", "sigmoid"], sigmoid, 0),
    "two-class": (2, None, ["--activation", "softmax"], softmax, 1),
    "three-class": (3, None, ["--activation", "softmax", "--class", "2"], softmax, 2),
    "three-class-softmaxed": (3, "Softmax", ["--class", "0"], lambda z: z, 0),
}


@pytest.mark.parametrize("case", list(CASES))
def test_outputs_score_as_computed_from_the_raw_output(case, synth_small, tmp_path):
    channels, final, flags, activation, cls = CASES[case]
    model = write_model(str(tmp_path / f"{case}.onnx"), channels, final=final)
    raw_model = model if final is None else write_model(str(tmp_path / "raw.onnx"), channels)
    want = expected_scores(synth_small, raw_model, activation if final is None else softmax, cls)
    runs = {}
    for loader in LOADERS:
        for n in (1, 2, 3):
            out = str(tmp_path / f"{loader}-{n}")
            proc = mpirun(n, "run", "--dataset", synth_small, "--model", model, "--out", out, "--split", "all",
                          "--loader", loader, "--batch-size", "4", *flags)
            assert proc.returncode == 0, proc.stderr
            runs[(loader, n)] = rows(out)
    for key, got in runs.items():
        assert sorted(got) == list(range(13))
        for i, r in got.items():
            assert abs(float(r["iou"]) - want[i][0]) <= 1e-6, (key, i, r["iou"], want[i])
            assert abs(float(r["dice"]) - want[i][1]) <= 1e-6
    with open(os.path.join(out, "summary.json")) as fh:
        s = json.load(fh)
    expected_activation = flags[flags.index("--activation") + 1] if "--activation" in flags else "none"
    assert s["output"] == {"activation": expected_activation,
                           "class": int(flags[flags.index("--class") + 1]) if "--class" in flags else None,
                           "name": "output" if final else "logits"}  # the tensor scored, recorded


@pytest.mark.parametrize("case,flags,needle", [
    ("logits", [], "it looks like logits: add --activation sigmoid"),
    ("two-class", [], "it looks like 2 class logits: add --activation softmax"),
    ("three-class", ["--activation", "softmax"], "has 3 output channels: say which is the lesion with --class K"),
    ("three-class", ["--activation", "softmax", "--class", "3"], "--class 3: "),
    ("logits", ["--activation", "softmax"], "--activation softmax needs a C-channel output"),
])
def test_outputs_that_do_not_fit_name_the_option(case, flags, needle, synth_small, tmp_path):
    channels, final, _, _, _ = CASES[case]
    model = write_model(str(tmp_path / "m.onnx"), channels, final=final)
    proc = mpirun(2, "run", "--dataset", synth_small, "--model", model, "--out", str(tmp_path / "o"), *flags)
    assert proc.returncode == 11, proc.stderr
    assert needle in proc.stderr and proc.stderr.count(needle) == 1


def test_activation_is_refused_for_a_bin(synth_small, tmp_path):
    proc = mpirun(1, "run", "--dataset", synth_small, "--model", "demo", "--out", str(tmp_path / "o"),
                  "--activation", "sigmoid")
    assert proc.returncode == 2 and "ends in its own Sigmoid" in proc.stderr


def test_training_mode_export_runs_with_inference_semantics(synth_small, tmp_path):
    model = write_model(str(tmp_path / "train.onnx"), 2, training=True)
    raw_model = write_model(str(tmp_path / "raw.onnx"), 2)
    bn = tuple(np.array(v).reshape(1, 2, 1, 1) for v in ((2.0, 2.0), (0.25, 0.25), (0.1, 0.1), (4.0, 4.0)))
    want = expected_scores(synth_small, raw_model, softmax, 1, bn=bn)
    changes = run_matches(synth_small, model, str(tmp_path / "o"), want, "--activation", "softmax")["backend"][
        "graph_changes"]
    assert changes == ["BatchNormalization 'bn': training mode -> running statistics",
                       "Dropout 'drop': training mode -> identity"]


def test_training_mode_export_whose_statistics_are_used_is_refused(synth_small, tmp_path):
    model = write_model(str(tmp_path / "train.onnx"), 2, training=True, use_stats=True)
    proc = mpirun(1, "run", "--dataset", synth_small, "--model", model, "--out", str(tmp_path / "o"),
                  "--activation", "softmax")
    assert proc.returncode == 11, proc.stderr
    assert "exported in training mode and its running statistics (running_mean" in proc.stderr
    assert "model.eval()" in proc.stderr


def test_fixed_spatial_size_that_differs_from_the_profile_is_refused(synth_small, tmp_path):
    model = write_model(str(tmp_path / "fixed.onnx"), 1, final="Sigmoid", spatial=(224, 224))
    proc = mpirun(1, "run", "--dataset", synth_small, "--model", model, "--out", str(tmp_path / "o"))
    assert proc.returncode == 11 and "height is 224, but profile segnet-192 resizes to 192" in proc.stderr


def save(graph_nodes, inputs, outputs, inits, path, opset=15) -> str:
    model = helper.make_model(helper.make_graph(graph_nodes, "m", inputs, outputs, inits),
                              opset_imports=[helper.make_opsetid("", opset)])
    model.ir_version = 8
    onnx.save(model, path)
    return path


def conv_inits(channels: int) -> list:
    w, b = class_logits(channels)
    return [numpy_helper.from_array(w, "w"), numpy_helper.from_array(b, "b")]


NCHW = helper.make_tensor_value_info("input", TensorProto.FLOAT, ["batch", 3, "H", "W"])


def test_a_multi_output_model_is_refused_until_output_names_the_tensor(synth_small, tmp_path):
    """Deep-supervision style: 'aux' (logits) first, 'prob' (sigmoid) second: never scored silently on the first."""
    nodes = [helper.make_node("Conv", ["input", "w", "b"], ["aux"]), helper.make_node("Sigmoid", ["aux"], ["prob"])]
    model = save(nodes,
                 [NCHW], [helper.make_tensor_value_info("aux", TensorProto.FLOAT, None),
                          helper.make_tensor_value_info("prob", TensorProto.FLOAT, None)],
                 conv_inits(1), str(tmp_path / "two.onnx"))
    proc = mpirun(1, "run", "--dataset", synth_small, "--model", model, "--out", str(tmp_path / "o"))
    assert proc.returncode == 11 and "has 2 outputs ('aux'" in proc.stderr and "--output NAME" in proc.stderr
    proc = mpirun(1, "run", "--dataset", synth_small, "--model", model, "--out", str(tmp_path / "o"),
                  "--output", "nope")
    assert proc.returncode == 11 and "--output 'nope' is not an output" in proc.stderr
    want = expected_scores(synth_small, write_model(str(tmp_path / "one.onnx"), 1), sigmoid, 0)
    s = run_matches(synth_small, model, str(tmp_path / "o"), want, "--output", "prob")
    assert s["output"]["name"] == "prob" and s["backend"]["output_name"] == "prob"


def test_dropout_fed_its_training_mode_by_a_constant_node_runs_with_inference_semantics(synth_small, tmp_path):
    """torch 2.x's exporter feeds Dropout's training_mode from a Constant node, not an initialiser."""
    nodes = [helper.make_node("Conv", ["input", "w", "b"], ["logits"]),
             helper.make_node("Constant", [], ["ratio"], value=numpy_helper.from_array(np.array(0.5, np.float32))),
             helper.make_node("Constant", [], ["train"], value=numpy_helper.from_array(np.array(True))),
             helper.make_node("Dropout", ["logits", "ratio", "train"], ["dropped", "mask"], name="drop"),
             helper.make_node("Sigmoid", ["dropped"], ["output"])]
    model = save(nodes, [NCHW], [helper.make_tensor_value_info("output", TensorProto.FLOAT, None)], conv_inits(1),
                 str(tmp_path / "drop.onnx"), opset=17)
    want = expected_scores(synth_small, write_model(str(tmp_path / "one.onnx"), 1), sigmoid, 0)
    s = run_matches(synth_small, model, str(tmp_path / "o"), want)
    assert s["backend"]["graph_changes"] == ["Dropout 'drop': training mode -> identity"]


def test_external_data_weights_are_part_of_the_model_identity(synth_small, tmp_path):
    """torch's new exporter writes <name>.onnx.data: swapping it must change model_sha256 and stop --resume."""
    from mpi_infer.models.files import file_sha256, model_sha256

    folder = tmp_path / "m"
    folder.mkdir()
    model = onnx.load(write_model(str(tmp_path / "plain.onnx"), 1, final="Sigmoid"))
    path = str(folder / "ext.onnx")
    onnx.save_model(model, path, save_as_external_data=True, all_tensors_to_one_file=True,
                    location="ext.onnx.data", size_threshold=0)
    before = model_sha256(path)
    assert before != file_sha256(path)
    out = str(tmp_path / "o")
    args = ["run", "--dataset", synth_small, "--model", path, "--out", out, "--resume"]
    assert mpirun(2, *args).returncode == 0
    data = folder / "ext.onnx.data"
    raw = bytearray(data.read_bytes())
    raw[0] ^= 0x40  # other weights, same file names
    data.write_bytes(bytes(raw))
    assert model_sha256(path) != before and file_sha256(path) == file_sha256(path)
    proc = mpirun(2, *args)
    assert proc.returncode == 12 and "different model_sha256" in proc.stderr
    data.unlink()
    proc = mpirun(1, "run", "--dataset", synth_small, "--model", path, "--out", str(tmp_path / "o2"))
    assert proc.returncode == 11 and "external data file 'ext.onnx.data' is missing" in proc.stderr


def test_nhwc_input_is_refused_saying_channels_last(synth_small, tmp_path):
    nhwc = helper.make_tensor_value_info("input", TensorProto.FLOAT, ["batch", 192, 192, 3])
    model = save([helper.make_node("Transpose", ["input"], ["x"], perm=[0, 3, 1, 2]),
                  helper.make_node("Conv", ["x", "w", "b"], ["l"]), helper.make_node("Sigmoid", ["l"], ["output"])],
                 [nhwc], [helper.make_tensor_value_info("output", TensorProto.FLOAT, None)], conv_inits(1),
                 str(tmp_path / "nhwc.onnx"))
    proc = mpirun(1, "run", "--dataset", synth_small, "--model", model, "--out", str(tmp_path / "o"))
    assert proc.returncode == 11 and "channels last (NHWC)" in proc.stderr and "takes 192 channels" not in proc.stderr


def test_a_float16_model_is_fed_float16_and_scored(synth_small, tmp_path):
    w, b = class_logits(1)
    half = helper.make_tensor_value_info("input", TensorProto.FLOAT16, ["batch", 3, "H", "W"])
    nodes = [helper.make_node("Conv", ["input", "w", "b"], ["l"]), helper.make_node("Sigmoid", ["l"], ["output"])]
    model = save(nodes, [half], [helper.make_tensor_value_info("output", TensorProto.FLOAT16, None)],
                 [numpy_helper.from_array(w.astype(np.float16), "w"),
                  numpy_helper.from_array(b.astype(np.float16), "b")],
                 str(tmp_path / "half.onnx"))
    out = str(tmp_path / "o")
    proc = mpirun(1, "run", "--dataset", synth_small, "--model", model, "--out", out, "--split", "all")
    assert proc.returncode == 0, proc.stderr
    want = expected_scores(synth_small, write_model(str(tmp_path / "one.onnx"), 1), sigmoid, 0)
    got = rows(out)
    assert np.mean([abs(float(got[i]["dice"]) - want[i][1]) for i in got]) < 0.01  # float16 arithmetic
    with open(os.path.join(out, "summary.json")) as fh:
        assert json.load(fh)["backend"]["input_type"] == "float16"


def test_a_unet_like_model_at_a_size_it_cannot_take_gets_a_hint(synth_small, tmp_path):
    """Pool twice, upsample, concat with the skip: at 90x90 the pooled path comes back 44 wide against 45."""
    scales = numpy_helper.from_array(np.array([1, 1, 2, 2], np.float32), "scales")
    roi = numpy_helper.from_array(np.zeros(0, np.float32), "roi")
    nodes = [helper.make_node("MaxPool", ["input"], ["p1"], kernel_shape=[2, 2], strides=[2, 2]),
             helper.make_node("MaxPool", ["p1"], ["p2"], kernel_shape=[2, 2], strides=[2, 2]),
             helper.make_node("Resize", ["p2", "roi", "scales"], ["u"], mode="nearest"),
             helper.make_node("Concat", ["u", "p1"], ["c"], axis=1),
             helper.make_node("ReduceMean", ["c"], ["r"], axes=[1], keepdims=1),
             helper.make_node("Sigmoid", ["r"], ["output"])]
    model = save(nodes, [NCHW], [helper.make_tensor_value_info("output", TensorProto.FLOAT, None)], [scales, roi],
                 str(tmp_path / "unet.onnx"), opset=13)
    proc = mpirun(1, "run", "--dataset", synth_small, "--model", model, "--out", str(tmp_path / "o"),
                  "--size", "90", "90")
    assert proc.returncode == 11, proc.stderr
    assert "not divisible by 32" in proc.stderr and "multiples of 32" in proc.stderr


def test_sigmoid_on_a_two_channel_output_warns(synth_small, tmp_path):
    model = write_model(str(tmp_path / "two.onnx"), 2)
    out = str(tmp_path / "o")
    proc = mpirun(1, "run", "--dataset", synth_small, "--model", model, "--out", out, "--activation", "sigmoid")
    assert proc.returncode == 0, proc.stderr
    assert "usually meant for --activation softmax" in proc.stderr
    with open(os.path.join(out, "summary.json")) as fh:
        assert any("usually meant for --activation softmax" in w for w in json.load(fh)["warnings"])


def monai_like_exports(folder) -> dict[str, str]:
    """The three export kinds a MONAI user brings: a UNet with the sigmoid inside (one channel of
    probabilities), a SegResNet with the softmax inside (two channels summing to 1) and an AttentionUnet with
    raw logits (one channel)."""
    return {"unet": write_model(str(folder / "unet.onnx"), 1, final="Sigmoid"),
            "segresnet": write_model(str(folder / "segresnet.onnx"), 2, final="Softmax"),
            "attunet": write_model(str(folder / "attunet.onnx"), 1)}


@pytest.mark.parametrize("models,flags,refused", [
    (["unet", "attunet"], ["--activation", "sigmoid"], "unet"),  # the run: a second sigmoid on unet
    (["segresnet", "attunet"], ["--activation", "segresnet=softmax", "--activation", "attunet=sigmoid"],
     "segresnet"),  # a second softmax
    (["unet"], ["--activation", "sigmoid"], "unet"),  # one probability model given --activation by mistake
    (["segresnet"], ["--activation", "softmax"], "segresnet"),
])
def test_an_activation_on_probabilities_is_refused_naming_the_model(models, flags, refused, synth_small, tmp_path):
    files = monai_like_exports(tmp_path)
    given = [a for m in models for a in ("--model", f"{m}={files[m]}")]
    proc = mpirun(2, "run", "--dataset", synth_small, *given, "--out", str(tmp_path / "o"), *flags)
    assert proc.returncode == 11, proc.stderr
    needle = "it is probabilities, and --activation"
    assert needle in proc.stderr and proc.stderr.count(needle) == 1
    line = next(ln for ln in proc.stderr.splitlines() if needle in ln)
    assert f"{refused}.onnx" in line and not os.path.exists(tmp_path / "o" / "summary.json")


def test_each_model_gets_its_own_activation(synth_small, tmp_path):
    """Probabilities, softmax probabilities and logits side by side: only the logits model is activated, and
    every model's per-image Dice equals the one computed here from its raw output."""
    files = monai_like_exports(tmp_path)
    want = {"unet": expected_scores(synth_small, files["unet"], lambda z: z, 0),
            "segresnet": expected_scores(synth_small, files["segresnet"], lambda z: z, 1),
            "attunet": expected_scores(synth_small, files["attunet"], sigmoid, 0)}
    out = str(tmp_path / "o")
    proc = mpirun(2, "run", "--dataset", synth_small, "--out", out, "--split", "all",
                  *[a for m in files for a in ("--model", f"{m}={files[m]}")], "--activation", "attunet=sigmoid")
    assert proc.returncode == 0, proc.stderr
    with open(os.path.join(out, "per_image.csv"), newline="") as fh:
        got = list(csv.DictReader(fh))
    assert len(got) == 3 * 13
    for r in got:
        assert abs(float(r["dice"]) - want[r["model"]][int(r["index"])][1]) <= 1e-6, r
    with open(os.path.join(out, "summary.json")) as fh:
        s = json.load(fh)
    assert {m: s["models"][m]["activation"] for m in files} == {"unet": "none", "segresnet": "none",
                                                                "attunet": "sigmoid"}


@pytest.mark.parametrize("value,says", [
    ("nosuch=sigmoid", "names no model"),
    ("attunet=tanh", "expected none, sigmoid or softmax"),
])
def test_a_per_model_activation_that_names_nothing_is_a_usage_error(value, says, synth_small, tmp_path):
    files = monai_like_exports(tmp_path)
    proc = mpirun(1, "run", "--dataset", synth_small, "--model", f"attunet={files['attunet']}",
                  "--out", str(tmp_path / "o"), "--activation", value)
    assert proc.returncode == 2 and says in proc.stderr, proc.stderr


@pytest.mark.parametrize("where", ["dotdot", "absolute", "symlink"])
def test_external_data_outside_the_models_folder_is_refused_before_a_byte_is_read(where, synth_small, tmp_path):
    """A colleague's model whose external data names a file outside its folder (your ssh key, say) is refused,
    exit 11, naming the location: neither our hash nor ONNX Runtime reads that file."""
    secret = tmp_path / "secret" / "id_rsa"
    secret.parent.mkdir()
    model = onnx.load(write_model(str(tmp_path / "plain.onnx"), 1, final="Sigmoid"))
    folder = tmp_path / "m"
    folder.mkdir()
    onnx.save_model(model, str(folder / "ext.onnx"), save_as_external_data=True, all_tensors_to_one_file=True,
                    location="ext.onnx.data", size_threshold=0)
    os.replace(folder / "ext.onnx.data", secret)  # the weights' bytes now sit in the "secret" file
    location = {"dotdot": "../secret/id_rsa", "absolute": str(secret), "symlink": "link.data"}[where]
    if where == "symlink":
        os.symlink(secret, folder / "link.data")
    m = onnx.load(str(folder / "ext.onnx"), load_external_data=False)
    for t in m.graph.initializer:
        for e in t.external_data:
            if e.key == "location":
                e.value = location
    onnx.save(m, str(folder / "ext.onnx"))
    os.chmod(secret, 0)  # were it opened by anyone running as non-root, the run would fail differently
    proc = mpirun(2, "run", "--dataset", synth_small, "--model", str(folder / "ext.onnx"), "--out",
                  str(tmp_path / "o"))
    assert proc.returncode == 11, proc.stderr
    assert "external data location" in proc.stderr and "refused" in proc.stderr
    assert not os.path.exists(tmp_path / "o")
