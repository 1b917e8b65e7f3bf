"""Model files: hashes, formats and the shipped demo models (files.py), EDDL's .bin layout (eddl_bin.py), the
architectures a .bin can hold (segnet.py, classifiers.py), their conversion to ONNX (convert.py), and several
models in one pass (modelset.py)."""
