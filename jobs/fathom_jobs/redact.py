"""Credential redaction for anything a user or an event stream may see (pure, no imports of note).

`redact(text)` removes the userinfo of URLs (`s3://KEY:SECRET@bucket`, `https://user:key@host`) and
any value that looks like a credential: AWS access key ids, OpenAI/Hugging Face/GitHub style tokens,
`Bearer` tokens, JWTs, and the value of `password=`, `token: ...`, `AWS_SECRET_ACCESS_KEY=...` style
pairs. Both sides use it: the operator on termination messages, status, events and reports; the
jobs on the one line they print on bad input. It errs towards redacting: a false positive costs a
few characters of a message, a false negative leaks a secret into `kubectl describe`.
"""

from __future__ import annotations

import re
from typing import Any

MASK = "***"

# userinfo: `user:password@` (a password may hold '/' when written unescaped) or `token@`.
_USERINFO = re.compile(r"(?P<scheme>\b[A-Za-z][A-Za-z0-9+.-]{0,31}://)"
                       r"(?P<info>[^/\s@'\"<>?#:]*:[^\s@'\"<>]*|[^/\s@'\"<>?#:]+)@")
_PATTERNS = (
    # key=value / key: value pairs whose key ends in a secret's name (env dumps, config echoes, query
    # strings): AWS_SECRET_ACCESS_KEY=..., "apiKey": "...", password: ..., HF_TOKEN=...
    re.compile(r"(?i)(?P<key>\b[A-Za-z0-9_.-]*?(?:secret|passw(?:or)?d|pwd|token|api[_-]?key|access[_-]?key"
               r"|secret[_-]?key|credentials?|authorization|signature|private[_-]?key|session[_-]?key))"
               r"(?P<sep>[\"']?\s*[:=]\s*[\"']?)(?P<value>(?:Bearer\s+|Basic\s+)?[^\s\"',;&}\]]{3,})"),
    re.compile(r"(?i)\b(?P<key>Bearer|Basic)(?P<sep>\s+)(?P<value>[A-Za-z0-9._~+/=-]{8,})"),
)
_TOKENS = re.compile(
    r"\b(?:(?:AKIA|ASIA|AGPA|AIDA|AROA|ANPA|ANVA|AIPA)[A-Z0-9]{16}"  # AWS access key ids
    r"|sk-(?:proj-|ant-)?[A-Za-z0-9_-]{16,}"  # OpenAI / Anthropic style API keys
    r"|hf_[A-Za-z0-9]{20,}"  # Hugging Face tokens
    r"|gh[pousr]_[A-Za-z0-9]{20,}|github_pat_[A-Za-z0-9_]{20,}"  # GitHub tokens
    r"|xox[abprs]-[A-Za-z0-9-]{10,}"  # Slack tokens
    r"|eyJ[A-Za-z0-9_-]{8,}\.eyJ[A-Za-z0-9_-]{8,}\.[A-Za-z0-9_-]{8,})"  # JWTs
)
_ALREADY = frozenset({MASK, f'"{MASK}"', f"'{MASK}'"})


def redact(text: str) -> str:
    """The text with URL userinfo and credential-looking values replaced by ***."""
    if not isinstance(text, str) or not text:
        return text
    out = _USERINFO.sub(lambda m: f"{m.group('scheme')}{MASK}@", text)
    for pattern in _PATTERNS:
        out = pattern.sub(_mask_value, out)
    return _TOKENS.sub(MASK, out)


def _mask_value(match: re.Match[str]) -> str:
    value = match.group("value")
    if value in _ALREADY or value.startswith(MASK):
        return match.group(0)
    return f"{match.group('key')}{match.group('sep')}{MASK}"


def redact_deep(value: Any, max_nodes: int = 200_000) -> Any:
    """A copy of a JSON-like value with every string (keys kept) redacted; iterative, so no depth
    limit applies. Past `max_nodes` the rest is copied unredacted only if it holds no strings."""
    if isinstance(value, str):
        return redact(value)
    if not isinstance(value, (dict, list)):
        return value
    root: Any = {} if isinstance(value, dict) else []
    stack: list[tuple[Any, Any]] = [(value, root)]
    seen = 0
    while stack:
        source, target = stack.pop()
        seen += 1
        if seen > max_nodes:
            raise ValueError(f"value too large to redact (over {max_nodes} containers)")
        items = source.items() if isinstance(source, dict) else enumerate(source)
        for key, item in items:
            if isinstance(item, str):
                copied: Any = redact(item)
            elif isinstance(item, dict):
                copied = {}
                stack.append((item, copied))
            elif isinstance(item, list):
                copied = []
                stack.append((item, copied))
            else:
                copied = item
            if isinstance(target, dict):
                target[key] = copied
            else:
                target.append(copied)
    return root
