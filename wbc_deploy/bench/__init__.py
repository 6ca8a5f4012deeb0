"""Model throughput benchmarks: every backend and precision side by side, against the CPU's FP32 peak.

``run_benchmark(BenchmarkConfig(model="wbcnet", backends=[...], batch_sizes=[...]))`` prepares what each
backend needs (FP32/FP16/INT8 ONNX exports in a cache, a TensorRT engine on GPUs), times every backend at
every batch size on the same input, and returns a :class:`BenchmarkReport` that writes JSON and Markdown.
Importing this package does not import torch, onnxruntime or tensorrt.
"""
from .accuracy import int8_accuracy
from .backends import DEFAULT_BACKENDS, SPECS, BackendSpec, parse_backends, unavailable_reason
from ..converters.int8_cpu import Int8Recipe, batchnorm_to_depthwise_conv, quantize_for_cpu
from .machine import PeakEstimate, cpu_fp32_peak, machine_info
from .ort_settings import OrtSettings, default_settings, sweep, sweep_candidates, tuned_settings
from .report import RESULT_KEYS, SCHEMA, BenchmarkReport, Result, markdown, rich_table, write_json, write_markdown
from .run import BenchmarkConfig, parse_batch_sizes, run_benchmark
from .timing import Timing, measure

__all__ = [
    "DEFAULT_BACKENDS", "RESULT_KEYS", "SCHEMA", "SPECS", "BackendSpec", "BenchmarkConfig", "BenchmarkReport",
    "Int8Recipe", "OrtSettings", "PeakEstimate", "Result", "Timing", "batchnorm_to_depthwise_conv", "cpu_fp32_peak",
    "default_settings", "int8_accuracy", "machine_info", "markdown", "measure", "parse_backends", "parse_batch_sizes",
    "quantize_for_cpu", "rich_table", "run_benchmark", "sweep", "sweep_candidates", "tuned_settings",
    "unavailable_reason", "write_json", "write_markdown",
]
