"""`edgeqwen bench` runs end to end and reports every field scripts rely on (no timing asserts)."""

import csv
import io
import json
import os
import subprocess
import sys

import numpy as np
import pytest


def test_bench_json_and_csv(tiny_model_dir, tmp_path):
    out = tmp_path / "r.json"
    p = subprocess.run([sys.executable, "-m", "edgeqwen.cli", "bench", "-m", str(tiny_model_dir), "-p", "8", "-n", "4",
                        "-r", "1", "-t", "1,2", "--no-cold-start", "--json", str(out), "--csv", "-"],
                       capture_output=True, text=True, timeout=600, env=dict(os.environ, NUMBA_NUM_THREADS="2"))
    assert p.returncode == 0, p.stderr
    r = json.loads(out.read_text())
    assert [row["threads"] for row in r["rows"]] == [1, 2]
    for key in ("prefill_tps", "decode_tps", "ttft_s", "bytes_per_token", "decode_gbps",
                "read_bandwidth_gbps", "pct_of_bandwidth"):
        assert all(row[key] > 0 for row in r["rows"]), key
    assert all(row["decode_sd"] >= 0 for row in r["rows"])  # one repeat: sd 0
    assert r["machine"]["cores"] >= 1 and r["machine"]["numba"] and r["peak_rss_mib"] > 0
    assert r["rows"][0]["bytes_per_token"] == r["rows"][1]["bytes_per_token"]
    rows = list(csv.DictReader(io.StringIO(p.stdout)))
    assert len(rows) == 2 and "decode_tps" in rows[0]
    # --plot: several boards' JSON results charted together (a PNG, not an error)
    other = tmp_path / "other.json"
    r["machine"]["cpu"] = "another board"
    other.write_text(json.dumps(r))
    png = tmp_path / "boards.png"
    q = subprocess.run([sys.executable, "-m", "edgeqwen.cli", "bench", "--plot", str(png), str(out), str(other)],
                       capture_output=True, text=True, timeout=600)
    if "needs matplotlib" in q.stderr:
        pytest.skip("matplotlib is not installed (the test extra installs it)")
    assert q.returncode == 0, q.stderr
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 5000


def test_bench_rejects_bad_threads(tiny_model_dir):
    p = subprocess.run([sys.executable, "-m", "edgeqwen.cli", "bench", "-m", str(tiny_model_dir), "-t", "0"],
                       capture_output=True, text=True, timeout=120)
    assert p.returncode == 1 and "thread counts must be between 1 and" in p.stderr and "Traceback" not in p.stderr


def test_bench_kernels_json(tmp_path):
    out = tmp_path / "k.json"
    p = subprocess.run([sys.executable, "-m", "edgeqwen.cli", "bench", "--kernels", "--formats",
                        "bf16,int4-g64,int4-g64:exact,fp8,Q4_0", "--shapes", "64x256", "--ops", "matvec,batch4",
                        "-t", "1", "--json", str(out)], capture_output=True, text=True, timeout=600)
    assert p.returncode == 0, p.stderr
    assert "GB/s" in p.stdout and "int4-g64:exact" in p.stdout
    r = json.loads(out.read_text())
    run = r["runs"][0]
    assert run["threads"] == 1 and run["read_bandwidth_gbps"] > 0 and run["fma_peak_gflops"] > 0
    rows = run["rows"]
    assert len(rows) == 10
    for row in rows:
        assert {"format", "n", "k", "op", "ms", "gbps", "gflops", "pct_bandwidth", "pct_fma_peak"} <= set(row)
    assert all("speedup_vs_matvec" in row for row in rows if row["op"] == "batch4")


def test_bench_kernels_rejects_bad_input():
    for args in (["--formats", "int3"], ["--shapes", "64x100"], ["--ops", "matvec,batch16"]):
        p = subprocess.run([sys.executable, "-m", "edgeqwen.cli", "bench", "--kernels", *args], capture_output=True,
                           text=True, timeout=120)
        assert p.returncode == 1 and "Traceback" not in p.stderr and len(p.stderr.strip().splitlines()) == 1


def test_fma_peak_loop_runs_every_chain():
    # the peak loop must do the FMAs it counts: chain j starts at a + j and takes n rounds of
    # acc * 0.5 + 1, so the lane sum has a closed form (exact in float32 at these sizes)
    from edgeqwen.kernels.simd import fma_chains, fma_shape
    from numba import njit

    @njit
    def run(n, a, out):
        fma_chains(n, a, out)

    lanes, chains = fma_shape()
    a, out = np.array([0.5, 1.0], np.float32), np.zeros(1, np.float32)
    run(3, a, out)
    want = sum(((0.5 + j) * 0.125 + 1.75) for j in range(chains)) * lanes
    assert out[0] == np.float32(want)
