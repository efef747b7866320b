"""Bad input at every entry point ends in a non-zero status and one ``error:`` line on stderr, never a traceback.

Each row is an entry point, its arguments and a fragment of the message; ``{tmp}`` is the test's folder (it holds a
file ``a_file`` and a YAML file ``list.yaml`` whose top level is a list). Every case fails before any work.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from hdm_lightning.cli import explain_main, train_classifier_main, train_explainer_main
from hdm_lightning.rescore import main as rescore_main

REPO = Path(__file__).resolve().parents[1]
TINY = str(REPO / "configs" / "tiny.yaml")
MAINS = {
    "explain": explain_main,
    "train_classifier": train_classifier_main,
    "train_explainer": train_explainer_main,
    "rescore": rescore_main,
}

CASES = [
    # NaN and inf are refused where the config is loaded (a NaN lr passes every "< 0" check)
    ("explain", ["--config", TINY, "explainer.schedule.params.lr=nan"], "schedule.params.lr must be a finite"),
    ("explain", ["--config", TINY, "explainer.schedule.params.eta=nan"], "explainer.schedule.params.eta must be a fin"),
    ("explain", ["--config", TINY, "explainer.mixing.lr=nan"], "explainer.mixing.lr must be a finite number"),
    ("explain", ["--config", TINY, "evaluation.ci_level=inf"], "evaluation.ci_level must be a finite number"),
    ("train_classifier", ["optim.lr=nan"], "optim.lr must be a finite number"),
    ("train_explainer", ["explainer.schedule.params.lr=inf"], "schedule.params.lr must be a finite"),
    # mask settings checked where the config is loaded, not when a fit starts
    ("explain", ["--config", TINY, "explainer.tau=1.5"], "tau (initial mask value) must be in [0, 1]"),
    (
        "explain",
        ["--config", TINY, "explainer.aux_reference=next"],
        "aux_reference must be one of ['original', 'previous']",
    ),
    # a YAML file whose top level is not a mapping
    ("explain", ["--config", "{tmp}/list.yaml"], "must hold a mapping of settings"),
    ("train_classifier", ["--config", "{tmp}/list.yaml"], "must hold a mapping of settings"),
    ("train_explainer", ["--config", "{tmp}/list.yaml"], "must hold a mapping of settings"),
    # image sides far beyond any classifier's are bounded (the message says the bound and why)
    ("explain", ["--config", TINY, "data.kind=synthetic", "data.synthetic.size=1000000"], "bound of 1024 pixels"),
    ("explain", ["--config", TINY, "classifier.preprocess.size=100000"], "bound of 4096 pixels: the classifier"),
    ("train_classifier", ["preprocess.resize=100000"], "preprocess.resize=100000 is above the bound of 4096"),
    ("train_explainer", ["data.synthetic.size=1000000"], "data.synthetic.size=1000000 is above the bound"),
    # a metric that needs ground-truth masks, on images that have none
    (
        "explain",
        ["--config", TINY, "data.kind=photos", "data.photos=[coffee]", "evaluation.metrics=[pointing_game]"],
        "evaluation: metrics pointing_game need a ground-truth mask per image, but no image of",
    ),
    # output.dir a file, or under a file
    ("explain", ["--config", TINY, "output.dir={tmp}/a_file"], "is a file: set output.dir to a folder path"),
    ("explain", ["--config", TINY, "output.dir={tmp}/a_file/run"], "lies under"),
    ("train_classifier", ["output.dir={tmp}/a_file"], "is a file: set output.dir to a folder path"),
    ("train_classifier", ["output.dir={tmp}/a_file/run"], "lies under"),
    ("train_explainer", ["output.dir={tmp}/a_file/run"], "lies under"),
    # a target that is neither a class nor a prototype, and a prototype of a classifier without prototypes
    ("explain", ["--config", TINY, "target=prototype"], "target must be one of predicted, label, {prototype: <index>}"),
    ("explain", ["--config", TINY, "target={prototype: -1}"], "target.prototype must be a prototype index >= 0"),
    (
        "explain",
        ["--config", TINY, "data.kind=synthetic", "data.limit=1", "target={prototype: 0}"],
        "explains a prototype's activation, and the classifier 'resnet18'",
    ),
    # rescore of a folder that holds no run
    ("rescore", ["{tmp}"], "is not a run folder (no config.yaml): give the output.dir of explain.py"),
    ("rescore", ["{tmp}/a_file"], "is not a run folder"),
    # output.dir where no folder can be made (Linux: /proc refuses new folders, even to root)
    ("explain", ["--config", TINY, "output.dir=/proc/no_such/run"], "cannot create folders in '/proc'"),
    ("train_classifier", ["output.dir=/proc/no_such/run"], "cannot create folders in '/proc'"),
]


@pytest.mark.parametrize(("main", "args", "message"), CASES, ids=lambda v: v if isinstance(v, str) else None)
def test_bad_input_is_one_error_line(main, args, message, tmp_path, capsys):
    (tmp_path / "a_file").write_text("not a folder\n")
    (tmp_path / "list.yaml").write_text("- method: hdm\n- batch_size: 2\n")
    args = [a.replace("{tmp}", str(tmp_path)) for a in args]
    status = MAINS[main](args if main == "rescore" else [*args, "wandb.mode=disabled"])
    err = capsys.readouterr().err
    assert status != 0, err
    lines = [line for line in err.splitlines() if line.startswith("error: ")]
    assert len(lines) == 1 and message in lines[0], err
    assert "Traceback" not in err


def test_image_sides_are_bounded_in_the_python_api_too():
    from hdm_lightning.data import generate_shapes
    from hdm_lightning.data.items import DatasetError
    from hdm_lightning.models import Preprocess

    with pytest.raises(ValueError, match="at most 4096 pixels"):
        Preprocess(size=100000, resize=100000)
    with pytest.raises(DatasetError, match="at most 1024"):
        generate_shapes(0, 1000000, 0, "test")


def test_a_mask_metric_on_data_where_some_images_lack_a_mask_is_a_warning(tmp_path, capsys):
    from types import SimpleNamespace

    from hdm_lightning.data import MaskPairDataset
    from hdm_lightning.evaluation import MetricSuite
    from hdm_lightning.models import Preprocess
    from tests.fixtures import make_pairs_tree

    root = make_pairs_tree(tmp_path / "pairs", n=3)
    (root / "masks" / "img_1.bmp").unlink()
    dataset = MaskPairDataset(root, "images", "masks", Preprocess(size=30, resize=30))
    MetricSuite.check_masks(SimpleNamespace(mask_families=["pointing_game"]), dataset)
    assert "warning: 1 of 3 images have no ground-truth mask: pointing_game are scored on the other 2 only" in (
        capsys.readouterr().err
    )


def test_train_explainer_refuses_a_classifier_of_another_class_count(tmp_path, capsys):
    """As explain.py does for the same pair: a checkpoint's head must fit the data's classes (target=predicted too)."""
    from hdm_lightning.models import Preprocess, build_backbone, save_classifier_checkpoint

    ckpt = tmp_path / "seven.pt"
    names = [f"c{i}" for i in range(7)]
    prep = Preprocess(size=32, resize=32, interpolation="bilinear")
    save_classifier_checkpoint(ckpt, build_backbone("small_cnn", 7), "small_cnn", 7, names, prep)
    config = str(REPO / "configs" / "explainer" / "synthetic.yaml")
    args = ["--config", config, f"classifier.checkpoint={ckpt}", f"output.dir={tmp_path / 'o'}", "target=predicted"]
    assert train_explainer_main([*args, "wandb.mode=disabled", "data.synthetic.num_images=8"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: the classifier has 7 classes but synthetic") and "Traceback" not in err, err
    assert not (tmp_path / "o" / "config.yaml").exists()  # refused before any work


def test_a_missing_path_no_check_caught_says_what_to_do():
    from hdm_lightning.cli import _message

    text = _message(FileNotFoundError(2, "No such file or directory", "/data/x.pt"))
    assert text.startswith("No such file or directory: '/data/x.pt'. Check the config key") and "[Errno" not in text
