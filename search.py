"""One TPE search, resumed or new: its trials one at a time or on Spark, and what happens after every finished trial
(saved, reported, the search stopped where it must); its stop on a signal."""

from __future__ import annotations

import argparse
import contextlib
import datetime
import os
import shlex
import signal
import sys
import time

import resume
from cli import SignalGuard, plural
from leaderboard import search_leaderboard
from trial import (Objective, cut_short_line, outgrown_note, pace, repeated_failure, report, running_trial_file,
                   trial_cut_short, trial_line)

EXIT_SIGINT, EXIT_SIGTERM = 130, 143
PLOT_DPI = 96  # of the model plots
DRIVER = "hyperopt_optimize.py"  # the script that runs a search, beside the analysis and the retrain


class Search:
    """One TPE search: its trials, its data, and what happens after every finished trial."""

    def __init__(self, args: argparse.Namespace, guard: SignalGuard):
        self.args = args
        self.guard = guard
        self.started = False  # whether trials have begun: an interruption from then on can leave saved trials behind
        self.stop_reason = None
        self.began = None  # time.monotonic() at which this run's trials began
        self.deadline = None  # time.monotonic() at which --max-hours is up
        self.out_of_time = False  # whether --max-hours ran out: trials were left to start
        self.saved_tids: set[int] = set()
        self.resumed = 0  # of the saved trials, those finished before this run
        self.pickle_stamp = None  # the trials pickle as this search last read or wrote it (utils.file_stamp): none yet
        self.plot_broken = False  # after one failed plot, stop trying

    def run(self) -> int:
        """Resume or start the search, then run it until --max-evals, a signal or a stop; the exit status."""
        import hyperspace
        from datasets import DatasetError
        from precision import training_line
        from spark_search import SparkUnavailable, check_requirements, parallelism_of
        from trial import code_version
        from utils import TrialsFileError, file_stamp, finished_curves

        args = self.args
        parallelism = None
        try:
            if args.spark_master:
                check_requirements()
                parallelism = parallelism_of(args.spark_master, args.parallelism)
            requests = resume.enqueue_requests(args)
            finished = resume.finished_trials(args)
            self.pickle_stamp = file_stamp(args.trials_file)  # what only this search rewrites from now on
            self.saved_tids = {t["tid"] for t in finished.trials}
            self.resumed = len(self.saved_tids)
            if cut_short := trial_cut_short(args.results_dir, self.saved_tids):
                from trial_backup import backed_up  # Keras, which a search refused before its trials needs not load

                state = backed_up(args.results_dir)
                print(cut_short_line(cut_short, state["epochs"] if state and state["tid"] == cut_short["tid"] else None))
            if args.max_evals is not None and len(finished.trials) >= args.max_evals:
                print(f"Nothing to do: {plural(len(finished.trials), 'trial')} already, --max-evals {args.max_evals}, "
                      "which counts them; a larger --max-evals goes on.")
                self.print_leaderboard(finished)
                return 0
            width = args.width_multiple or hyperspace.SPACES[args.space]["width_multiple"]
            version = code_version()  # once: what every trial of this run records
            resume.warn_of_changed_settings(finished, args, width, version)
            first = resume.enqueued_points(finished, requests)
            space = hyperspace.SPACES[args.space] | {"width_multiple": width}
            resumed = resume.backed_up_trial(args, self.saved_tids, space)
            self.data = resume.load_data(finished, args)
        except (TrialsFileError, DatasetError, SparkUnavailable, hyperspace.NotInSpace, OSError) as err:
            print(f"error: {err}", file=sys.stderr)
            return 2
        print(self.data.summary())
        print(training_line(args.precision))
        self.best_loss = resume.best_loss(finished)
        if not args.no_plot:
            self.plot(hyperspace.DEMO_SPACE, "model_demo.png")

        self.objective = Objective(self.data, args, parallelism)
        self.objective.code_version = version
        self.objective.finished_curves = finished_curves(finished.results)
        self.objective.next_tid = max(self.saved_tids, default=-1) + 1
        self.objective.enqueued = [(hyperspace.decode(vals, space), name) for name, vals in first]
        self.objective.cut_short = cut_short
        # The trial that the last run stopped in first, as it was suggested; an --enqueue of its network, not twice.
        points = [(vals, "enqueue") for _, vals in first]
        if resumed:
            backup, vals = resumed
            self.objective.resumable = backup
            points = [(vals, backup.suggested_by)] + [p for p in points if hyperspace.active(p[0]) != hyperspace.active(vals)]
        self.guard.stop_if_signalled()  # one came while loading, and a library swallowed its KeyboardInterrupt
        return self.minimize(finished, parallelism, space, points)

    def minimize(self, finished, parallelism: int | None, space: dict, first: list[tuple[dict, str | None]]) -> int:
        """Run hyperopt's fmin over `space`, the points `first` first (suggestions.suggesting_first), saving every
        finished trial; the exit status."""
        import numpy as np
        from hyperopt import fmin
        from hyperopt.exceptions import AllTrialsFailed

        from suggestions import marked, suggesting_first, telling
        from trial_backup import backed_up

        args = self.args
        self.space = space
        if parallelism:
            from spark_search import Poller, SparkUnavailable, broadcast, cpu_share, make_trials

            share = cpu_share(args.spark_master, parallelism)  # one trial at a time trains on all of them
            print(f"Running up to {parallelism} trials at once on Spark ({args.spark_master}){', ' + share if share else ''}")
            try:
                self.trials = make_trials(args.spark_master, parallelism, finished.trials)
            except SparkUnavailable as err:
                print(f"error: {err}", file=sys.stderr)
                return 2
            self.objective.data = broadcast(self.data)
            poller = Poller(self.trials, self.after_spark_trials)
        else:
            self.trials, poller = finished, None
        algo = suggesting_first(first, marked(args.algo, args.startup_trials))
        self.started, self.began = True, time.monotonic()
        try:
            fmin(
                self.objective,
                space,
                algo=self.within_max_hours(algo if parallelism else telling(algo, self.objective)),
                max_evals=args.max_evals,
                trials=self.trials,
                # Seeded by the trial count too, so that a resumed run asks for new points.
                rstate=np.random.default_rng([args.seed, len(finished.trials)]),
                early_stop_fn=None if parallelism else self.after_serial_trial,
                # A bar needs a known total, and a terminal: in a log file each redraw is one more line.
                show_progressbar=args.max_evals is not None and sys.stderr.isatty(),
                return_argmin=False,
            )
        except AllTrialsFailed:
            pass  # fmin's closing argmin; the failures are reported below
        except KeyboardInterrupt:
            self.guard.stopping()
            if poller:
                poller.stop()
            name = "SIGTERM" if self.guard.signum == signal.SIGTERM else "SIGINT"
            if not parallelism and self.objective.running_backup:
                self.objective.running_backup.flush()  # the trial's last epoch's end that its backup does not hold
            state = None if parallelism else backed_up(args.results_dir)
            running = (f"trial {state['tid']} is backed up after epoch {state['epochs']} ({state['saved']}): a resume "
                       "goes on from there" if state and state["tid"] not in self.saved_tids else "running trials dropped")
            print(f"\n{name}: stopped; {plural(len(self.saved_tids), 'finished trial')} saved, {running}.")
            self.print_leaderboard(self.trials)
            print(f"Resume with: {shlex.join(['python3', *sys.argv])}")  # quoted, so that it pastes back as it ran
            self.print_next_steps()
            return EXIT_SIGTERM if self.guard.signum == signal.SIGTERM else EXIT_SIGINT
        finally:
            # This run stops here, in its own hands: only one whose process died leaves its running trial marked.
            with contextlib.suppress(OSError):
                running_trial_file(args.results_dir).unlink()
        if poller:
            poller.stop()
        if self.out_of_time:
            print(f"\n--max-hours {args.max_hours:g} is up: no more trials start; "
                  f"{plural(len(self.saved_tids), 'finished trial')} saved.")
        self.print_leaderboard(self.trials)
        if self.stop_reason:
            print(f"error: {self.stop_reason}", file=sys.stderr)
            return 1
        if self.out_of_time:
            print(f"Go on for another --max-hours with: {shlex.join(['python3', *sys.argv])}")
        self.print_next_steps()
        return 0

    def within_max_hours(self, algo):
        """`algo`, suggesting nothing once --max-hours have passed since the trials began.

        hyperopt then ends the search as the trials still training finish, which are saved; its own `timeout`
        would cancel them on Spark, and lose their hours.
        """
        if self.args.max_hours is None:
            return algo
        self.deadline = time.monotonic() + self.args.max_hours * 3600

        def suggest(new_ids, domain, trials, seed):
            if not self.time_is_up():
                return algo(new_ids, domain, trials, seed)
            self.out_of_time = True
            return []

        return suggest

    def time_is_up(self) -> bool:
        return self.deadline is not None and time.monotonic() >= self.deadline

    def where_it_stands(self) -> str | None:
        """Where the search stands against --max-evals and --max-hours, for the log of a search that runs for days."""
        now = time.monotonic()
        left = None if self.deadline is None else max(0.0, self.deadline - now)
        return pace(len(self.saved_tids), self.args.max_evals, len(self.saved_tids) - self.resumed, now - self.began, left)

    def after_spark_trials(self, trials) -> str | None:
        """Under Spark, every second: save the trials that finished; once --max-hours is up, start none of those queued."""
        from spark_search import cancel_queued

        if self.time_is_up() and cancel_queued(trials):
            self.out_of_time = True
        return self.stop_reason if self.after_trials(trials)[0] else None

    def after_serial_trial(self, trials, *args):
        """After each trial fmin ran itself: stop if a signal came (C code may have made its KeyboardInterrupt an error)."""
        self.guard.stop_if_signalled()  # before saving: the trial that the signal failed is not a result
        return self.after_trials(trials, *args)

    def after_trials(self, trials, *_):
        """Save newly finished trials (pickle, then JSON), report them; stop after repeated failures."""
        import threading

        import hyperspace
        from trial_backup import remove_backup
        from utils import file_stamp, finished_copy, finished_curves, name_apart, save_json_result, save_trials

        snapshot = finished_copy(trials)
        new = [t for t in snapshot.trials if t["tid"] not in self.saved_tids]
        if not new:
            return False, []
        names: set[str] = set()
        for trial in new:
            trial["result"]["tid"] = trial["tid"]
            trial["result"]["suggested_by"] = trial["misc"].get("suggested_by")
            name_apart(trial["result"], self.args.results_dir, names)
        if file_stamp(self.args.trials_file) != self.pickle_stamp:  # two searches given one --trials-file
            self.stop_reason = (f"{self.args.trials_file} was rewritten by another process while this search ran; trial "
                                f"{new[0]['tid']} is not saved, so that the other's trials are not overwritten")
            return True, []
        in_main = threading.current_thread() is threading.main_thread()
        pickled = False
        try:
            with self.guard.saving() if in_main else contextlib.nullcontext():
                save_trials(snapshot, self.args.trials_file)
                self.pickle_stamp, pickled = file_stamp(self.args.trials_file), True
                for trial in new:
                    save_json_result(trial["result"], self.args.results_dir)
        except OSError as err:  # a full disk, say: what was saved before stays whole
            which = f"trial {new[0]['tid']}" if len(new) == 1 else f"trials {', '.join(str(t['tid']) for t in new)}"
            self.stop_reason = (f"cannot write the result file of {which} ({err}); {self.args.trials_file} holds it, and a "
                                "rerun writes the file once it can be written" if pickled else
                                f"cannot save {which} ({err}); the trials before are saved, rerun to resume once it can be "
                                "written")
            return True, []
        self.saved_tids.update(t["tid"] for t in new)
        if not self.objective.parallelism:  # one trial at a time: the backup was of the trial saved now
            remove_backup(self.args.results_dir)
        self.objective.finished_curves = finished_curves(snapshot.results)
        self.objective.next_tid = max(self.saved_tids) + 1
        for trial in new:
            result = trial["result"]
            improved = result.get("status") == "ok" and (self.best_loss is None or result["loss"] < self.best_loss)
            if improved:
                self.best_loss = result["loss"]
            if self.objective.parallelism:  # its first line went to a worker's log, amid the other trials' at once
                # The worker's clock; a worker that crashed left only when Spark took the trial (hyperopt's, in UTC).
                started = (datetime.datetime.fromisoformat(result["started"]) if "started" in result else
                           trial["book_time"].replace(tzinfo=datetime.timezone.utc)).timestamp()
                point = hyperspace.decode(trial["misc"]["vals"], self.space)  # what the worker trained
                report(self.objective.first_line(trial["tid"], point, started, self.data.has_coarse))
            line = trial_line(result, self.best_loss, self.args.select_on)
            if note := outgrown_note(result, snapshot.results):
                line += f"; {note}"
            if trial is new[-1] and (where := self.where_it_stands()):
                line += f"; {where}"
            report(line)
            if improved and not self.args.no_plot:
                self.plot(result["space"], "model_best.png")
        if reason := repeated_failure(snapshot.results):
            self.stop_reason = reason
            return True, []
        return False, []

    def print_leaderboard(self, trials) -> None:
        print(search_leaderboard([t["result"] for t in trials.trials if t["tid"] in self.saved_tids]))

    def print_next_steps(self) -> None:
        """Where a trial finished: the commands that analyse this search and retrain its best network, run as this ran."""
        from utils import RESULTS_DIR, trials_file_for

        if self.best_loss is None:
            return
        # Beside this script as it was named (python3 hyperopt_optimize.py: analyze_results.py); where another script ran
        # the search (bench/bench_search.py), by this file's own folder.
        ran = sys.argv[0]
        scripts = os.path.dirname(ran if os.path.basename(ran) == DRIVER else os.path.abspath(__file__))
        folder = [] if self.args.results_dir == RESULTS_DIR else ["--results-dir", self.args.results_dir]
        order = [] if self.args.trials_file == trials_file_for(self.args.results_dir) else ["--trials-file", self.args.trials_file]
        analyse = shlex.join(["python3", os.path.join(scripts, "analyze_results.py"), *folder, *order])
        retrain = shlex.join(["python3", os.path.join(scripts, "retrain_best_with_tensorboard.py"), *folder])
        print(f"Next: {analyse} (leaderboard, importance, plots); {retrain} (the best network again, with TensorBoard "
              "logs and its best weights)")

    def plot(self, space: dict, name: str) -> None:
        """Draw the network of `space` into the results folder; without Graphviz, warn once and go on."""
        if self.plot_broken:
            return
        import keras
        from keras.src.utils.model_visualization import check_graphviz

        from neural_net import build_model
        from utils import warn

        path = os.path.join(self.args.results_dir, name)
        if not check_graphviz():
            self.plot_broken = True
            warn(f"cannot draw {path}: install Graphviz (apt install graphviz) and pydot for model plots")
            return
        try:
            model = build_model(space, self.data.input_shape, self.data.num_fine, self.data.num_coarse,
                                horizontal_flip=self.data.horizontal_flip)
            # At Keras 3's default of 200 dpi the demo network came out 4572 x 27256 pixels, past Pillow's limit against
            # decompression bombs, in 4.6 s of Graphviz; at Keras 2's 96, as 2017 drew it, 2195 x 13083 in 1.1 s.
            keras.utils.plot_model(model, to_file=path, show_shapes=True, dpi=PLOT_DPI)
            report(f"Drew {path}")
        except Exception as err:  # noqa: BLE001 -- a broken plot must not stop the search
            self.plot_broken = True
            warn(f"cannot draw {path} ({type(err).__name__}: {err})")
        finally:
            keras.backend.clear_session()
