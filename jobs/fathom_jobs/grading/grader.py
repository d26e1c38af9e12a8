"""``Grader``: extraction + equivalence with a verdict cache and a symbolic worker pool.

A solve-rate or eval stage grades k samples of each problem, and samples of one problem
repeat a handful of answers. So a batch is graded as: extract each answer, look the
(mode, prediction, gold) triple up in the cache, canonicalise the new ones (``normalize``
for strict, LIMO's ``strip_string`` for limo) and look that up too, settle what the
string/numeric fast paths can, and send only the rest - deduplicated - to the worker
pool, where sympy/math-verify run under a per-item timeout. A timeout is "not equal"
and is counted in ``stats``.
"""

from __future__ import annotations

import atexit
import threading
from collections.abc import Iterable
from dataclasses import dataclass, fields

from fathom_jobs.grading.extraction import ExtractOptions, extract_answer
from fathom_jobs.grading.limo import limo_fast_symbolic, limo_math_equal
from fathom_jobs.grading.limo_text import limo_strip_string
from fathom_jobs.grading.normalize import normalize
from fathom_jobs.grading.strict import NeedsSymbolic, defer, strict_equal_normalized

__all__ = ["Grader", "GradingStats", "MODES", "grade", "grade_batch", "is_equivalent", "default_grader"]

MODES = ("strict", "limo")
_LIMO_EXTRACTION = ExtractOptions(style="limo")


@dataclass
class GradingStats:
    """Counters since the grader was created (``Grader.stats``)."""

    gradings: int = 0  # (prediction, gold) comparisons requested
    no_answer: int = 0  # responses with no extractable answer (graded False)
    cache_hits: int = 0  # answered from the cache or by an identical pair in the same batch
    fast: int = 0  # distinct pairs settled without sympy
    symbolic: int = 0  # distinct pairs sent to the worker pool
    timeouts: int = 0  # pool items killed at the per-item deadline (graded False)
    soft_timeouts: int = 0  # sympy calls cut short inside a worker (that check = False)
    worker_errors: int = 0  # pool items whose worker died (graded False)

    def as_dict(self) -> dict[str, int]:
        return {f.name: getattr(self, f.name) for f in fields(self)}


def _check_mode(mode: str) -> str:
    if mode not in MODES:
        raise ValueError(f"unknown grading mode {mode!r}; expected one of {MODES}")
    return mode


