"""Converters: PyTorch -> verified ONNX (FP32), FP16 and INT8 ONNX variants, TensorRT engines.

Modules (import the one you need; this package ``__init__`` imports nothing heavy):

* :mod:`.onnx_export`: ``export_onnx`` (softmax folded in, card in the metadata; needs torch);
* :mod:`.onnx_meta`: tensor names, ``write_metadata``, ``read_onnx_card`` (torch-free);
* :mod:`.verify`: ``verify_onnx_against_torch``, ``compare_onnx_models``, ``comparisons_table``;
* :mod:`.quantize`: ``convert_fp16``, ``quantize_int8`` (ONNX Runtime static QDQ, per-channel);
* :mod:`.int8_cpu`: the measured INT8 recipe for x86 CPUs (U8S8, BatchNorm as depthwise conv) over ``quantize_int8``;
* :mod:`.tensorrt_build`: ``plan_build`` and ``build_engine`` (TensorRT 10 or 11 Python API) with its JSON sidecar;
* :mod:`.export`: ``export_model``, the whole ``wbc-deploy export`` job;
* :mod:`.images`: verification/calibration images from a folder or synthetic cells.
"""
