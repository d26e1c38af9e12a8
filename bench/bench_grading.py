"""Grading throughput: ``grade_batch`` on 1M (response, gold) pairs vs plain sympy.

The mix imitates a solve-rate stage: 1,000 problems x 1,000 samples, each problem's
samples drawn (Zipf-like) from 5-10 distinct answer strings - the right answer in several
formattings (boxed, "The final answer is", leading zeros, \\dfrac vs a/b, \\left( \\right),
units), near misses and wrong answers, some LaTeX-heavy, a few pathological
(``10^{10^{10}}``, giant factorials, deep nesting). Gold styles follow the eval sets:
AIME integers, HMMT radicals/fractions/pi/tuples, AMC floats, MATH intervals/sets/
degrees/text/matrices/polynomials, GPQA letters.

Baseline: a random sample of the same pairs graded the plain way - extract the box, parse
both sides with a LaTeX-to-sympy parser, ``simplify(a - b) == 0``, no cache, no fast path
(5 s alarm per pair so a pathological sample cannot hang the run) - extrapolated per pair.

    PYTHONPATH=jobs .venv/bin/python bench/bench_grading.py [--pairs 1000000] [--modes strict,limo]
"""

from __future__ import annotations

import argparse
import os
import platform
import random
import signal
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "jobs"))

from fathom_jobs.grading import Grader, extract_boxed  # noqa: E402


def _radical(rng: random.Random) -> tuple[str, list[str], list[str]]:
    a, b = rng.randint(2, 9), rng.choice([2, 3, 5, 6, 7, 10, 11, 13, 15, 17, 23])
    gold = f"{a}\\sqrt{{{b}}}"
    right = [gold, f"\\sqrt{{{a * a * b}}}", f"{a} \\sqrt{{{b}}}", f"\\displaystyle {a}\\sqrt{{{b}}}"]
    wrong = [f"{a + 1}\\sqrt{{{b}}}", f"\\sqrt{{{a * b}}}", f"{a * a * b}", f"{a}\\sqrt{{{b + 1}}}"]
    return gold, right, wrong


def _fraction(rng: random.Random) -> tuple[str, list[str], list[str]]:
    p, q = rng.randint(1, 40), rng.randint(41, 97)
    gold = f"\\frac{{{p}}}{{{q}}}"
    right = [gold, f"\\dfrac{{{p}}}{{{q}}}", f"{p}/{q}", f"\\frac{{{2 * p}}}{{{2 * q}}}"]
    wrong = [f"\\frac{{{q}}}{{{p}}}", f"{p / q:.4f}", f"\\frac{{{p + 1}}}{{{q}}}"]
    return gold, right, wrong


def _expression(rng: random.Random) -> tuple[str, list[str], list[str]]:
    a, b = rng.randint(1, 9), rng.randint(2, 19)
    gold = f"\\frac{{{a}+\\sqrt{{{b}}}}}{{2}}"
    right = [gold, f"\\frac{{\\sqrt{{{b}}}+{a}}}{{2}}", f"\\left(\\frac{{{a}}}{{2}}+\\frac{{\\sqrt{{{b}}}}}{{2}}\\right)"]
    wrong = [f"\\frac{{{a}-\\sqrt{{{b}}}}}{{2}}", f"{a}+\\sqrt{{{b}}}", f"1-\\frac{{{a}}}{{\\pi}}"]
    return gold, right, wrong


def _algebraic(rng: random.Random) -> tuple[str, list[str], list[str]]:
    a, b = rng.randint(1, 9), rng.randint(1, 9)
    gold = f"x^2+{a + b}x+{a * b}"
    right = [gold, f"(x+{a})(x+{b})", f"{a * b}+{a + b}x+x^2"]
    wrong = [f"(x+{a})(x-{b})", f"x^2+{a * b}", f"(x+{a + b})^2"]
    return gold, right, wrong


def _interval(rng: random.Random) -> tuple[str, list[str], list[str]]:
    a, b = rng.randint(-9, 0), rng.randint(1, 9)
    gold = f"[{a}, {b})"
    right = [gold, f"\\left[ {a}, {b} \\right)", f"x \\in [{a},{b})"]
    wrong = [f"({a}, {b})", f"[{a}, {b}]", f"[{a}, {b + 1})"]
    return gold, right, wrong


