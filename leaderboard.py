"""A leaderboard of a search's trials, as the search prints it when it stops and the analysis prints it: its title, its
columns, a row per trial."""

from __future__ import annotations

from cli import duration, parameters, plural


def training_seconds(trials: list[dict]) -> list[float] | None:
    """Each trial's train_seconds, a failed one's that could not record them (a crashed Spark worker's) as none; None
    where a finished trial did not record them (the 2017 files)."""
    if any(t.get("status") == "ok" and t.get("train_seconds") is None for t in trials):
        return None
    return [t.get("train_seconds") or 0.0 for t in trials]


def leaderboard_title(shown: int, trials: list[dict]) -> str:
    """A leaderboard's first line: how many of how many trials, the failed and pruned ones, the training time they took."""
    failed, pruned = sum(t.get("status") != "ok" for t in trials), sum(bool(t.get("pruned")) for t in trials)
    seconds = training_seconds(trials)
    spent = "" if seconds is None else f"; {duration(sum(seconds))} of training"
    return f"Top {shown} of {plural(len(trials), 'trial')} ({failed} failed, {pruned} pruned{spent}):"


def leaderboard_header(last: str) -> str:
    """A leaderboard's column names: a trial's figures (leaderboard_row), then `last`."""
    return f"{'rank':>4} {'trial':>5} {'fine':>7} {'coarse':>7} {'test':>7} {'epochs':>6} {'pruned':>6}  {last}"


PARAMS_HEADER = f"{'params':>7}"  # a leaderboard's column of each network's size (params_cell)


def params_cell(n_params: int | None) -> str:
    """A leaderboard's cell of a network's parameters: "7.21 M", or "-" where its result did not count them (2017's)."""
    return f"{parameters(n_params) if n_params else '-':>7}"


def leaderboard_row(rank: int, tid, fine, coarse, test, epochs, pruned, last: str) -> str:
    """One trial's row of a leaderboard, "-" for a figure it does not record (coarse, on a dataset without coarse labels)."""
    def fmt(v):
        return f"{v:.4f}" if isinstance(v, (int, float)) and not isinstance(v, bool) else "-"

    return (f"{rank:>4} {'-' if tid is None else tid:>5} {fmt(fine):>7} {fmt(coarse):>7} {fmt(test):>7} {epochs or '-':>6} "
            f"{'yes' if pruned else 'no':>6}  {last}")


def search_leaderboard(results: list[dict], top: int = 5) -> str:
    """The leaderboard that a search prints when it stops: its best `top` finished trials of `results`, each with its
    network's size and its result file's name."""
    ok = sorted((r for r in results if r.get("status") == "ok"), key=lambda r: r["loss"])[:top]
    if not ok:
        return "No finished trial yet."
    rows = [leaderboard_row(rank, r.get("tid"), -r["loss"], r.get("coarse_best_accuracy"), r.get("test_fine_accuracy"),
                            r.get("epochs_trained"), r.get("pruned"), f"{params_cell(r.get('n_params'))}  {r.get('model_name', '')}")
            for rank, r in enumerate(ok, 1)]
    return "\n".join([f"\n{leaderboard_title(len(ok), results)}", leaderboard_header(f"{PARAMS_HEADER}  model"), *rows])
