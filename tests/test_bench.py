"""`wbc-deploy benchmark` in CI size: a tiny model, batch sizes 1 and 2, a fraction of a second per point.

Checks the JSON schema, the Markdown table, that unavailable backends are listed with a reason, and
that the figures are positive and consistent with each other. No timing thresholds.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from wbc_deploy.bench import RESULT_KEYS, SCHEMA, BenchmarkConfig, parse_backends, parse_batch_sizes, run_benchmark
from wbc_deploy.bench.backends import unavailable_reason
from wbc_deploy.cli import main
from wbc_deploy.errors import WbcError

BACKENDS = ["ort", "ort-int8", "torch", "trt", "ort-cuda"]
BATCHES = [1, 2]


@pytest.fixture(scope="session")
def bench_run(tmp_path_factory):
    """One CLI benchmark of wbcnet-tiny, shared by the tests below."""
    root = tmp_path_factory.mktemp("bench")
    out, md, cache = root / "results.json", root / "results.md", root / "cache"
    main([
        "benchmark", "--model", "wbcnet-tiny", "--backends", ",".join(BACKENDS), "--batch-sizes", "1,2",
        "--seconds", "0.3", "--warmup", "1", "--min-iters", "2", "--agreement-cells", "6",
        "--cache-dir", str(cache), "--out", str(out), "--markdown", str(md), "--quiet",
    ])
    return json.loads(out.read_text()), md.read_text(), cache


def test_json_schema_and_machine(bench_run):
    data, _md, _cache = bench_run
    assert data["schema"] == SCHEMA
    machine = data["machine"]
    for key in ("cpu_model", "physical_cores", "logical_cpus", "isa_flags", "gpus", "os", "python", "versions",
                "load_avg_1m_start", "load_avg_1m_end", "cpu_fp32_peak"):
        assert key in machine, key
    assert machine["physical_cores"] >= 1 and machine["logical_cpus"] >= machine["physical_cores"]
    for pkg in ("numpy", "onnxruntime", "torch"):
        assert machine["versions"][pkg]
    peak = machine["cpu_fp32_peak"]
    assert peak["gflops"] == pytest.approx(peak["cores"] * peak["ghz"] * peak["flops_per_cycle"], rel=1e-3)
    assert data["model"]["arch"] == "wbcnet-tiny" and data["model"]["gflops_per_cell"] > 0
    # one result per backend and batch size, in the order asked for
    assert [(r["backend"], r["batch_size"]) for r in data["results"]] == [(b, n) for b in BACKENDS for n in BATCHES]
    for r in data["results"]:
        assert set(RESULT_KEYS) <= set(r)


def test_unavailable_backends_are_listed_with_reason(bench_run):
    data, md, _cache = bench_run
    for name in ("trt", "ort-cuda"):
        reason = unavailable_reason(name)
        rows = [r for r in data["results"] if r["backend"] == name]
        assert len(rows) == len(BATCHES)
        if reason is None:  # a GPU machine: it must have run
            assert all(r["status"] == "ok" for r in rows)
        else:
            assert all(r["status"] == reason and r["cells_per_s"] is None for r in rows)
            assert reason in md


def test_numbers_positive_and_consistent(bench_run):
    data, _md, _cache = bench_run
    peak = data["machine"]["cpu_fp32_peak"]["gflops"]
    ok = [r for r in data["results"] if r["status"] == "ok"]
    assert {r["backend"] for r in ok} >= {"ort", "ort-int8", "torch"}
    for r in ok:
        assert r["cells_per_s"] > 0 and r["iterations"] >= 2 and r["warmup"] == 1
        assert 0 < r["latency_ms_p50"] <= r["latency_ms_p90"] <= r["latency_ms_p99"]
        # throughput x mean latency = cells per batch
        assert r["cells_per_s"] * r["latency_ms_mean"] / 1e3 == pytest.approx(r["batch_size"], rel=1e-3)
        assert r["cells_per_s"] * r["measured_s"] == pytest.approx(r["batch_size"] * r["iterations"], rel=1e-3)
        assert r["gflops_per_s"] == pytest.approx(r["cells_per_s"] * r["gflops_per_cell"], rel=1e-3)
        assert r["peak_fraction"] == pytest.approx(r["gflops_per_s"] / peak, rel=1e-2)
        assert 0.0 <= r["top1_agreement_vs_fp32"] <= 1.0
    by = {(r["backend"], r["batch_size"]): r for r in ok}
    for n in BATCHES:
        ratio = by[("ort", n)]["cells_per_s"] / by[("torch", n)]["cells_per_s"]
        assert by[("ort", n)]["speedup_vs_torch"] == pytest.approx(ratio, rel=1e-2)
        # the torch and ONNX Runtime FP32 paths run the same seeded weights: same probabilities
        assert by[("torch", n)]["max_abs_diff_vs_fp32"] < 1e-4
        assert by[("ort", n)]["max_abs_diff_vs_fp32"] < 1e-6
    speedups = {(c["backend"], c["baseline"], c["batch_size"]) for c in data["comparisons"]}
    assert ("ort", "torch", 1) in speedups and ("ort-int8", "ort", 2) in speedups


def test_markdown_table(bench_run):
    data, md, _cache = bench_run
    lines = md.splitlines()
    header = next(i for i, line in enumerate(lines) if line.startswith("| backend |"))
    assert set(lines[header + 1]) <= set("|-: ")
    rows = lines[header + 2 : header + 2 + len(data["results"])]
    assert len(rows) == len(data["results"])
    for r, line in zip(data["results"], rows):
        cells = [c.strip() for c in line.strip("|").split("|")]
        assert cells[0] == r["backend"] and cells[3] == str(r["batch_size"])
        if r["status"] == "ok":
            assert float(cells[4]) == pytest.approx(r["cells_per_s"], abs=0.01)
    assert data["machine"]["cpu_model"] in md and "GFLOP/s" in md


def test_int8_model_keeps_batchnorm_out_of_float(bench_run):
    """The INT8 recipe rewrites DenseNet's stand-alone BNs, so none is left running in float."""
    import onnx

    data, _md, cache = bench_run
    notes = data["artefacts"]["int8"]
    assert notes["batchnorm_rewritten"] > 0 and notes["recipe"]["activation_type"] == "uint8"
    (int8_path,) = Path(data["artefacts"]["cache_dir"]).glob("model.int8-*.onnx")
    ops = {n.op_type for n in onnx.load(str(int8_path)).graph.node}
    assert "BatchNormalization" not in ops and "QuantizeLinear" in ops