def _tuple(rng: random.Random) -> tuple[str, list[str], list[str]]:
    x, y = rng.randint(-9, 9), rng.randint(-9, 9)
    gold = f"({x}, {y})"
    right = [gold, f"\\left({x},{y}\\right)", f"x={x}, y={y}"]
    wrong = [f"({y}, {x + 1})", f"({x}, {y + 2})", f"({x},{y},0)"]
    return gold, right, wrong


def _integer(rng: random.Random) -> tuple[str, list[str], list[str]]:
    n = rng.randint(0, 999)
    gold = str(n)
    right = [gold, f"{n:03d}", f"{n}.0", f"{n} \\text{{ ways}}", f"\\mathbf{{{n}}}"]
    wrong = [str(n + 1), str(n * 100), str(rng.randint(0, 999)), str(abs(n - 7)), f"{n}\\sqrt{{2}}"]
    return gold, right, wrong


def _amc_float(rng: random.Random) -> tuple[str, list[str], list[str]]:
    n = rng.randint(1, 3000)
    gold = f"{n}.0"
    right = [str(n), f"{n:,}", f"\\${n}"]
    wrong = [str(n + 2), f"{n / 10}", f"\\frac{{{n}}}{{3}}"]
    return gold, right, wrong


def _math_misc(rng: random.Random) -> tuple[str, list[str], list[str]]:
    kind = rng.randrange(4)
    if kind == 0:
        d = rng.choice([30, 45, 60, 120, 135])
        return f"{d}^\\circ", [f"{d}", f"{d}^{{\\circ}}", f"{d} \\text{{ degrees}}"], [f"{d + 15}^\\circ", f"{180 - d}"]
    if kind == 1:
        a, b = sorted(rng.sample(range(-9, 10), 2))
        return f"\\{{{a}, {b}\\}}", [f"\\{{{b}, {a}\\}}", f"{a}, {b}"], [f"\\{{{a}, {b + 1}\\}}", f"{a}"]
    if kind == 2:
        word = rng.choice(["\\text{Evelyn}", "\\text{odd}", "\\text{(C)}"])
        return word, [word.replace("\\text", "\\textbf"), word[6:-1]], ["\\text{even}", "\\text{Bob}"]
    m = [rng.randint(-5, 5) for _ in range(4)]
    gold = f"\\begin{{pmatrix}} {m[0]} & {m[1]} \\\\ {m[2]} & {m[3]} \\end{{pmatrix}}"
    return gold, [gold.replace("pmatrix", "bmatrix")], [gold.replace(f"{m[3]} \\end", f"{m[3] + 1} \\end")]


def _letter(rng: random.Random) -> tuple[str, list[str], list[str]]:
    gold = rng.choice("ABCD")
    others = [c for c in "ABCD" if c != gold]
    return gold, [gold, f"({gold})", f"\\text{{{gold}}}"], others


_PATHOLOGICAL = [
    "10^{10^{10}}",
    "1000000!",
    "(" * 60 + "1" + ")" * 60,
    "\\sqrt{\\sqrt{\\sqrt{\\sqrt{\\sqrt{\\sqrt{\\sqrt{\\sqrt{2}}}}}}}}^{10^{9}}",
    "9^{9^{9^{9}}}",
]
_STYLES = [(_integer, 40), (_radical, 8), (_fraction, 8), (_expression, 6), (_amc_float, 10), (_interval, 5),
           (_tuple, 5), (_math_misc, 8), (_letter, 10), (_algebraic, 3)]  # fmt: skip


def _respond(answer: str, rng: random.Random) -> str:
    """A short response in one of the ways models state an answer."""
    style = rng.randrange(5)
    if style == 0:
        return f"Adding the cases gives the total.\n\nTherefore the answer is $\\boxed{{{answer}}}$."
    if style == 1:
        return f"<think>\nLet me check the casework again... \\boxed{{0}} no.\n</think>\n\n**Final Answer**\n\\[\n\\boxed{{{answer}}}\n\\]"
    if style == 2:
        return f"So we get ${answer}$.\n\nThe final answer is ${answer}$."
    if style == 3:
        return f"\\[ \\boxed{{ {answer} }} \\]"
    return f"Answer: \\boxed{{{answer}}}"


