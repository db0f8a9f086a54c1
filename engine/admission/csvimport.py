"""A pre-booking list as CSV, checked whole before anything is loaded.

The header names the columns: ``user_id`` (required) and any of ``identity``, ``device``, ``ip``;
an empty cell is an absent signal. A row is bad when its user id or a signal is malformed, when
its user repeats an earlier row, or, when the campaign caps units per identity, when its identity
is missing or repeats an earlier row's. Every bad row is reported with its line number.
"""

from __future__ import annotations

import csv
from collections.abc import Iterable
from dataclasses import dataclass, field

from engine.admission.buyer import BUYER_FIELDS, parse_buyer
from engine.campaign import ID_PATTERN
from engine.errors import InvalidRequest

COLUMNS = ("user_id", *BUYER_FIELDS)


class BadHeader(ValueError):
    """The file's first line is not a header this format knows."""


@dataclass
class Parsed:
    rows: list[tuple[str, str]] = field(default_factory=list)  # (user id, identity or '')
    lines: list[int] = field(default_factory=list)  # the line number of each row
    bad: list[tuple[int, str]] = field(default_factory=list)  # (line, what is wrong)


def parse_rows(lines: Iterable[str], identity_capped: bool) -> Parsed:
    reader = csv.reader(lines)
    header = next(reader, None)
    if header is None:
        raise BadHeader("the file is empty: the first line must name the columns (user_id,identity,device,ip)")
    names = [h.strip() for h in header]
    for name in names:
        if name not in COLUMNS:
            raise BadHeader(f"unknown column {name!r} in the header; known: {', '.join(COLUMNS)}")
    if "user_id" not in names or len(set(names)) != len(names):
        raise BadHeader("the header must name user_id once, and each other column at most once")
    out = Parsed()
    seen_users: dict[str, int] = {}
    seen_identities: dict[str, int] = {}
    width = len(names)
    for row in reader:
        line = reader.line_num
        if not row or row == [""]:
            continue  # a blank line
        if len(row) != width:
            out.bad.append((line, f"{len(row)} cells, the header names {width}"))
            continue
        cells = dict(zip(names, row, strict=True))
        user = cells["user_id"]
        if not ID_PATTERN.fullmatch(user):
            out.bad.append((line, "user_id: must match [A-Za-z0-9][A-Za-z0-9_.:-]{0,63}"))
            continue
        try:
            buyer = parse_buyer({k: cells[k] for k in BUYER_FIELDS if cells.get(k)})
        except InvalidRequest as exc:
            out.bad.append((line, f"{exc.field}: {exc.reason}"))
            continue
        if user in seen_users:
            out.bad.append((line, f"user_id {user!r} repeats line {seen_users[user]}"))
            continue
        seen_users[user] = line
        identity = buyer.identity or ""
        if identity_capped:
            if not identity:
                out.bad.append((line, "identity: required (the campaign caps units per identity)"))
                continue
            if identity in seen_identities:
                out.bad.append((line, f"identity repeats line {seen_identities[identity]} "
                                      "(one registration per identity)"))
                continue
            seen_identities[identity] = line
        out.rows.append((user, identity if identity_capped else ""))
        out.lines.append(line)
    return out
