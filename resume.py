"""Where a search starts: the finished trials of its pickle (or rebuilt from its result files, --rebuild-trials), if they
can share one TPE history with this run's settings, its data, and the points it trains first (--enqueue)."""

from __future__ import annotations

import argparse
import os

from cli import plural


def best_loss(trials) -> float | None:
    """The lowest loss of the finished trials (minus the best fine accuracy), or None."""
    losses = [loss for loss in trials.losses() if loss is not None]
    return min(losses) if losses else None


def finished_trials(args: argparse.Namespace):
    """Trials from the pickle, without the ones that never finished, if they share this run's settings; or new Trials;
    or, with --rebuild-trials, those of the result files, saved as the pickle.

    TrialsFileError for a pickle that cannot be read or whose trials do not compare with this run's.
    """
    from hyperopt import Trials

    from utils import TrialsFileError, mismatched_setting, save_trials

    if args.rebuild_trials:
        if os.path.exists(args.trials_file):
            raise TrialsFileError(f"--rebuild-trials writes {args.trials_file} only where there is none: move that one "
                                  "away first")
        trials = rebuilt_trials(args.results_dir)
        print(f"Rebuilt the trials of {args.trials_file} from {plural(len(trials.trials), 'result file')} in "
              f"{args.results_dir}/")
    elif not os.path.exists(args.trials_file):
        # A new search there would restart TPE and number its trials from 0 among the old ones.
        if orphans := len(searched_tids(args.results_dir)):
            raise TrialsFileError(
                f"{args.results_dir}/ holds the results of a search ({plural(orphans, 'trial')}) whose trials pickle is not "
                f"{args.trials_file}: pass that pickle with --trials-file, rebuild it from them with --rebuild-trials, or "
                "start a new search with another --results-dir")
        print(f"Starting a new search: trials go to {args.trials_file}, results to {args.results_dir}/")
        return Trials()
    else:
        trials = loaded_trials(args)
    best = best_loss(trials)
    print(f"Resuming: {plural(len(trials.trials), 'trial')}, best fine accuracy {'none yet' if best is None else f'{-best:.4f}'}")
    if mismatch := mismatched_setting(trials, args.trials_file, dataset=os.path.basename(args.dataset),
                                      selected_on=args.select_on, search_space=args.space, seed=args.seed):
        raise TrialsFileError(mismatch)
    if args.rebuild_trials:  # once they compare with this run's: a pickle of others would be refused at every resume
        save_trials(trials, args.trials_file)
    return trials


def loaded_trials(args: argparse.Namespace):
    """The finished trials of the pickle, if the results folder holds no trial that it lacks; the result files that it
    holds and the folder lacks written again."""
    from utils import BrokenTrialsFile, TrialsFileError, finished_copy, load_trials, result_path, save_json_result

    saved = searched_tids(args.results_dir)
    try:
        trials = finished_copy(load_trials(args.trials_file))
    except BrokenTrialsFile as err:
        again = "rebuild it from the result files with --rebuild-trials" if saved else "start a new search"
        raise TrialsFileError(f"{err}; move it away to {again}") from None
    # An older copy of the pickle (a backup put back, a folder synced without it): the next trials would take the
    # ids of trials that it lacks, and two result files would say they are one trial.
    if lacked := sorted(saved - {t["tid"] for t in trials.trials}):
        shown = ", ".join(map(str, lacked[:5])) + (f" and {len(lacked) - 5} more" if len(lacked) > 5 else "")
        raise TrialsFileError(f"{args.results_dir}/ holds the results of {plural(len(lacked), 'trial')} that "
                              f"{args.trials_file} lacks ({shown}): an older copy of it? Move it away to rebuild it "
                              "from the result files with --rebuild-trials")
    # A run that stopped between saving the pickle and a result file (a full disk) left it out.
    for result in trials.results:
        if "tid" in result and not result_path(result, args.results_dir).exists():
            save_json_result(result, args.results_dir)
            print(f"Restored the result file of trial {result['tid']} from {args.trials_file}")
    return trials


