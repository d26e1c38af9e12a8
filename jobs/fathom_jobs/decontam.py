"""Decontamination: does a training problem overlap an evaluation problem?

A problem is contaminated when it shares any word n-gram (`contaminationNgram`, 13 by default, the
usual choice since GPT-3) with an evaluation problem, or when its whole normalised text equals one
— the fallback that catches problems shorter than the n-gram. An n-gram found in two or more
items of one evaluation set is that set's phrasing ("... where m and n are relatively prime
positive integers. Find m + n", GPQA's answer-format instruction), not any problem's content, and
is ignored: a real copy still shares the item's own n-grams. Shared phrasing that occurs in only
one evaluation item still matches (AIME24 loses 2 of 30 problems against AIME25 this way): the
rule errs towards removing.
"""

from __future__ import annotations

from collections import Counter

from .dedup import exact_key, tokens


class ContaminationIndex:
    def __init__(self, n: int) -> None:
        self.n = n
        self.grams: dict[str, str] = {}
        self.whole: dict[str, str] = {}
        self.sizes: dict[str, int] = {}

    def add(self, benchmark: str, texts: list[str]) -> None:
        per_item = [self._grams(tokens(t)) for t in texts]
        seen_in = Counter(g for grams in per_item for g in grams)
        for text, grams in zip(texts, per_item, strict=True):
            self.whole.setdefault(exact_key(text), benchmark)
            for gram in grams:
                if seen_in[gram] == 1:
                    self.grams.setdefault(gram, benchmark)
        self.sizes[benchmark] = self.sizes.get(benchmark, 0) + len(texts)

    def _grams(self, toks: list[str]) -> set[str]:
        return {" ".join(toks[i:i + self.n]) for i in range(len(toks) - self.n + 1)}

    def match(self, text: str) -> tuple[str, str] | None:
        """(benchmark, evidence) for a contaminated text, None for a clean one."""
        benchmark = self.whole.get(exact_key(text))
        if benchmark:
            return benchmark, "whole text"
        for gram in self._grams(tokens(text)):
            if gram in self.grams:
                return self.grams[gram], gram
        return None
