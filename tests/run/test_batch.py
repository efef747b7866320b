"""One batch: each method with work there is called once on the whole batch, with its own run context."""

from __future__ import annotations

import torch

from hdm_lightning.contract import RunContext
from hdm_lightning.run.batch import batch_targets, explain_batch
from tests.run.parts import items, method_run, tiny_classifier


def test_each_method_with_work_runs_once_and_is_yielded_in_order(tmp_path):
    model = tiny_classifier().model
    runs = [method_run(label, tmp_path / label, model) for label in ("a", "b", "c")]
    batch = items(3)
    ids = [it.id for it in batch]
    runs[0].records = {i: {"status": "ok"} for i in ids}  # a finished the whole batch
    runs[1].records = {ids[0]: {"status": "ok"}, ids[1]: {"status": "failed"}}  # b: two images left
    images = torch.stack([it.image for it in batch])
    targets = torch.tensor([0, 1, 2])
    contexts = {r.label: RunContext(work_dir=tmp_path / ".work" / r.label) for r in runs}
    got = list(explain_batch(runs, images, targets, ids, [None] * 3, lambda r: contexts[r.label]))
    assert [r.label for r, _ in got] == ["b", "c"]
    assert runs[0].method.batches == [] and runs[1].method.batches == runs[2].method.batches == [3]
    assert runs[1].method.contexts == [contexts["b"]] and runs[2].method.contexts == [contexts["c"]]
    (_, b), (_, c) = got
    assert b.todo == [1, 2] and c.todo == [0, 1, 2]
    expected = images.mean(1, keepdim=True)
    lo = expected.flatten(1).amin(1).view(-1, 1, 1, 1)
    hi = expected.flatten(1).amax(1).view(-1, 1, 1, 1)
    assert torch.allclose(b.maps, (expected - lo) / (hi - lo)) and b.maps.device.type == "cpu"
    assert b.result.forward_passes == 3 and b.result.backward_passes == 0 and b.explanation is None
    assert b.metrics == [{}, {}, {}]


def test_targets_are_the_prediction_or_the_label():
    clf = tiny_classifier()
    batch = items(4)
    images = torch.stack([it.image for it in batch])
    clf.model.train()
    predicted = batch_targets(clf.model, images, [it.label for it in batch], "predicted")
    assert torch.equal(predicted, clf.model.eval()(images).argmax(1))
    clf.model.train()
    labelled = batch_targets(clf.model, images, [it.label for it in batch], "label")
    assert labelled.tolist() == [0, 1, 2, 0] and clf.model.training  # the model's mode is restored
