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
