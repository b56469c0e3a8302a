"""Search a two-headed CNN's architecture and hyperparameters together with hyperopt's TPE.

Every finished trial is written as `results/<model_name>.txt.json` and into the trials pickle
(`results.pkl`), both atomically; running the script again resumes the search.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import signal
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

EXIT_SIGINT, EXIT_SIGTERM = 130, 143
FAILURES_IN_A_ROW = 3


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.ArgumentDefaultsHelpFormatter
    )
    parser.add_argument("--dataset", default="cifar100", help="cifar100 | cifar10 | synthetic | FILE.npz")
    parser.add_argument("--data-dir", default=None, help="folder holding cifar-100-python.tar.gz (default: Keras's cache, ~/.keras/datasets)")
    parser.add_argument("--max-evals", type=int, default=None, help="total trials, resumed ones included (default: no limit, run until Ctrl-C)")
    parser.add_argument("--epochs", type=int, default=100, help="most epochs per trial")
    parser.add_argument("--patience", type=int, default=15, help="early stopping: epochs without a better validation fine accuracy (best weights restored)")
    parser.add_argument("--prune", choices=["median", "none"], default="median", help="stop trials that trail the median of finished trials")
    parser.add_argument("--algo", choices=["tpe", "random"], default="tpe", help="hyperopt suggestion algorithm")
    parser.add_argument("--seed", type=int, default=0, help="random seed of suggestions, data split and weights")
    parser.add_argument("--results-dir", default="results", help="folder of the per-trial result JSON files")
    parser.add_argument("--trials-file", default="results.pkl", help="hyperopt trials pickle, rewritten after every trial")
    parser.add_argument("--select-on", choices=["validation", "test"], default="validation",
                        help="what selects epochs and trials: a validation split, or the test set as in 2017")
    parser.add_argument("--train-subset", type=int, default=None, help="train on this many images (stratified) for quick runs")
    parser.add_argument("--space", choices=["full", "tiny"], default="full", help="the real search space, or tiny networks for smoke tests")
    parser.add_argument("--precision", choices=["auto", "float32", "mixed_bfloat16"], default="auto",
                        help="auto: mixed_bfloat16 on a GPU, float32 on CPU")
    parser.add_argument("--no-plot", action="store_true", help="do not draw model_demo.png and model_best.png")
    parser.add_argument("--verbose", type=int, choices=[0, 1, 2], default=2, help="Keras: 0 silent, 1 progress bar, 2 one line per epoch")
    args = parser.parse_args(argv)
    for name in ("max_evals", "epochs", "patience", "train_subset"):
        value = getattr(args, name)
        if value is not None and value < 1:
            parser.error(f"--{name.replace('_', '-')} must be at least 1")
    return args


def report(line: str) -> None:
    """Print a line without tearing hyperopt's progress bar."""
    from tqdm import tqdm

    tqdm.write(line)


class SignalGuard:
    """Turn SIGINT/SIGTERM into KeyboardInterrupt, but never in the middle of saving."""

    def __init__(self):
        self.signum = None
        self._saving = False
        self._pending = False
        self._previous = {sig: signal.signal(sig, self._handle) for sig in (signal.SIGINT, signal.SIGTERM)}

    def _handle(self, signum, frame):
        self.signum = signum
        if self._saving:
            self._pending = True
        else:
            raise KeyboardInterrupt

    @contextlib.contextmanager
    def saving(self):
        """Hold signals back while the block runs; act on them after."""
        self._saving = True
        try:
            yield
        finally:
            self._saving = False
        if self._pending:
            raise KeyboardInterrupt

    def restore(self) -> None:
        """Put the previous signal handlers back."""
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)


def main(argv=None) -> int:
    args = parse_args(argv)
    from utils import RunLock

    lock = RunLock(args.results_dir)
    if not lock.acquire():
        print(f"error: a search is already running on {args.results_dir}/ ({lock.holder}); "
              "wait for it to end or use another --results-dir", file=sys.stderr)
        return 2
    guard = SignalGuard()
    try:
        return Search(args, guard).run()
    except KeyboardInterrupt:
        print("\nInterrupted before the search started; nothing was changed.", file=sys.stderr)
        return EXIT_SIGTERM if guard.signum == signal.SIGTERM else EXIT_SIGINT
    finally:
        lock.release()
        guard.restore()


