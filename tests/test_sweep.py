"""python -m benchmarks.sweep: quality against compute from a finished comparison's tables."""

from benchmarks.sweep import main, quality_vs_compute


def write(folder, name, text):
    (folder / "tables").mkdir(parents=True, exist_ok=True)
    (folder / "tables" / name).write_text(text)


def test_cheapest_variant_within_one_percent_of_the_reference(tmp_path, capsys):
    write(
        tmp_path,
        "deletion_insertion.csv",
        "method,images,deletion,insertion\n"
        "paper,10,0.10,0.800\nfast,10,0.12,0.795\ntiny,10,0.20,0.700\nmid,10,0.11,0.799\n",
    )
    write(
        tmp_path,
        "cost.csv",
        "method,images,seconds_per_image,forward_per_image,backward_per_image\n"
        "paper,10,100,84400,84000\nfast,10,2,1420,1420\ntiny,10,0.5,300,300\nmid,10,10,5000,5000\n",
    )
    rows, cheapest = quality_vs_compute(tmp_path, "paper")
    assert [r["method"] for r in rows] == ["tiny", "fast", "mid", "paper"]  # by passes per image
    assert cheapest == "fast"  # 0.795 >= 0.99 * 0.800; tiny is not
    assert quality_vs_compute(tmp_path, "paper", tolerance=0.0015)[1] == "mid"
    assert quality_vs_compute(tmp_path, "paper", tolerance=0.001)[1] == "paper"
    assert main([str(tmp_path), "--reference", "paper"]) == 0
    assert "cheapest within 1% of paper's insertion AUC: fast" in capsys.readouterr().out
    md = (tmp_path / "tables" / "quality_vs_compute.md").read_text()
    assert (
        "| fast (cheapest within tolerance) | 2,840 |" in md
        and (tmp_path / "curves" / "quality_vs_compute.png").is_file()
    )


def test_missing_tables_or_reference(tmp_path, capsys):
    assert main([str(tmp_path), "--reference", "x"]) == 2
    assert "evaluation.metrics: [deletion_insertion]" in capsys.readouterr().err
    write(tmp_path, "deletion_insertion.csv", "method,images,deletion,insertion\na,1,0.1,0.8\n")
    write(tmp_path, "cost.csv", "method,images,seconds_per_image,forward_per_image,backward_per_image\na,1,1,1,1\n")
    assert main([str(tmp_path), "--reference", "x"]) == 2
    assert "the labels are ['a']" in capsys.readouterr().err


def _method(folder, label, method, maps, metrics, passes):
    """A finished comparison's method folder: one record and one map per image."""
    import json

    import torch

    root = folder / "methods" / label
    (root / "records").mkdir(parents=True)
    (root / "maps").mkdir()
    for i, (m, values) in enumerate(zip(maps, metrics, strict=True)):
        torch.save({"saliency": m}, root / "maps" / f"im{i}.pt")
        rec = {"id": f"im{i}", "method": label, "status": "ok", "passes": passes, "map": f"maps/im{i}.pt"}
        (root / "records" / f"im{i}.json").write_text(json.dumps({**rec, "metrics": values}))


def test_paired_sweep_flags_worse_quality_and_maps_beyond_the_round_off_tolerance(tmp_path, capsys):
    import torch

    from benchmarks.sweep import paired_sweep

    g = torch.Generator().manual_seed(0)
    n = 12
    maps = [torch.rand(1, 1, 8, 8, generator=g) for _ in range(n)]
    near = [m + 0.01 * torch.rand(1, 1, 8, 8, generator=g) for m in maps]  # closer than round-off moves the preset
    other = [torch.rand(1, 1, 8, 8, generator=g) for _ in range(n)]
    ins = [0.5 + 0.02 * i for i in range(n)]
    base = [{"insertion": v, "stability/noise1e-06/pearson": 0.9} for v in ins]
    _method(tmp_path, "fast", "hdm", maps, base, 1420)
    _method(tmp_path, "cheap", "hdm", near, [{"insertion": v + 0.001 * (-1) ** i} for i, v in enumerate(ins)], 710)
    _method(tmp_path, "worse", "hdm", maps, [{"insertion": v - 0.1} for v in ins], 355)
    _method(tmp_path, "moved", "hdm", other, [{"insertion": v} for v in ins], 2840)
    _method(tmp_path, "m_fast", "mdm", maps, base, 720)
    _method(tmp_path, "gradcam", "gradcam", maps, base, 1)
    entries = [("fast", "hdm"), ("cheap", "hdm"), ("worse", "hdm"), ("moved", "hdm"), ("m_fast", "mdm")]
    methods = "".join(f"  - {{name: {n}, label: {lb}}}\n" for lb, n in entries)
    (tmp_path / "config.yaml").write_text(f"methods:\n{methods}  - {{name: gradcam}}\n")  # records name labels
    rows = {r["method"]: r for r in paired_sweep(tmp_path, ["fast", "m_fast"], ["insertion"])}
    assert set(rows) == {"fast", "cheap", "worse", "moved", "m_fast"}  # gradcam has no reference: left out
    assert rows["cheap"]["holds"] and rows["cheap"]["within_tolerance"]
    assert rows["cheap"]["insertion_diff_low"] <= 0 <= rows["cheap"]["insertion_diff_high"]
    assert not rows["worse"]["holds"] and abs(rows["worse"]["insertion_diff"] + 0.1) < 1e-9
    assert rows["worse"]["insertion_p"] < 0.05 and rows["worse"]["agreement"] > 1 - 1e-9
    assert rows["moved"]["holds"] and not rows["moved"]["within_tolerance"] and rows["moved"]["agreement"] < 0.5
    assert rows["fast"]["tolerance"] == 0.9 and rows["m_fast"]["reference"] == "m_fast"
    assert main([str(tmp_path), "--paired", "--reference", "fast", "m_fast", "--metrics", "insertion"]) == 0
    out = capsys.readouterr().out
    assert (
        "cheapest variant of fast whose quality holds and whose maps stay within the stability tolerance: cheap" in out
    )
    assert (tmp_path / "tables" / "sweep_paired.md").is_file() and (tmp_path / "tables" / "sweep_paired.csv").is_file()
    assert main([str(tmp_path), "--paired", "--reference", "fast", "nope"]) == 2
    assert "no finished method labelled 'nope'" in capsys.readouterr().err
