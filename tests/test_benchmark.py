"""resnest-benchmark end to end on a tiny model, and its table/ratio/chart helpers on made-up records."""

import json
import os

import mxnet as mx
import numpy as np
import pytest

import resnest_gluon
from resnest_gluon import benchmarking

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
REQUIRED = {
    "model",
    "impl",
    "batch_size",
    "input_size",
    "dtype",
    "img_per_sec",
    "ms_per_batch",
    "params",
    "macs",
}


@pytest.fixture(scope="module")
def bench():
    from resnest_gluon.cli import benchmark

    return benchmark


def make_rec(path, count=8, size=40):
    rng = np.random.RandomState(0)
    writer = mx.recordio.MXIndexedRecordIO(path[:-4] + ".idx", path, "w")
    for i in range(count):
        img = rng.randint(0, 256, (size, size, 3)).astype(np.uint8)
        writer.write_idx(i, mx.recordio.pack_img(mx.recordio.IRHeader(0, float(i % 10), i, 0), img))
    writer.close()
    return path


def test_main_end_to_end_tiny(bench, tmp_path):
    out = tmp_path / "bench.json"
    rec = make_rec(str(tmp_path / "calib.rec"))
    argv = ["--model", "resnest14", "--batch-size", "1", "2", "--input-size", "32", "--iters", "2"]
    argv += ["--compare", "gluoncv", "--onnx", "--imperative", "--quantize", rec, "--calib-batches", "1"]
    argv += ["--plain", "--openvino", "--peak", "--stream"]
    records = bench.main(argv + ["--json", str(out), "--plot", str(tmp_path / "paths.png"), "--no-progress"])
    saved = json.loads(out.read_text())
    assert saved == json.loads(json.dumps(records))
    impls = {(r["impl"], r["mode"]) for r in saved}
    assert impls == {
        ("resnest_gluon", "fused"),
        ("resnest_gluon", "fused-std"),  # fused, without our C++ operator (built by make)
        ("resnest_gluon", "plain"),
        ("resnest_gluon", "imperative"),
        ("gluoncv", "fused"),
        ("gluoncv", "plain"),
        ("onnxruntime", "graph"),
        ("resnest_gluon-int8", "int8"),
        ("openvino", "f32"),
        ("openvino", "bf16"),
        ("openvino", "int8"),
    }
    assert len(saved) == 2 * len(impls)
    # one baseline per batch (ours, fused), every row with its share of the measured GEMM peak
    assert [(r["impl"], r["mode"]) for r in saved if r["baseline"]] == [("resnest_gluon", "fused")] * 2
    assert all(r["fp32_peak_gflops"] > 0 and 0 < r["peak_share"] for r in saved)
    assert all(r["stream_img_per_sec"] > 0 and r["timing"] == "per call (synced)" for r in saved)
    assert saved[0]["isa"]["AVX2"] in (True, False) and saved[0]["cpu"] and saved[0]["load_average"]
    assert os.path.getsize(tmp_path / "paths.png") > 1000
    for r in saved:
        assert REQUIRED <= set(r), REQUIRED - set(r)
        assert r["input_size"] == 32 and r["batch_size"] in (1, 2)
        assert r["img_per_sec"] > 0 and r["img_per_sec_p25"] <= r["img_per_sec"] <= r["img_per_sec_p75"]
        assert r["ms_per_batch"] == pytest.approx(1e3 * r["batch_size"] / r["img_per_sec"])
    ours = [r for r in saved if r["impl"] == "resnest_gluon"][0]
    # the complexity of resnest14 at 32 px, counted independently here: params from the model itself
    net = resnest_gluon.get_model("resnest14")
    net.initialize()
    assert ours["params"] == sum(
        int(np.prod(p.shape)) for p in net.collect_params().values() if p.grad_req != "null"
    )
    assert 0 < ours["macs"] < 1e9


def test_cpu_info_reads_the_flags(bench, tmp_path):
    path = tmp_path / "cpuinfo"
    path.write_text("processor\t: 0\nmodel name\t: Some CPU\nflags\t\t: fpu avx2 avx512f avx512_vnni\n")
    info = benchmarking.cpu_info(str(path))
    assert info["cpu"] == "Some CPU"
    assert info["isa"] == {"AVX2": True, "AVX-512": True, "VNNI": True, "bf16": False, "AMX": False}
    assert info["isa_text"] == "AVX2 yes, AVX-512 yes, VNNI yes, bf16 no, AMX no"


def test_gpu_paths_use_a_cpu_copy_on_the_nets_context(bench):
    # deploy.export traces on the net's own context and the CPU-only paths get a CPU copy of the weights
    net = bench.build_net("resnest14")
    copy = bench.cpu_copy("resnest14", net)
    x = mx.nd.random.uniform(shape=(1, 3, 32, 32))
    np.testing.assert_allclose(copy(x).asnumpy(), net(x).asnumpy(), rtol=1e-5, atol=1e-6)
    assert benchmarking.time_stream(lambda: net(x), 2) > 0


def test_bad_input_is_rejected(bench, tmp_path, capsys):
    from resnest_gluon import cli
    from resnest_gluon.errors import UserError

    with pytest.raises(UserError, match="unknown model"):
        bench.main(["--model", "resnest5000"])
    with pytest.raises(UserError, match="no such .rec"):
        bench.main(["--model", "resnest14", "--quantize", str(tmp_path / "nope.rec")])
    capsys.readouterr()
    assert cli.run("benchmark", ["--model", "resnest5000"]) == 1  # one error line, no traceback
    assert capsys.readouterr().err.startswith("error: unknown model(s) ['resnest5000']")
    args = bench.parse_args(["--no-progress", "--model", "resnest14"])
    assert (args.ctx, args.progress) == ("auto", False)