class Search:
    """One TPE search: its trials, its data, and what happens after every trial."""

    def __init__(self, args: argparse.Namespace, guard: SignalGuard):
        self.args = args
        self.guard = guard
        self.stop_reason = None

    def run(self) -> int:
        import numpy as np
        from hyperopt import fmin, rand, tpe
        from hyperopt.exceptions import AllTrialsFailed

        import hyperspace
        from datasets import DatasetError, load_dataset
        from utils import TrialsFileError

        args = self.args
        try:
            self.trials = self.load_or_create_trials()
        except TrialsFileError as err:
            print(f"error: {err}", file=sys.stderr)
            return 2
        done = len(self.trials.trials)
        if args.max_evals is not None and done >= args.max_evals:
            print(f"Nothing to do: {done} trials already, --max-evals {args.max_evals}.")
            self.print_leaderboard()
            return 0
        try:
            data = load_dataset(args.dataset, train_subset=args.train_subset, seed=args.seed, data_dir=args.data_dir)
        except DatasetError as err:
            print(f"error: {err}", file=sys.stderr)
            return 2
        self.data = data.selecting_on_test() if args.select_on == "test" else data
        print(self.data.summary())
        self.best_loss = self.current_best_loss()
        if not args.no_plot:
            self.plot(hyperspace.DEMO_SPACE, "model_demo.png")

        try:
            fmin(
                self.objective,
                hyperspace.SPACES[args.space],
                algo=tpe.suggest if args.algo == "tpe" else rand.suggest,
                max_evals=args.max_evals,
                trials=self.trials,
                # Seeded by the trial count too, so that a resumed run asks for new points.
                rstate=np.random.default_rng([args.seed, done]),
                early_stop_fn=self.after_trial,
                show_progressbar=args.max_evals is not None,
                return_argmin=False,
            )
        except AllTrialsFailed:
            pass  # fmin's closing argmin; the failures are reported below
        except KeyboardInterrupt:
            name = "SIGTERM" if self.guard.signum == signal.SIGTERM else "SIGINT"
            print(f"\n{name}: stopped; the running trial is dropped, {len(self.trials.trials) - 1} finished trials are saved.")
            self.print_leaderboard()
            print(f"Resume with: {self.resume_command()}")
            return EXIT_SIGTERM if self.guard.signum == signal.SIGTERM else EXIT_SIGINT
        self.print_leaderboard()
        if self.stop_reason:
            print(f"error: {self.stop_reason}", file=sys.stderr)
            return 1
        return 0

    def load_or_create_trials(self):
        """Trials from the pickle, without the ones that never finished; or new Trials."""
        from hyperopt import JOB_STATE_DONE, Trials

        from utils import load_trials

        if not os.path.exists(self.args.trials_file):
            print(f"Starting a new search: trials go to {self.args.trials_file}, results to {self.args.results_dir}/")
            return Trials()
        trials = load_trials(self.args.trials_file)
        finished = [t for t in trials._dynamic_trials if t["state"] == JOB_STATE_DONE]
        if len(finished) != len(trials._dynamic_trials):
            trials._dynamic_trials[:] = finished
            trials._ids = {t["tid"] for t in finished}
        trials.refresh()
        best = self.current_best_loss(trials)
        best_text = "none yet" if best is None else f"{-best:.4f}"
        print(f"Resuming: {len(finished)} trials, best fine accuracy {best_text}")
        return trials

    def current_best_loss(self, trials=None):
        losses = [loss for loss in (self.trials if trials is None else trials).losses() if loss is not None]
        return min(losses) if losses else None

    def finished_curves(self):
        """Validation fine accuracy per epoch of every finished trial (2017's key name too)."""
        curves = []
        for result in self.trials.results:
            history = result.get("history") or {}
            curve = history.get("val_fine_outputs_accuracy") or history.get("val_fine_outputs_acc")
            if result.get("status") == "ok" and curve:
                curves.append(curve)
        return curves

    def objective(self, space: dict) -> dict:
        """Train one sampled network; hyperopt minimises the returned `loss`."""
        import keras

        from neural_net import build_and_train
        from pruning import MedianStoppingRule

        args = self.args
        tid = len(self.trials.trials) - 1
        report(f"Trial {tid}: training for up to {args.epochs} epochs")
        callbacks = [MedianStoppingRule(self.finished_curves())] if args.prune == "median" else []
        model, result = build_and_train(
            space, self.data, epochs=args.epochs, callbacks=callbacks, patience=args.patience,
            verbose=args.verbose, selected_on=args.select_on, precision=args.precision,
            seed=args.seed * 100003 + tid,
        )
        del model
        keras.backend.clear_session()
        return result

    def after_trial(self, trials, *_):
        """Save the finished trial (pickle, then JSON), report it; stop after repeated failures."""
        from utils import save_json_result, save_trials

        trial = trials.trials[-1]
        result = trial["result"]
        result["tid"] = trial["tid"]
        with self.guard.saving():
            save_trials(trials, self.args.trials_file)
            save_json_result(result, self.args.results_dir)
        improved = result.get("status") == "ok" and (self.best_loss is None or result["loss"] < self.best_loss)
        if improved:
            self.best_loss = result["loss"]
        report(self.trial_line(result))
        if improved and not self.args.no_plot:
            self.plot(result["space"], "model_best.png")
        errors = [t["result"].get("error") for t in trials.trials[-FAILURES_IN_A_ROW:]]
        if len(errors) == FAILURES_IN_A_ROW and errors[0] and errors.count(errors[0]) == FAILURES_IN_A_ROW:
            self.stop_reason = f"{FAILURES_IN_A_ROW} trials in a row failed with: {errors[0]}"
            return True, []
        return False, []

    def trial_line(self, result: dict) -> str:
        best = "none yet" if self.best_loss is None else f"{-self.best_loss:.4f}"
        if result.get("status") != "ok":
            return f"Trial {result['tid']} FAILED: {result.get('error')} ({result.get('train_seconds', 0):.0f} s); best so far {best}"
        coarse = result.get("coarse_best_accuracy")
        coarse_text = "n/a" if coarse is None else f"{coarse:.4f}"
        return (
            f"Trial {result['tid']}: fine {result['fine_best_accuracy']:.4f} / coarse {coarse_text} "
            f"{self.args.select_on} accuracy, {result['epochs_trained']} epochs"
            f"{', pruned' if result['pruned'] else ''}, {result['train_seconds']:.0f} s; best so far {best}"
        )

    def print_leaderboard(self, top: int = 5) -> None:
        ok = sorted((r for r in self.trials.results if r.get("status") == "ok"), key=lambda r: r["loss"])[:top]
        if not ok:
            print("No finished trial yet.")
            return
        print(f"\nTop {len(ok)} of {len(self.trials.trials)} trials:")
        print(f"{'rank':>4} {'trial':>5} {'fine':>7} {'coarse':>7} {'test':>7} {'epochs':>6} {'pruned':>6}  model")
        for rank, r in enumerate(ok, 1):
            def fmt(v):
                return f"{v:.4f}" if isinstance(v, (int, float)) else "   -  "
            print(f"{rank:>4} {str(r.get('tid', '-')):>5} {fmt(-r['loss']):>7} {fmt(r.get('coarse_best_accuracy')):>7} "
                  f"{fmt(r.get('test_fine_accuracy')):>7} {str(r.get('epochs_trained', '-')):>6} "
                  f"{'yes' if r.get('pruned') else 'no':>6}  {r.get('model_name', '')}")

    def resume_command(self) -> str:
        return "python3 " + " ".join([os.path.basename(sys.argv[0])] + sys.argv[1:])

    def plot(self, space: dict, path: str) -> None:
        """Draw the network of `space`; without Graphviz, warn once and go on."""
        if getattr(self, "_plot_broken", False):
            return
        import keras

        from neural_net import build_model
        from utils import warn

        from keras.src.utils.model_visualization import check_graphviz

        if not check_graphviz():
            self._plot_broken = True
            warn(f"cannot draw {path}: install Graphviz (apt install graphviz) and pydot for model plots")
            return
        try:
            model = build_model(space, self.data.input_shape, self.data.num_fine, self.data.num_coarse,
                                horizontal_flip=self.data.horizontal_flip)
            keras.utils.plot_model(model, to_file=path, show_shapes=True)
            report(f"Drew {path}")
        except Exception as err:  # noqa: BLE001: a broken plot must not stop the search
            self._plot_broken = True
            warn(f"cannot draw {path} ({type(err).__name__}: {err})")
        finally:
            keras.backend.clear_session()


if __name__ == "__main__":
    sys.exit(main())