class Grader:
    """Grades answers; holds the verdict cache and the symbolic worker pool.

    mode: default mode of the methods (``"strict"`` or ``"limo"``).
    workers: symbolic worker processes (default: CPU count, at most 8); started on first need.
    timeout_s: hard per-item limit of the symbolic path.
    extract_options: how answers are extracted; default per mode (``"limo"`` extracts
        like the LIMO evaluation, ``"strict"`` per ``extraction.py``).
    fast_paths: False sends every undecided-by-string pair to sympy (tests use it to
        check the fast paths agree with the symbolic ones).
    max_cache_entries: the caches are emptied when they grow past this.

    Use as a context manager, or call ``close()``, to stop the workers. Not thread-safe.
    """

    def __init__(
        self,
        mode: str = "strict",
        *,
        workers: int | None = None,
        timeout_s: float = 5.0,
        extract_options: ExtractOptions | None = None,
        fast_paths: bool = True,
        max_cache_entries: int = 2_000_000,
        memory_limit_mb: int | None = 3072,
    ):
        self.mode = _check_mode(mode)
        self.workers = workers
        self.timeout_s = timeout_s
        self.extract_options = extract_options
        self.fast_paths = fast_paths
        self.max_cache_entries = max_cache_entries
        self.memory_limit_mb = memory_limit_mb
        self.stats = GradingStats()
        # Verdicts by (mode, prediction, gold) as given, and by their canonical forms.
        self._verdicts: dict[tuple[str, str, str], bool] = {}
        self._canonical_verdicts: dict[tuple[str, str, str], bool] = {}
        self._canonical: dict[tuple[str, str], str] = {}
        self._pool = None

    # -------------------------------------------------------------- lifecycle
    def close(self) -> None:
        if self._pool is not None:
            self._pool.close()
            self._pool = None

    def __enter__(self) -> Grader:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def _symbolic_pool(self):
        if self._pool is None:
            from fathom_jobs.grading.pool import SymbolicPool

            self._pool = SymbolicPool(self.workers, self.timeout_s, self.memory_limit_mb, self.fast_paths)
        return self._pool

    # -------------------------------------------------------------- pieces
    def extract(self, response_text: str, mode: str | None = None) -> str | None:
        mode = _check_mode(mode or self.mode)
        options = self.extract_options or (_LIMO_EXTRACTION if mode == "limo" else None)
        return extract_answer(response_text, options)

    def _canonical_form(self, mode: str, answer: str) -> str:
        key = (mode, answer)
        canonical = self._canonical.get(key)
        if canonical is None:
            canonical = limo_strip_string(answer) if mode == "limo" else normalize(answer)
            self._canonical[key] = canonical
        return canonical

    def _fast_verdict(self, mode: str, pred: str, gold: str) -> bool | None:
        """Verdict without sympy, or None when the pair needs the pool."""
        try:
            if mode == "limo":
                return limo_math_equal(pred, gold, limo_fast_symbolic if self.fast_paths else defer)
            if not self.fast_paths:
                return strict_equal_normalized(pred, gold, defer) if pred == gold else None
            return strict_equal_normalized(pred, gold, defer)
        except NeedsSymbolic:
            return None
        except RecursionError:
            return False

    # -------------------------------------------------------------- grading
    def equivalent_batch(self, pairs: Iterable[tuple[str | None, object]], mode: str | None = None) -> list[bool]:
        """``is_equivalent`` for many (prediction, gold) pairs; a None prediction is False."""
        mode = _check_mode(mode or self.mode)
        if len(self._verdicts) > self.max_cache_entries or len(self._canonical) > self.max_cache_entries:
            self._verdicts.clear()
            self._canonical_verdicts.clear()
            self._canonical.clear()
        verdicts = self._verdicts
        stats = self.stats
        results: list[bool] = []
        waiting: dict[tuple[str, str, str], list[int]] = {}
        for prediction, gold in pairs:
            stats.gradings += 1
            if prediction is None:
                results.append(False)
                stats.no_answer += 1
                continue
            key = (mode, prediction, gold if isinstance(gold, str) else str(gold))
            verdict = verdicts.get(key)
            if verdict is not None:
                stats.cache_hits += 1
                results.append(verdict)
            else:
                waiting.setdefault(key, []).append(len(results))
                results.append(False)
        if waiting:
            self._settle(mode, waiting, results)
        return results

    def _settle(self, mode: str, waiting: dict[tuple[str, str, str], list[int]], results: list[bool]) -> None:
        evaluated_before = self.stats.fast + self.stats.symbolic
        by_canonical: dict[tuple[str, str, str], list[tuple[str, str, str]]] = {}
        for key in waiting:
            _, prediction, gold = key
            canonical = (mode, self._canonical_form(mode, prediction), self._canonical_form(mode, gold))
            by_canonical.setdefault(canonical, []).append(key)
        unresolved: list[tuple[str, str, str]] = []
        settled: dict[tuple[str, str, str], bool] = {}
        for canonical in by_canonical:
            verdict = self._canonical_verdicts.get(canonical)
            if verdict is None:
                verdict = self._fast_verdict(mode, canonical[1], canonical[2])
                if verdict is None:
                    unresolved.append(canonical)
                    continue
                self.stats.fast += 1
            settled[canonical] = verdict
        if unresolved:
            self.stats.symbolic += len(unresolved)
            outcomes = self._symbolic_pool().run(unresolved)
            for canonical, outcome in zip(unresolved, outcomes):
                self.stats.timeouts += outcome.timed_out
                self.stats.soft_timeouts += outcome.soft_timeouts
                self.stats.worker_errors += outcome.crashed
                settled[canonical] = outcome.verdict
        # Every waiting pair not evaluated itself was a duplicate or had a cached canonical form.
        evaluated = self.stats.fast + self.stats.symbolic - evaluated_before
        self.stats.cache_hits += sum(len(indices) for indices in waiting.values()) - evaluated
        for canonical, keys in by_canonical.items():
            verdict = settled[canonical]
            self._canonical_verdicts[canonical] = verdict
            for key in keys:
                self._verdicts[key] = verdict
                for index in waiting[key]:
                    results[index] = verdict

    def is_equivalent(self, prediction: str, gold: str, mode: str | None = None) -> bool:
        return self.equivalent_batch([(prediction, gold)], mode)[0]

    def grade_batch(self, pairs: Iterable[tuple[str, object]], mode: str | None = None) -> list[bool]:
        """``grade`` for many (response_text, gold) pairs."""
        mode = _check_mode(mode or self.mode)
        options = self.extract_options or (_LIMO_EXTRACTION if mode == "limo" else None)
        extracted = ((extract_answer(response, options), gold) for response, gold in pairs)
        return self.equivalent_batch(extracted, mode)

    def grade(self, response_text: str, gold: str, mode: str | None = None) -> bool:
        return self.grade_batch([(response_text, gold)], mode)[0]


# ------------------------------------------------------------------ module-level API

_default_graders: dict[tuple[int | None, float], Grader] = {}
_default_lock = threading.Lock()


def default_grader(*, workers: int | None = None, timeout_s: float = 5.0) -> Grader:
    """The process-wide grader behind the module-level functions (one per pool setting)."""
    key = (workers, float(timeout_s))
    grader = _default_graders.get(key)
    if grader is None:
        grader = _default_graders[key] = Grader(workers=workers, timeout_s=timeout_s)
    return grader


@atexit.register
def _close_default_graders() -> None:
    for grader in _default_graders.values():
        grader.close()


def is_equivalent(prediction: str, gold: str, mode: str = "strict") -> bool:
    """Whether an extracted answer equals the gold answer under ``mode`` (strict | limo)."""
    with _default_lock:
        return default_grader().is_equivalent(prediction, gold, mode)


def grade(response_text: str, gold: str, mode: str = "strict") -> bool:
    """Extract the answer from a response and compare it with ``gold``; no answer is False."""
    with _default_lock:
        return default_grader().grade(response_text, gold, mode)


def grade_batch(
    pairs: Iterable[tuple[str, str]],
    mode: str = "strict",
    *,
    workers: int | None = None,
    timeout_s: float = 5.0,
) -> list[bool]:
    """``grade`` for many (response_text, gold) pairs, deduplicated and cached."""
    with _default_lock:
        return default_grader(workers=workers, timeout_s=timeout_s).grade_batch(pairs, mode)
