"""`fathom run --local`: live progress per stage (rich), then status, cost and evaluation tables."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from .local import LocalRun, run_local
from .validate import RecipeInvalid

PHASE_STYLE = {"Succeeded": "green", "Cached": "cyan", "Running": "yellow", "Failed": "red",
               "Waiting": "dim", "Pending": "dim", "Suspended": "magenta", "Skipped": "dim"}


def add_run_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("file", help="The recipe (FathomRecipe YAML).")
    parser.add_argument("--local", action="store_true", required=True,
                        help="Run every stage as a local process (the only mode of `run`; the cluster mode is the operator).")
    parser.add_argument("--runs", default="runs", help="file:// store for outputs and logs (default: ./runs).")
    parser.add_argument("--slots", type=int, default=1, help="Stage processes run at once (default 1).")
    parser.add_argument("--plain", action="store_true", help="Print one line per change instead of live bars.")


def _stage_table(run: LocalRun) -> Any:
    from rich.progress_bar import ProgressBar
    from rich.table import Table

    status = run.status
    table = Table(title=f"{run.name}: {status.get('phase', 'Pending')} {status.get('progress') or ''}".rstrip(),
                  title_justify="left", expand=False)
    for column in ("stage", "phase", "progress", "", "attempts", "CPU/GPU-h", "USD"):
        table.add_column(column, justify="right" if column in ("attempts", "CPU/GPU-h", "USD") else "left")
    parsed = run.parsed
    order = parsed.order if hasattr(parsed, "order") else list(status.get("stages") or {})
    for name in order:
        st = (status.get("stages") or {}).get(name, {})
        phase = st.get("phase", "Pending")
        progress = st.get("progress") or {}
        fraction = 1.0 if phase in ("Succeeded", "Cached") else float(progress.get("fraction") or 0.0)
        detail = progress.get("message") or (f"{progress['step']}/{progress['total']}" if progress.get("total") else "")
        table.add_row(name, f"[{PHASE_STYLE.get(phase, '')}]{phase}[/]", ProgressBar(total=1.0, completed=fraction, width=24),
                      str(detail)[:40], str(st.get("attempts", 0)), f"{st.get('gpuHours', 0.0):.4f}",
                      f"${st.get('costUSD', 0.0):.4f}")
    return table


def _plain_printer() -> Callable[[LocalRun], None]:
    seen: dict[str, str] = {}

    def show(run: LocalRun) -> None:
        for name, st in (run.status.get("stages") or {}).items():
            line = f"{st.get('phase')}"
            if seen.get(name) != line:
                seen[name] = line
                print(f"{name}: {line}" + (f" ({st['message']})" if st.get("message") else ""), flush=True)

    return show


def cmd_run(args: argparse.Namespace) -> int:
    path = Path(args.file)
    if not path.exists():
        print(f"{path}: no such file", file=sys.stderr)
        return 1
    live = None
    try:
        if args.plain or not sys.stdout.isatty():
            display = _plain_printer()
        else:
            from rich.live import Live

            live = Live(refresh_per_second=4)
            live.start()

            def display(run: LocalRun) -> None:
                live.update(_stage_table(run))
        run = run_local(path, Path(args.runs), slots=args.slots, display=display)
    except RecipeInvalid as exc:
        for error in exc.errors:
            print(error, file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("interrupted: rerun the same command to resume", file=sys.stderr)
        return 130
    finally:
        if live is not None:
            live.stop()
    print(summary(run))
    return 0 if run.status.get("phase") == "Succeeded" else 1


def summary(run: LocalRun) -> str:
    from .results import report_from_status

    status = run.status
    lines = [f"{run.name}: {status.get('phase')}"]
    for condition in status.get("conditions") or []:
        if condition.get("status") == "True":
            lines.append(f"  {condition['type']}: {condition.get('message', '')}")
    for name, st in (status.get("stages") or {}).items():
        if st.get("phase") == "Failed":
            lines.append(f"  {name} failed: {st.get('message', '')}")
    lines += ["", local_cost_table(run).rstrip(), "", report_from_status(status, title="Evaluation", with_costs=False).rstrip()]
    return "\n".join(lines)


def local_cost_table(run: LocalRun) -> str:
    """Per stage: CPU-seconds of its local processes and their price at the pool's cpuHourUSD.

    Read from the attempts' history (exact), not the stage totals, which are rounded to cents.
    """
    from .observe import parse_time

    rows = [("STAGE", "PHASE", "CPU-SECONDS", "USD")]
    total_seconds = total_usd = 0.0
    for name, st in (run.status.get("stages") or {}).items():
        seconds = usd = 0.0
        for record in st.get("history") or []:
            start, end = parse_time(record.get("startTime")), parse_time(record.get("completionTime"))
            if start and end:
                seconds += (end - start).total_seconds()
            usd += float(record.get("costUSD") or 0.0)
        total_seconds, total_usd = total_seconds + seconds, total_usd + usd
        rows.append((name, st.get("phase", ""), f"{seconds:,.0f}", f"${usd:.4f}"))
    rows.append(("total", run.status.get("phase", ""), f"{total_seconds:,.0f}", f"${total_usd:.4f}"))
    widths = [max(len(r[i]) for r in rows) for i in range(4)]
    lines = [f"{r[0]:<{widths[0]}}  {r[1]:<{widths[1]}}  {r[2]:>{widths[2]}}  {r[3]:>{widths[3]}}" for r in rows]
    lines.insert(len(lines) - 1, "-" * len(lines[0]))
    return f"{run.name}: cost of this run (cached stages cost nothing)\n" + "\n".join(lines) + "\n"