def test_onnx_file_as_model(bench_run):
    """An exported .onnx file is benchmarked as given (its card read from the metadata)."""
    data, _md, cache = bench_run
    fp32 = Path(data["artefacts"]["cache_dir"]) / "model.fp32.onnx"
    report = run_benchmark(BenchmarkConfig(model=str(fp32), backends=["ort"], batch_sizes=[2], seconds=0.05,
                                           warmup=0, min_iters=1, agreement_cells=0, cache_dir=cache), quiet=True)
    (r,) = report.results
    assert r.status == "ok" and r.cells_per_s > 0 and report.model["kind"] == "onnx"
    assert r.artefact == str(fp32)


def test_batchnorm_rewrite_is_exact():
    import onnx
    import onnxruntime as ort
    from onnx import TensorProto, helper, numpy_helper

    from wbc_deploy.converters.int8_cpu import batchnorm_to_depthwise_conv

    rng = np.random.default_rng(0)
    c = 6
    inits = [numpy_helper.from_array(a.astype(np.float32), n) for a, n in (
        (rng.normal(size=(c, 3, 3, 3)), "w"), (rng.uniform(0.5, 2, c), "scale"), (rng.normal(size=c), "bias"),
        (rng.normal(size=c), "mean"), (rng.uniform(0.1, 3, c), "var"))]
    nodes = [
        helper.make_node("Conv", ["x", "w"], ["y"], pads=[1, 1, 1, 1]),
        helper.make_node("Concat", ["y", "y"], ["cat"], axis=1),
        helper.make_node("Split", ["cat"], ["a", "b"], axis=1, num_outputs=2),
        helper.make_node("Identity", ["var"], ["var_alias"]),
        helper.make_node("BatchNormalization", ["a", "scale", "bias", "mean", "var_alias"], ["bn"], epsilon=1e-3),
        helper.make_node("Relu", ["bn"], ["out"]),
    ]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", 3, 8, 8])],
                              [helper.make_tensor_value_info("out", TensorProto.FLOAT, ["n", c, 8, 8])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    x = rng.normal(size=(2, 3, 8, 8)).astype(np.float32)

    def run(m):
        so = ort.SessionOptions()
        so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
        return ort.InferenceSession(m.SerializeToString(), so, providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]

    before = run(model)
    assert batchnorm_to_depthwise_conv(model) == 1
    onnx.checker.check_model(model)
    assert "BatchNormalization" not in {n.op_type for n in model.graph.node}
    np.testing.assert_allclose(run(model), before, rtol=1e-5, atol=1e-5)


def test_flops_per_cycle_from_isa():
    from wbc_deploy.bench.machine import cpu_fp32_peak, fp32_flops_per_cycle

    assert fp32_flops_per_cycle(["avx", "fma", "avx2", "avx512f"], "GenuineIntel", 6)[0] == 64
    assert fp32_flops_per_cycle(["avx", "fma", "avx2", "avx512f"], "AuthenticAMD", 0x19)[0] == 32  # Zen 4
    assert fp32_flops_per_cycle(["avx", "fma", "avx2", "avx512f"], "AuthenticAMD", 0x1A)[0] == 64  # Zen 5
    assert fp32_flops_per_cycle(["avx", "fma", "avx2"], "GenuineIntel", 6)[0] == 32
    assert fp32_flops_per_cycle(["avx"], "GenuineIntel", 6)[0] == 16
    assert fp32_flops_per_cycle([], "", None)[0] == 8
    one, two = cpu_fp32_peak(cores=1), cpu_fp32_peak(cores=2)
    assert two.gflops == pytest.approx(2 * one.gflops, abs=0.2)


def test_measure_counts_calls_and_excludes_warmup():
    from wbc_deploy.bench.timing import measure

    calls = []
    t = measure(lambda: calls.append(1), seconds=0.0, warmup=3, min_iters=5)
    assert len(calls) == 8 and t.iterations == 5 and t.warmup == 3
    assert t.items_per_s(4) == pytest.approx(4 * 5 / t.total_s)


def test_parsers():
    assert parse_backends("cpu,trt")[-1] == "trt" and "torch" in parse_backends("cpu")
    assert parse_backends("ort,ort,torch") == ["ort", "torch"]
    assert parse_batch_sizes("32, 1,8,8") == [1, 8, 32]
    for bad in ("ort,tensorflow", ","):
        with pytest.raises(WbcError):
            parse_backends(bad)
    for bad in ("1,x", "0", ""):
        with pytest.raises(WbcError):
            parse_batch_sizes(bad)


@pytest.mark.parametrize("args, words", [
    (["--model", "wbcnet-tiny", "--backends", "ort,tensorflow"], "unknown benchmark backend"),
    (["--model", "wbcnet-tiny", "--batch-sizes", "0"], "at least 1"),
    (["--model", "no-such-arch"], "unknown architecture"),
    (["--model", "missing/model.onnx"], "not found"),
    (["--model", "wbcnet-tiny", "--seconds", "0"], "--seconds"),
])
def test_bad_input_is_one_line_exit_2(args, words, tmp_path, capsys):
    with pytest.raises(SystemExit) as exc:
        main(["benchmark", *args, "--out", str(tmp_path / "r.json"), "--quiet", "--cache-dir", str(tmp_path / "c")])
    assert exc.value.code == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.startswith("error:") and words in err
    assert not (tmp_path / "r.json").exists()


def test_int8_accuracy_proxy_small(bench_run):
    """FP32 vs INT8 OA through the runtime + trainer evaluation; tiny sets, so only the bookkeeping is checked."""
    from wbc_deploy.bench.accuracy import int8_accuracy
    from wbc_deploy.bench.artefacts import Artefacts, resolve_source
    from wbc_deploy.converters.int8_cpu import Int8Recipe

    _data, _md, cache = bench_run
    recipe = Int8Recipe(calib_images=8)
    acc = int8_accuracy(Artefacts(resolve_source("wbcnet-tiny"), cache, recipe), recipe, per_class=2, train_per_class=4, threads=1,
                        head_steps=50)
    assert acc["test_cells"] == 10 and acc["head_training"]["train_cells"] == 20
    assert "proxy" in acc["method"]
    for key in ("oa_fp32", "oa_int8", "top1_agreement"):
        assert 0.0 <= acc[key] <= 1.0
        assert round(acc[key] * 10, 6) == int(round(acc[key] * 10))  # a count out of 10 cells
    assert acc["oa_loss_points"] == pytest.approx(100 * (acc["oa_fp32"] - acc["oa_int8"]), abs=0.01)
    assert acc["int8_details"]["batchnorm_rewritten"] > 0


def test_checkpoint_run_is_benchmarked_with_its_weights(tmp_path):
    """--checkpoint RUN: the exported ONNX and the torch backend both carry the run's trained weights."""
    import torch

    from wbc_deploy.classes import CLASSES
    from wbc_deploy.model import card_for, create_model
    from wbc_deploy.trainer.checkpoint import save_checkpoint

    torch.manual_seed(123)  # not the benchmark's random-init seed: the weights must come from the run
    card = card_for("wbcnet-tiny", list(CLASSES), input_size=32)
    save_checkpoint(tmp_path / "run", create_model("wbcnet-tiny", len(CLASSES)), card)
    report = run_benchmark(BenchmarkConfig(model="wbcnet-tiny", checkpoint=tmp_path / "run", backends=["ort", "torch"],
                                           batch_sizes=[1], seconds=0.05, warmup=0, min_iters=1, agreement_cells=3,
                                           cache_dir=tmp_path / "cache"), quiet=True)
    assert report.model["kind"] == "run" and report.model["input_size"] == 32
    ort_r, torch_r = report.results
    assert ort_r.ok and torch_r.ok
    assert torch_r.max_abs_diff_vs_fp32 < 1e-4
    from wbc_deploy.bench.artefacts import onnx_file_card

    exported, _precision = onnx_file_card(Path(report.artefacts["cache_dir"]) / "model.fp32.onnx")
    assert card.checkpoint_sha256 and exported.checkpoint_sha256 == card.checkpoint_sha256
    with pytest.raises(WbcError, match="does not match"):
        run_benchmark(BenchmarkConfig(model="resnet18", checkpoint=tmp_path / "run", backends=["ort"], batch_sizes=[1]))


def test_sweep_keeps_baseline_unless_clearly_beaten():
    from wbc_deploy.bench.ort_settings import OrtSettings, SweepPoint, best_of
    from wbc_deploy.bench.timing import Timing

    def point(label: str, seconds: float) -> SweepPoint:
        return SweepPoint(OrtSettings(label=label), Timing((seconds,) * 3, 1, 0.0), batch_size=16)

    assert best_of([point("tuned", 1.0), point("other", 0.97)]).label == "tuned"  # 3% faster: noise
    assert best_of([point("tuned", 1.0), point("other", 0.8)]).label == "other"
    assert best_of([point("a", 1.0), point("b", 0.9)]).label == "b"  # no baseline in the sweep
    assert best_of([SweepPoint(OrtSettings(label="tuned"), None, 16, error="x")]) is None
