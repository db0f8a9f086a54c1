"""Bearer tokens as the operator writes them: the environment, flag and file forms, one entry rule.

A token is 16 to 4096 characters of printable ASCII (space to ``~``) without ``,`` and without a
space at either end (HTTP strips those from a header). An *entry* is a token, optionally named:

- ``NAME=TOKEN`` names a storefront when the text before the first ``=`` is a storefront name
  (``NAME_PATTERN``) and what follows is more than ``=`` padding; that token must then have at
  least 16 characters (``shop-a=short`` is refused, not read as the bare token ``shop-a=short``);
- any other entry is a bare token, whole, ``=`` included (``c2hvcC1hLXRva2VuLTAx==`` is one token:
  base64 padding follows the name-like part), and its storefront is named after it
  (``storefront_name``);
- an entry starting with ``=`` is always the bare token after that ``=``: the way to write a bare
  token that would otherwise read as named (``=shop-a=0123456789abcdef`` is the token
  ``shop-a=0123456789abcdef``), or that starts with ``=`` or ``#``.

``FLASHSALE_STOREFRONT_TOKENS`` and ``--storefront-token`` take entries separated by ``,``; a tokens
file takes one entry per line, blank lines and lines starting with ``#`` ignored. Errors name where
the entry came from and never repeat the token.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Iterable

MIN_TOKEN_CHARS = 16  # shorter tokens are guessable over the network; refused at start
MAX_TOKEN_CHARS = 4096  # well under any HTTP server's header limit
NAME_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.:-]{0,63}")  # the id rule of campaigns
_TOKEN = re.compile(r"[ -+\--~]+")  # printable ASCII without ','
MAKE_ONE = "python3 -c 'import secrets; print(secrets.token_urlsafe(24))'"

Pair = tuple[str, str]


class TokenError(ValueError):
    """A token or an entry the operator must fix; the message is one line and names its source."""


def storefront_name(token: str) -> str:
    """A stable, non-secret name for a storefront token (idempotency keys are scoped to it)."""
    return "sf-" + hashlib.sha256(token.encode()).hexdigest()[:12]


def check_token(token: str, where: str) -> str:
    """``token`` if it is usable, else ``TokenError`` saying what is wrong (``where``: its source)."""
    if len(token) < MIN_TOKEN_CHARS:
        raise TokenError(f"{where}: the token is {len(token)} characters; a token needs at least "
                         f"{MIN_TOKEN_CHARS} (make one with: {MAKE_ONE})")
    if len(token) > MAX_TOKEN_CHARS:
        raise TokenError(f"{where}: the token is {len(token)} characters; at most {MAX_TOKEN_CHARS}")
    if not _TOKEN.fullmatch(token) or token != token.strip(" "):
        raise TokenError(f"{where}: a token is printable ASCII without ',' and without a space at either end")
    return token


def parse_entry(entry: str, where: str) -> Pair:
    """One entry -> (storefront name, token), by the rule of this module's docstring."""
    if entry.startswith("="):
        token = check_token(entry[1:], where)
        return storefront_name(token), token
    name, sep, rest = entry.partition("=")
    if sep and NAME_PATTERN.fullmatch(name) and rest.strip("="):
        if len(rest) < MIN_TOKEN_CHARS:  # a storefront named with too short a token, most likely
            check_token(rest, f"{where} (storefront {name})")  # raises, saying why
        return name, check_token(rest, f"{where} (storefront {name})")
    return storefront_name(entry), check_token(entry, where)


def format_entry(name: str, token: str) -> str:
    """The entry that parses back to (name, token): ``name=token``, or ``=token`` for a bare token."""
    return f"={token}" if name == storefront_name(token) else f"{name}={token}"


def parse_list(raw: str, source: str) -> tuple[Pair, ...]:
    """Comma-separated entries (the environment and flag form); blanks around entries are ignored."""
    entries = [e.strip(" \t") for e in raw.split(",")]
    return _unique([parse_entry(e, f"{source} entry {i}") for i, e in enumerate(entries, 1) if e], source)


def parse_lines(text: str, source: str) -> tuple[Pair, ...]:
    """One entry per line (the file form); blank lines and lines starting with ``#`` are ignored."""
    pairs = []
    for number, line in enumerate(text.splitlines(), 1):
        entry = line.strip(" \t\r")
        if not entry or entry.startswith("#"):
            continue
        if "," in entry:
            raise TokenError(f"{source} line {number}: one entry per line (a token cannot contain ',')")
        pairs.append(parse_entry(entry, f"{source} line {number}"))
    return _unique(pairs, source)


def read_file(path: str, source: str) -> tuple[Pair, ...]:
    """The entries of a tokens file; ``TokenError`` when it cannot be read or holds a bad entry."""
    try:
        with open(path, encoding="ascii") as f:
            text = f.read()
    except (OSError, UnicodeDecodeError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else "not ASCII text"
        raise TokenError(f"{source}: cannot read the tokens file {path!r}: {reason}") from None
    return parse_lines(text, f"{source} {path}")


def _unique(pairs: Iterable[Pair], source: str) -> tuple[Pair, ...]:
    seen: dict[str, str] = {}
    out = []
    for name, token in pairs:
        if token in seen and seen[token] != name:
            raise TokenError(f"{source}: one token is given to two storefronts ({seen[token]}, {name})")
        if token not in seen:
            seen[token] = name
            out.append((name, token))
    return tuple(out)


def merge(*groups: tuple[Pair, ...], source: str = "storefront tokens") -> tuple[Pair, ...]:
    """The tokens of several sources together (a token given twice must name one storefront)."""
    return _unique([p for g in groups for p in g], source)
