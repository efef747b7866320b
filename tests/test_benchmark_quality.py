import json

import numpy as np
import pytest

from benchmarks import benchmark_quality as bq


def _write(root, label, values):
    for i, (dele, ins) in enumerate(values):
        rec = {"id": f"img{i}", "status": "ok", "metrics": {"deletion": dele, "insertion": ins}}
        path = root / "methods" / label / "records" / f"img{i}.json"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(rec))


def test_intervals_and_paired_differences(tmp_path, capsys):
    rng = np.random.default_rng(0)
    base = rng.uniform(0.2, 0.8, size=(50, 2))
    _write(tmp_path, "paper", base.tolist())
    _write(tmp_path, "same", (base + 1e-4).tolist())  # indistinguishable
    _write(tmp_path, "worse", (base + [0.2, -0.2]).tolist())  # clearly worse on both
    out = tmp_path / "q.json"
    args = [str(tmp_path), "--baseline", "paper", "--pairs", "same=paper", "worse=paper", "--json", str(out)]
    assert bq.main(args) == 0
    table = json.loads(out.read_text())
    assert table["images"] == 50
    lo, hi = table["methods"]["paper"]["deletion"]["ci"]
    assert lo < table["methods"]["paper"]["deletion"]["mean"] < hi
    assert table["methods"]["same"]["deletion"]["within_baseline_ci"]
    assert not table["methods"]["worse"]["insertion"]["within_baseline_ci"]
    d = table["pairs"]["worse - paper"]["deletion"]
    assert d["mean"] == pytest.approx(0.2) and d["ci"][0] > 0.19
    same = table["pairs"]["same - paper"]["insertion"]
    assert same["mean"] == pytest.approx(1e-4) and same["ci"][1] - same["ci"][0] < 1e-9
    assert "| worse |" in capsys.readouterr().out


def test_bad_arguments_are_named(tmp_path):
    _write(tmp_path, "paper", [(0.1, 0.9)])
    with pytest.raises(SystemExit, match="--baseline 'nope'"):
        bq.main([str(tmp_path), "--baseline", "nope"])
    with pytest.raises(SystemExit):
        bq.main([str(tmp_path), "--baseline", "paper", "--pairs", "paper"])
    with pytest.raises(SystemExit, match="no finished records"):
        bq.main([str(tmp_path / "empty"), "--baseline", "paper"])
