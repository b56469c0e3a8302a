"""The median stopping rule on hand-made learning curves."""

from pruning import MedianStoppingRule, should_prune

FINISHED = [
    [0.10, 0.20, 0.30, 0.40, 0.50, 0.55],
    [0.10, 0.15, 0.20, 0.25, 0.30, 0.35],
    [0.05, 0.10, 0.30, 0.35, 0.40, 0.45],
]  # best-so-far at epoch 5: 0.50, 0.30, 0.40 -> median 0.40


def test_prunes_a_trial_below_the_median_at_epoch_5():
    assert should_prune([0.1, 0.2, 0.25, 0.3, 0.35], FINISHED)


def test_keeps_a_trial_at_or_above_the_median():
    assert not should_prune([0.1, 0.2, 0.25, 0.3, 0.40], FINISHED)
    assert not should_prune([0.1, 0.45, 0.2, 0.2, 0.2], FINISHED)  # best so far counts, not the last


def test_never_prunes_before_epoch_5():
    assert not should_prune([0.01, 0.01, 0.01, 0.01], FINISHED)


def test_needs_3_finished_trials():
    assert not should_prune([0.0] * 5, FINISHED[:2])


def test_a_trial_that_stopped_sooner_counts_with_the_best_it_reached():
    curve = [0.1, 0.2, 0.3, 0.35, 0.38, 0.40]  # at epoch 6 the finished trials' best: 0.55, 0.35, 0.45
    assert should_prune(curve, FINISHED)
    # A weak trial pruned at epoch 2 still lowers the median (0.40): the bar does not rise as the weak go.
    assert not should_prune(curve, FINISHED + [[0.02, 0.05]])


def test_callback_stops_training_and_marks_the_trial_pruned(capsys):
    class FakeModel:
        stop_training = False

    rule = MedianStoppingRule(FINISHED)
    rule.set_model(FakeModel())
    rule.on_train_begin()
    for epoch, acc in enumerate([0.1, 0.2, 0.25, 0.3]):
        rule.on_epoch_end(epoch, {"val_fine_outputs_accuracy": acc})
        assert not rule.model.stop_training
    rule.on_epoch_end(4, {"val_fine_outputs_accuracy": 0.35})
    assert rule.model.stop_training and rule.pruned
    assert capsys.readouterr().out == (
        "Pruned at epoch 5: best 0.3500 is below 0.4000, the median of 3 finished trials' best by epoch 5\n")


def test_a_resumed_trial_is_pruned_by_its_epochs_before_the_resume_too(capsys):
    class FakeModel:
        stop_training = False

    rule = MedianStoppingRule(FINISHED, earlier=[0.1, 0.2, 0.25])  # the epochs that its backup holds
    rule.set_model(FakeModel())
    rule.on_train_begin()
    rule.on_epoch_end(3, {"val_fine_outputs_accuracy": 0.3})
    assert not rule.model.stop_training
    rule.on_epoch_end(4, {"val_fine_outputs_accuracy": 0.35})
    assert rule.model.stop_training and rule.pruned
    assert capsys.readouterr().out.startswith("Pruned at epoch 5: best 0.3500 is below 0.4000")