def searched_tids(results_dir: str) -> set[int]:
    """The trial ids of the result files in a folder: its results of this project's searches (2017's record none)."""
    from utils import iter_results

    return {result["tid"] for _, result in iter_results(results_dir) if "tid" in result}


def rebuilt_trials(results_dir: str):
    """The finished trials of a search, rebuilt from its result files: each records its trial id, the point it trained
    (or, for a Spark worker that crashed, hyperopt's encoding of it), how it was suggested and its result, which is all
    that TPE models. TrialsFileError where they are not one search's."""
    from hyperopt import JOB_STATE_DONE, Trials

    from hyperspace import SPACES, NotInSpace, encode, unused
    from suggestions import trial_doc
    from utils import TrialsFileError, holding, iter_results, warn

    trials, docs, files, without_id = Trials(), [], {}, 0
    for path, result in iter_results(results_dir):
        if (tid := result.get("tid")) is None:  # a 2017 file
            without_id += 1
            continue
        if tid in files:
            raise TrialsFileError(f"{results_dir}/ holds two result files of trial {tid}, {files[tid]} and {path.name}: "
                                  "not one search's")
        files[tid] = path.name
        space = SPACES.get(result.get("search_space", "full"), SPACES["full"])
        try:
            vals = (encode(result["space"], space, str(path)) if result["space"] else
                    unused(space) | {label: [value] for label, value in result.get("hyperopt_vals", {}).items()})
        except NotInSpace as err:
            raise TrialsFileError(f"cannot rebuild the trials: {err}") from None
        docs.append({**trial_doc(trials, tid, vals, result, result.get("suggested_by")), "state": JOB_STATE_DONE})
    records = "records" if without_id == 1 else "record"
    if not docs and without_id:
        files = "the result file" if without_id == 1 else f"the {without_id} result files"
        raise TrialsFileError(f"--rebuild-trials: {files} in {results_dir}/ {records} no "
                              "trial id, as 2017's do: their trials are in 2017's pickle alone (--trials-file resumes it)")
    if not docs:
        raise TrialsFileError(f"--rebuild-trials: {results_dir}/ holds no result file to rebuild the trials from")
    if without_id:
        warn(f"{plural(without_id, 'result file')} in {results_dir}/ {records} no trial id, as 2017's do: their trials, "
             "in 2017's pickle alone, are left out of the rebuilt one")
    return holding(trials, sorted(docs, key=lambda doc: doc["tid"]))


def warn_of_changed_settings(finished, args: argparse.Namespace, width: int, version: str | None) -> None:
    """Say which settings that a resume may change differ from the finished trials' (a deliberate choice: not refused),
    and whether the code that trains them, at `version`, does (a `git pull` between two runs)."""
    from hyperspace import width_multiple
    from utils import recorded, warn

    for option, now, before, what in (
            ("--epochs", args.epochs, recorded(finished, "max_epochs"), "accuracies reached in different budgets"),
            ("--patience", args.patience, recorded(finished, "patience"), "accuracies of trials stopped early at other points"),
            ("--width-multiple", width, {width_multiple(r["space"]) for r in finished.results if r.get("space")},
             "networks of other widths under the same hyperparameters")):
        if others := before - {now}:
            warn(f"{args.trials_file} holds trials of {option} {', '.join(map(str, sorted(others)))}, this run's is {now}: "
                 f"TPE will compare {what}")
    if version and (others := recorded(finished, "code_version") - {version}):
        warn(f"{args.trials_file} holds trials of code version {', '.join(sorted(others))}, this run's is {version}: TPE will "
             "compare accuracies of networks trained by different code (analyze_results.py says which trial ran which)")


# Tries of an --enqueue point whose trials all failed: a failure can pass (another process held the GPU), or come back.
ENQUEUE_TRIES = 3


