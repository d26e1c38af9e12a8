"""Problem-text normalisation, exact-duplicate keys, and near-duplicates by MinHash-LSH.

Tokens are lower-cased alphanumeric runs, single CJK characters (Chinese has no spaces, so a
sentence would otherwise be one token) and the few operators that change a problem's meaning
(`x > 9` vs `x < 9`). LaTeX spacing and delimiters (`$`, `\\(`, `\\left`) are not tokens, so the
same problem typeset two ways has the same tokens.

Near-duplicates: MinHash signatures over word n-gram shingles find candidates through LSH bands;
each candidate pair is then checked with the exact Jaccard similarity of the shingle sets, so the
threshold means what it says (a pair at or above it is a duplicate) and LSH only decides speed.
"""

from __future__ import annotations

import hashlib
import re
import unicodedata
from collections import defaultdict

import numpy as np

_CJK = "\u3040-\u30ff\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff\uac00-\ud7af"
_TOKEN = re.compile(rf"[{_CJK}]|[^\W_{_CJK}]+|[=<>+\-*/^|!]")
_LATEX_SPACING = re.compile(r"\\(?:left|right|displaystyle|textstyle|quad|qquad|[,;:! ])")
_MERSENNE = (1 << 61) - 1
_MASK32 = (1 << 32) - 1


def tokens(text: str) -> list[str]:
    text = unicodedata.normalize("NFKC", text or "").casefold()
    return _TOKEN.findall(_LATEX_SPACING.sub(" ", text))


def exact_key(text: str) -> str:
    """Equal for texts that differ only in case, spacing, typesetting or punctuation."""
    return hashlib.sha1(" ".join(tokens(text)).encode()).hexdigest()


def ngrams(toks: list[str], n: int) -> set[str]:
    """Word n-grams; a text shorter than n is one gram (itself), so it can still match."""
    if not toks:
        return set()
    if len(toks) < n:
        return {" ".join(toks)}
    return {" ".join(toks[i:i + n]) for i in range(len(toks) - n + 1)}


def jaccard(a: set, b: set) -> float:
    return len(a & b) / len(a | b) if a and b else 0.0


def lsh_bands(threshold: float, num_perm: int) -> tuple[int, int]:
    """(bands, rows) minimising weighted false-negative/false-positive mass around threshold.

    Misses weigh more than extra candidates: candidates are verified exactly, misses are lost.
    """
    grid = np.linspace(0, 1, 201)
    best, best_error = (1, num_perm), float("inf")
    for bands in range(1, num_perm + 1):
        for rows in range(1, num_perm // bands + 1):
            hit = 1 - (1 - grid**rows) ** bands
            fp = np.trapezoid(np.where(grid < threshold, hit, 0), grid)
            fn = np.trapezoid(np.where(grid >= threshold, 1 - hit, 0), grid)
            error = 0.25 * fp + 0.75 * fn
            if error < best_error:
                best, best_error = (bands, rows), error
    return best


class MinHasher:
    def __init__(self, num_perm: int = 128, seed: int = 1) -> None:
        rng = np.random.default_rng(seed)
        self.a = rng.integers(1, _MASK32, size=num_perm, dtype=np.uint64)
        self.b = rng.integers(0, _MASK32, size=num_perm, dtype=np.uint64)
        self.num_perm = num_perm

    def signature(self, shingles: set[str]) -> np.ndarray:
        hashed = np.fromiter((int.from_bytes(hashlib.blake2b(s.encode(), digest_size=4).digest(), "big")
                              for s in shingles), dtype=np.uint64, count=len(shingles))
        # a, hashes < 2^32, so a * h + b < 2^64: no overflow before the Mersenne modulus.
        permuted = (np.outer(hashed, self.a) + self.b) % np.uint64(_MERSENNE) & np.uint64(_MASK32)
        return permuted.min(axis=0)


def near_duplicates(texts: list[str], threshold: float, n: int, num_perm: int = 128) -> dict[int, tuple[int, float]]:
    """{index: (index of the earlier kept text it duplicates, Jaccard)} for texts to drop.

    Texts are visited in order; one is dropped when an earlier kept text is at least `threshold`
    similar, so the first of a group survives.
    """
    bands, rows = lsh_bands(threshold, num_perm)
    hasher = MinHasher(num_perm)
    buckets: list[dict[bytes, list[int]]] = [defaultdict(list) for _ in range(bands)]
    shingle_sets = [ngrams(tokens(t), n) for t in texts]
    dropped: dict[int, tuple[int, float]] = {}
    for j, shingles in enumerate(shingle_sets):
        if not shingles:
            continue
        signature = hasher.signature(shingles)
        keys = [signature[b * rows:(b + 1) * rows].tobytes() for b in range(bands)]
        candidates = sorted({i for band, key in zip(buckets, keys, strict=True) for i in band.get(key, ())})
        for i in candidates:
            similarity = jaccard(shingle_sets[i], shingles)
            if similarity >= threshold:
                dropped[j] = (i, similarity)
                break
        else:
            for band, key in zip(buckets, keys, strict=True):
                band[key].append(j)  # only kept texts represent their group
    return dropped