def build_pairs(problems: int, samples: int, seed: int = 0) -> list[tuple[str, str]]:
    rng = random.Random(seed)
    makers, weights = zip(*_STYLES)
    pairs: list[tuple[str, str]] = []
    for problem in range(problems):
        gold, right, wrong = rng.choices(makers, weights)[0](rng)
        distinct = rng.randint(5, 10)
        answers = rng.sample(right, min(len(right), rng.randint(1, 3))) + rng.sample(wrong, min(len(wrong), 3))
        if problem % 200 == 7:
            answers.append(rng.choice(_PATHOLOGICAL))  # a few problems draw a pathological answer
        responses = list(dict.fromkeys(_respond(a, rng) for a in answers for _ in range(2)))[:distinct]
        weights_zipf = [1.0 / (rank + 1) for rank in range(len(responses))]
        for response in rng.choices(responses, weights_zipf, k=samples):
            pairs.append((response, gold))
    rng.shuffle(pairs)
    return pairs


class _Alarm(BaseException):
    pass


def latex_parser():
    """sympy's parse_latex when its antlr 4.11 runtime is installed, else latex2sympy2_extended
    (the same ANTLR-grammar approach; math-verify's parser)."""
    from fathom_jobs.grading.symbolic import sympy_parse_latex_usable

    if sympy_parse_latex_usable():
        from sympy.parsing.latex import parse_latex

        return "sympy.parse_latex", parse_latex
    from latex2sympy2_extended import latex2sympy

    return "latex2sympy2_extended.latex2sympy", latex2sympy


def plain_sympy_grade(response: str, gold: str, timeout_s: float, parse) -> bool:
    """The no-cache baseline: box extraction, LaTeX->sympy, simplify(a - b) == 0."""
    from sympy import simplify

    def on_alarm(signum, frame):
        raise _Alarm

    signal.signal(signal.SIGALRM, on_alarm)
    signal.setitimer(signal.ITIMER_REAL, timeout_s)
    try:
        answer = extract_boxed(response)
        if answer is None:
            return False
        return bool(simplify(parse(answer) - parse(gold)) == 0)
    except _Alarm:
        return False
    except Exception:
        return False
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--pairs", type=int, default=1_000_000)
    parser.add_argument("--samples-per-problem", type=int, default=1000)
    parser.add_argument("--baseline-sample", type=int, default=200)
    parser.add_argument("--modes", default="strict,limo")
    parser.add_argument("--workers", type=int, default=None)
    parser.add_argument("--timeout-s", type=float, default=5.0)
    args = parser.parse_args()

    problems = max(1, args.pairs // args.samples_per_problem)
    started = time.perf_counter()
    pairs = build_pairs(problems, args.samples_per_problem)
    print(f"built {len(pairs):,} pairs over {problems:,} problems in {time.perf_counter() - started:.1f} s")
    print(f"machine: {platform.machine()}, {os.cpu_count()} CPUs, Python {platform.python_version()}")

    rates: dict[str, float] = {}
    for mode in args.modes.split(","):
        with Grader(mode, workers=args.workers, timeout_s=args.timeout_s) as grader:
            started = time.perf_counter()
            verdicts = grader.grade_batch(pairs)
            elapsed = time.perf_counter() - started
        rates[mode] = len(pairs) / elapsed
        print(
            f"[{mode}] grade_batch: {len(pairs):,} pairs in {elapsed:.2f} s = {rates[mode]:,.0f} gradings/s; "
            f"correct {sum(verdicts) / len(verdicts):.1%}; stats {grader.stats.as_dict()}"
        )

    rng = random.Random(1)
    sample = rng.sample(pairs, min(args.baseline_sample, len(pairs)))
    parser_name, parse = latex_parser()
    plain_sympy_grade("\\boxed{1}", "1", args.timeout_s, parse)  # import cost is not per pair
    started = time.perf_counter()
    for response, gold in sample:
        plain_sympy_grade(response, gold, args.timeout_s, parse)
    per_pair = (time.perf_counter() - started) / len(sample)
    baseline_rate = 1.0 / per_pair
    print(
        f"[plain sympy: {parser_name} + simplify] {len(sample)} random pairs: {per_pair * 1e3:.1f} ms/pair = "
        f"{baseline_rate:,.1f} gradings/s, one process; extrapolated to {len(pairs):,} pairs: "
        f"{per_pair * len(pairs) / 3600:.2f} h"
    )
    for mode, rate in rates.items():
        print(f"[{mode}] speed-up over plain sympy: {rate / baseline_rate:,.0f}x")


if __name__ == "__main__":
    main()