def enqueue_requests(args: argparse.Namespace) -> list[tuple[str, dict]]:
    """Each --enqueue point, (name, hyperopt's encoding); NotInSpace for a name that is no point, or one the space cannot
    sample. Checked before anything else, so that a mistyped name is said even where there is nothing to train."""
    from hyperspace import SPACES, encode, point_named

    return [(name, encode(point_named(name, f"--enqueue {name}"), SPACES[args.space],
                          f"--enqueue {name} (--space {args.space})")) for name in args.enqueue or ()]


def enqueued_points(finished, requests: list[tuple[str, dict]]) -> list[tuple[str, dict]]:
    """Of the --enqueue points (enqueue_requests), those to train first: that no finished trial trained, or whose trials
    all failed, fewer than ENQUEUE_TRIES times, the last not by killing the search's process (which it did in 2 runs)."""
    from hyperspace import active
    from trial import ProcessDied

    points: list[tuple[str, dict]] = []
    for name, vals in requests:
        tries = [t for t in finished.trials if active(t["misc"]["vals"]) == active(vals)]
        if ok := [t for t in tries if t["result"].get("status") == "ok"]:
            print(f"--enqueue {name}: trained already, as trial {ok[0]['tid']}")
            continue
        if active(vals) in [active(queued) for _, queued in points]:
            continue
        if tries:
            error = tries[-1]["result"].get("error") or "no error recorded"
            failed = (f"its trial {tries[0]['tid']} failed ({error})" if len(tries) == 1 else
                      f"its trials {', '.join(str(t['tid']) for t in tries)} failed, the last with {error}")
            if len(tries) >= ENQUEUE_TRIES or error.startswith(ProcessDied.__name__):
                print(f"--enqueue {name}: {failed}; not trained again")
                continue
            print(f"--enqueue {name}: {failed}; trained again first")
        else:
            print(f"--enqueue {name}: trained first")
        points.append((name, vals))
    return points


def backed_up_trial(args: argparse.Namespace, saved_tids: set[int], space: dict):
    """The trial that the search's last run stopped in, where its backup holds epochs to go on from: (trial_backup.Backup,
    hyperopt's encoding of its network), said; None on Spark, whose workers back nothing up."""
    from hyperspace import NotInSpace, encode
    from trial_backup import read_backup
    from utils import warn

    if args.spark_master or not (backup := read_backup(args.results_dir, saved_tids)):
        return None
    try:
        vals = encode(backup.space, space, f"the network of trial {backup.tid}'s backup")
    except NotInSpace as err:
        warn(f"{err}: that trial starts anew, if suggested again")
        return None
    then = ("it trains first, on from there" if backup.epochs < args.epochs else
            f"it comes first, and as --epochs {args.epochs} leaves it none to train, it is tested and saved as it is")
    print(f"Trial {backup.tid} was stopped after epoch {backup.epochs}, which its backup of {backup.saved} holds: {then}")
    return backup, vals


def load_data(finished, args: argparse.Namespace):
    """This run's dataset (else DatasetError), if it has as many training images as the finished trials and, a .npz, their
    images and labels (else TrialsFileError)."""
    from datasets import load_dataset
    from utils import TrialsFileError, mismatched_setting, recorded

    data = load_dataset(args.dataset, train_subset=args.train_subset, seed=args.seed,
                        data_dir=args.data_dir, select_on=args.select_on)
    if data.digest and (digests := recorded(finished, "dataset_digest") - {data.digest}):
        raise TrialsFileError(f"{args.trials_file} holds trials of other images or labels under the name {data.name} "
                              f"(dataset_digest {', '.join(sorted(digests))}; this file's: {data.digest}): their accuracies "
                              "do not compare; resume with the file they trained on, or start a new search with another "
                              "--results-dir")
    if mismatch := mismatched_setting(finished, args.trials_file, train_images=len(data.x_train)):
        raise TrialsFileError(mismatch)
    return data