def test_default_plan_is_the_papers_table(bench):
    plan = {e["model"]: e for e in bench.default_plan()}
    for name in ("resnest50", "resnest101", "resnest200", "resnest269", "resnetd50"):
        assert name in plan
        assert plan[name]["input_size"] == resnest_gluon.model_info(name)["crop_size"]
    assert plan["resnest269"]["input_size"] == 416 and plan["resnest269"]["batch_sizes"] == [1]
    assert all(plan[m]["input_size"] == 224 for m in plan if m.startswith("resnest50_fast"))
    # every published speed figure has a row in the plan at the same size
    for model, size in bench.PAPER_GPU_IMG_PER_SEC:
        assert plan[model]["input_size"] == size
    assert all(e["batch_sizes"] == [1] for e in bench.default_plan(quick=True))


def fake(model, impl, bs, ips, peer_of=None, top1=None, size=224):
    return dict(
        model=model,
        impl=impl,
        mode="fused",
        baseline=impl == "resnest_gluon" and model == (peer_of or model),
        batch_size=bs,
        input_size=size,
        dtype="float32",
        ctx="cpu(0)",
        img_per_sec=ips,
        img_per_sec_p25=ips * 0.9,
        img_per_sec_p75=ips * 1.1,
        ms_per_batch=1e3 * bs / ips,
        params=27.5e6,
        macs=5.4e9,
        peer_of=peer_of or model,
        top1=top1,
        paper_gpu_img_per_sec=None,
    )


def test_ratios_table_and_chart(bench, tmp_path):
    records = [
        fake("resnest50", "resnest_gluon", 1, 10.0, top1=81.04),
        fake("resnest50", "gluoncv", 1, 4.0),
        fake("resnet50_v1d", "gluoncv", 1, 12.5, peer_of="resnest50"),
        fake("resnest50", "resnest_gluon", 8, 8.0, top1=81.04),
        fake("resnest50", "gluoncv", 8, 2.0),
        fake("resnest101", "resnest_gluon", 1, 3.0, top1=82.81, size=256),
    ]
    rows = {(r["versus"], r["batch_size"]): r["ratio"] for r in benchmarking.ratios(records)}
    assert rows == {
        ("resnest50 (gluoncv, fused)", 1): pytest.approx(2.5),
        ("resnet50_v1d (gluoncv, fused)", 1): pytest.approx(0.8),
        ("resnest50 (gluoncv, fused)", 8): pytest.approx(4.0),
    }
    # call-by-call ratios: load that slows both calls of a pair cancels out
    records[0]["times_ms"], records[1]["times_ms"] = [100.0, 400.0, 100.0], [250.0, 1000.0, 250.0]
    paired = [r for r in benchmarking.ratios(records) if r["paired"]]
    assert len(paired) == 1 and paired[0]["paired"]["median"] == pytest.approx(2.5)
    assert "call by call 2.50x" in benchmarking.format_ratios(paired)
    benchmarking.add_peak_share(records, 1000.0)
    assert records[0]["gflops"] == pytest.approx(2 * 5.4 * 10.0) and records[0][
        "peak_share"
    ] == pytest.approx(0.108)
    table = benchmarking.format_table(records)
    assert table.count("\n") == len(records) + 1 and "| resnest101 (resnest_gluon, fused) |" in table
    assert "| 2.50x (2.50-2.50) |" in table and "| 11 % |" in table
    assert (
        benchmarking.plot_paths(records, str(tmp_path / "paths.png"), "title")
        and (tmp_path / "paths.png").exists()
    )
    os.remove(tmp_path / "paths.png")
    path = benchmarking.plot(records, str(tmp_path / "chart.png"))
    assert path and os.path.getsize(path) > 1000
    assert os.listdir(tmp_path) == ["chart.png"]
    assert benchmarking.plot([fake("resnest14", "resnest_gluon", 1, 5.0)], str(tmp_path / "none.png")) is None


def test_flops_match_the_paper():
    from resnest_gluon.models.flops import count_macs, count_params

    net = resnest_gluon.get_model("resnest50")
    net.initialize()
    # the paper: 27.5M parameters, 5.4 GFLOPs (multiply-adds) at 224
    assert count_params(net) == pytest.approx(27.5e6, rel=0.005)
    assert count_macs(net, (1, 3, 224, 224)) == pytest.approx(5.4e9, rel=0.01)


@pytest.mark.parametrize("interleave", ["blocks", "calls"])
def test_measure_interleaves_the_paths_as_asked(bench, interleave):
    order = []
    candidates = {
        key: dict(run=lambda key=key: order.append(key), record=dict(name=key)) for key in ("a", "b")
    }
    records = benchmarking.measure(
        candidates, 1, iters=3, rounds=2, warmup=1, progress=False, interleave=interleave
    )
    if interleave == "blocks":  # per round and path: one untimed call, then 3 timed ones back to back
        assert order == ["a", "b"] + (["a"] * 4 + ["b"] * 4) * 2
    else:
        assert order == ["a", "b"] + ["a", "b"] * 6
    assert [len(r["times_ms"]) for r in records] == [6, 6] and records[0]["interleave"] == interleave
