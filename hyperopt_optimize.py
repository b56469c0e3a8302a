"""Search a two-headed CNN's architecture and hyperparameters together with hyperopt's TPE.

Every finished trial is written as `results/<model_name>.txt.json` and into the trials pickle
(`results.pkl`), both atomically; running the script again resumes the search.
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
from pathlib import Path

import resume
from cli import SignalGuard, plural, run, unsupported_backend
from precision import tensorflow_defaults, use_one_gpu
from search import EXIT_SIGINT, EXIT_SIGTERM, Search

tensorflow_defaults()


def parse_args(argv=None) -> argparse.Namespace:
    from cli import ArgumentParser, SEED, at_least, positive
    from precision import PRECISION_HELP, PRECISIONS
    from utils import trials_file_for

    parser = ArgumentParser(__doc__)
    parser.add_argument("--dataset", default="cifar100", help="cifar100 | cifar10 | synthetic | FILE.npz")
    parser.add_argument("--data-dir", default=None,
                        help="folder holding the official cifar-100-python.tar.gz (cifar10: cifar-10-python.tar.gz) "
                             "(default: Keras's cache, ~/.keras/datasets)")
    parser.add_argument("--max-evals", type=at_least(1), default=None, help="total trials, resumed ones included (default: no limit, run until Ctrl-C)")
    parser.add_argument("--max-hours", type=positive, default=None,
                        help="start no trial after this many hours of this run's trials; the ones training then finish and "
                             "are saved (default: no limit)")
    parser.add_argument("--epochs", type=at_least(1), default=100, help="most epochs per trial")
    parser.add_argument("--patience", type=at_least(1), default=15, help="early stopping: epochs without a better validation fine accuracy (best weights restored)")
    parser.add_argument("--prune", choices=["median", "none"], default="median", help="stop trials that trail the median of finished trials")
    parser.add_argument("--algo", choices=["tpe", "random"], default="tpe", help="hyperopt suggestion algorithm")
    parser.add_argument("--startup-trials", type=at_least(0), default=None,
                        help="trials that TPE draws at random before it models the finished ones, enqueued and resumed "
                             "ones included (default: hyperopt's n_startup_jobs, 20)")
    parser.add_argument("--seed", type=SEED, default=0, help="random seed of suggestions, data split and weights")
    parser.add_argument("--results-dir", default="results", help="folder of the per-trial result JSON files")
    parser.add_argument("--trials-file", default=None,
                        help="hyperopt trials pickle, rewritten after every trial (default: the results folder's name + .pkl, "
                             "results.pkl; so that searches in other folders never share one)")
    parser.add_argument("--rebuild-trials", action="store_true",
                        help="where the trials pickle is lost (deleted, or moved away as unreadable), rebuild it from the "
                             "result files in --results-dir, each of which records its trial's id and point, and go on")
    parser.add_argument("--enqueue", action="append", metavar="POINT",
                        help="train this point of the space first, unless a trial trained it (one whose trials failed: up to "
                             f"{resume.ENQUEUE_TRIES} tries): 2017-best (the 2017 search's best network), demo, a result JSON "
                             "(its space), or a results folder (its best trial's: a pilot search's on fewer images, say); "
                             "repeatable")
    parser.add_argument("--select-on", choices=["validation", "test"], default="validation",
                        help="what selects epochs and trials: a validation split, or the test set as in 2017")
    parser.add_argument("--train-subset", type=at_least(1), default=None, help="train on this many images (stratified) for quick runs")
    parser.add_argument("--space", choices=["full", "tiny"], default="full", help="the real search space, or tiny networks for smoke tests")
    parser.add_argument("--width-multiple", type=at_least(1), default=None,
                        help="round conv filters and hidden units up to a multiple of this (default: the space's 8, "
                             "which suits GPU tensor cores; 1: 2017's exact widths)")
    parser.add_argument("--precision", choices=PRECISIONS, default="auto", help=PRECISION_HELP)
    parser.add_argument("--spark-master", default=None,
                        help="run trials in parallel on Spark: local[P] on this machine, or spark://host:7077 (needs pyspark, Java 17+)")
    parser.add_argument("--parallelism", type=at_least(1), default=None, help="trials at once under Spark (default: P of local[P], 1 of local, else 2)")
    parser.add_argument("--no-plot", action="store_true", help="do not draw the results folder's model_demo.png and model_best.png")
    parser.add_argument("--verbose", type=int, choices=[0, 1, 2], default=2, help="Keras: 0 silent, 1 progress bar, 2 one line per epoch")
    args = parser.parse_args(argv)
    if args.spark_master:
        from spark_search import MASTER_URL

        if not MASTER_URL.fullmatch(args.spark_master):
            parser.error(f"--spark-master {args.spark_master}: not a Spark master; local[P] (P at least 1), spark://HOST:PORT, k8s://... or yarn")
    if args.startup_trials is not None and args.algo != "tpe":
        parser.error("--startup-trials is TPE's: --algo random draws every trial at random")
    if args.parallelism and not args.spark_master:
        parser.error("--parallelism runs trials at once on Spark: give --spark-master too (local[P] on this machine)")
    args.results_dir = os.path.normpath(args.results_dir)
    args.trials_file = args.trials_file or trials_file_for(args.results_dir)
    return args


def main(argv=None) -> int:
    from datasets import source_problem
    from utils import RunLock, check_writable

    args = parse_args(argv)
    if problem := unsupported_backend() or source_problem(args.dataset, args.data_dir):
        print(f"error: {problem}", file=sys.stderr)
        return 2
    pickle_folder = Path(args.trials_file).parent
    lock = RunLock(args.results_dir, pickle_folder)
    try:
        # Where results cannot be written, stop before any training (and before making any folder, if another search runs).
        if locked := lock.acquire():
            for folder in (args.results_dir, pickle_folder):
                check_writable(folder)
    except OSError as err:
        lock.release()
        print(f"error: cannot write the results there: {err}", file=sys.stderr)
        return 2
    if not locked:
        print(f"error: a search is already running on {args.results_dir}/ ({lock.holder}); "
              "wait for it to end or use another --results-dir", file=sys.stderr)
        return 2
    if args.spark_master:
        from spark_search import spare_the_gpus_in_the_driver

        spare_the_gpus_in_the_driver()
    elif gpu_line := use_one_gpu():
        print(gpu_line)
    guard = SignalGuard()
    search = Search(args, guard)
    try:
        return search.run()
    except KeyboardInterrupt:
        guard.stopping()
        if search.started:  # after its trials, where a Spark poller stopped slowly, say
            print(f"\nInterrupted; {plural(len(search.saved_tids), 'finished trial')} saved.", file=sys.stderr)
        else:
            print("\nInterrupted before the search started; nothing was changed.", file=sys.stderr)
        return EXIT_SIGTERM if guard.signum == signal.SIGTERM else EXIT_SIGINT
    finally:
        lock.release()
        guard.restore()


if __name__ == "__main__":
    run(main)
