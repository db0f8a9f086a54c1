"""Tokens as the operator writes them (``engine.tokens``): the environment, flag and file forms,
and what `flashsale serve` says, in one line and exit 2, about a token it cannot use."""

from __future__ import annotations

import subprocess
import uuid
from pathlib import Path

import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from engine import tokens
from engine.tokens import TokenError, format_entry, parse_lines, parse_list, storefront_name
from tests.api.conftest import definition, new_id
from tests.support.processes import ADMIN_TOKEN, FLASHSALE, STOREFRONT_TOKENS, ApiServer, base_env
from tests.support.servers import RedisServer

B64 = "c2hvcC1hLXRva2VuLTEyMzQ1Njc4OTA="  # a bare base64 token with its padding

#: Any printable ASCII but ',', 16+ characters, no space at either end (HTTP strips those).
token_text = st.text(st.characters(min_codepoint=0x20, max_codepoint=0x7E, exclude_characters=","),
                     min_size=16, max_size=48).filter(lambda t: t == t.strip(" "))
#: Tokens that look like names followed by '=' and base64: the cases a naive split gets wrong.
tricky = st.builds(lambda a, b: f"{a}={b}", st.from_regex(tokens.NAME_PATTERN, fullmatch=True),
                   st.from_regex(r"[A-Za-z0-9+/]{16,24}={0,2}", fullmatch=True))
any_token = st.one_of(token_text, tricky)
names = st.one_of(st.none(), st.from_regex(tokens.NAME_PATTERN, fullmatch=True))


@st.composite
def storefronts(draw: st.DrawFn, min_size: int = 1, max_size: int = 6) -> list[tuple[str, str]]:
    toks = draw(st.lists(any_token, min_size=min_size, max_size=max_size, unique=True))
    return [(draw(names) or storefront_name(t), t) for t in toks]


# -- the entry rule ------------------------------------------------------------------------------

def test_a_bare_base64_token_keeps_its_padding() -> None:
    assert parse_list(B64, "X") == ((storefront_name(B64), B64),)
    assert parse_list(f"shop-a={B64}", "X") == (("shop-a", B64),)


def test_an_entry_is_named_only_when_a_name_and_a_full_token_surround_the_first_equals() -> None:
    assert parse_list("shop-a=0123456789abcdef", "X") == (("shop-a", "0123456789abcdef"),)
    assert parse_list("shop-a==0123456789abcdef", "X") == (("shop-a", "=0123456789abcdef"),)
    for bare in ("a+b=0123456789abcdef", "0123456789abcdef==", "0123456789abcdef=", "x" * 65 + "=short"):
        assert parse_list(bare, "X") == ((storefront_name(bare), bare),), bare
    # '=' first: always the bare token after it, even one that reads as named or starts with '#' or '='
    for token in ("shop-a=0123456789abcdef", "#0123456789abcdef", "=0123456789abcdef"):
        assert parse_list("=" + token, "X") == ((storefront_name(token), token),)
        assert parse_lines("=" + token, "F") == ((storefront_name(token), token),)
        assert format_entry(storefront_name(token), token) == "=" + token


def test_the_file_form_skips_comments_and_blank_lines() -> None:
    text = "# storefronts\n\n  shop-a=0123456789abcdef  \r\n#shop-b=0123456789abcdef\n" + B64 + "\n"
    assert parse_lines(text, "F") == (("shop-a", "0123456789abcdef"), (storefront_name(B64), B64))
    with pytest.raises(TokenError, match="F line 2: one entry per line"):
        parse_lines("\nshop-a=0123456789abcdef,0123456789abcdeg\n", "F")


@pytest.mark.parametrize(("raw", "where"), [
    ("shop-a=short-token", "X entry 1 (storefront shop-a)"),
    ("0123456789abcdef, tooshort", "X entry 2"),
    ("=0123456789abcde", "X entry 1"),
    ("0123456789abcdef\tx", "X entry 1"),
    ("clé-0123456789abcdef", "X entry 1"),
])
def test_an_unusable_token_is_refused_without_repeating_it(raw: str, where: str) -> None:
    with pytest.raises(TokenError) as refused:
        parse_list(raw, "X")
    message = str(refused.value)
    assert message.startswith(where + ":") and "\n" not in message
    for secret in ("short-token", "tooshort", "0123456789abcde"):
        assert secret not in message


def test_one_token_cannot_name_two_storefronts() -> None:
    with pytest.raises(TokenError, match="two storefronts"):
        parse_list("a=0123456789abcdef,b=0123456789abcdef", "X")
    assert parse_list("a=0123456789abcdef,a=0123456789abcdef", "X") == (("a", "0123456789abcdef"),)


@given(storefronts(max_size=8))
def test_any_token_round_trips_through_the_env_and_the_file_form(pairs: list[tuple[str, str]]) -> None:
    entries = [format_entry(n, t) for n, t in pairs]
    assert parse_list(",".join(entries), "X") == tuple(pairs)
    assert parse_list(" , ".join(entries) + ",", "X") == tuple(pairs)
    assert parse_lines("# tokens\n" + "\n".join(entries) + "\n", "F") == tuple(pairs)


# -- over the real API ---------------------------------------------------------------------------

@settings(max_examples=4, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(pairs=storefronts(min_size=2), admin=any_token)
def test_tokens_from_the_env_and_the_file_authenticate(redis_server: RedisServer, tmp_path: Path,
                                                       pairs: list[tuple[str, str]], admin: str) -> None:
    """Half the storefronts in FLASHSALE_STOREFRONT_TOKENS, half in FLASHSALE_STOREFRONT_TOKENS_FILE:
    each token reserves (the reserve lane and Starlette alike read its header); the admin's PUTs."""
    if admin in {t for _, t in pairs}:
        admin += "x"
    half = len(pairs) // 2
    path = tmp_path / f"tokens-{uuid.uuid4().hex}"
    path.write_text("# storefront tokens\n" + "\n".join(format_entry(n, t) for n, t in pairs[half:]) + "\n")
    env = {"FLASHSALE_STOREFRONT_TOKENS": ",".join(format_entry(n, t) for n, t in pairs[:half]),
           "FLASHSALE_STOREFRONT_TOKENS_FILE": str(path), "FLASHSALE_ADMIN_TOKEN": admin}
    server = ApiServer(redis_server.url, **env).start()
    try:
        with httpx.Client(base_url=server.url, timeout=10) as c:
            cid = new_id()
            r = c.put(f"/v1/campaigns/{cid}", json=definition(cid), headers={"Authorization": f"Bearer {admin}"})
            assert r.status_code == 201, r.text
            for i, (_, token) in enumerate(pairs):
                r = c.post(f"/v1/campaigns/{cid}/reservations", json={"user_id": f"u{i}", "product_id": "p1",
                                                                       "units": 1},
                           headers={"Authorization": f"Bearer {token}", "Idempotency-Key": f"k{i}"})
                assert r.status_code == 201, (token, r.text)
            r = c.get(f"/v1/campaigns/{cid}", headers={"Authorization": f"Bearer {pairs[0][1]}x"})
            assert r.status_code == 401
    finally:
        server.stop()


def test_flags_replace_the_environment(redis_server: RedisServer, tmp_path: Path) -> None:
    flag_token, file_token, admin = "flag-token-0123456789", "file-token=0123456789==", "admin-flag-0123456789"
    (tmp_path / "tokens").write_text(f"shop-f={file_token}\n")
    server = ApiServer(redis_server.url, args=("--storefront-token", f"shop-x={flag_token}", "--admin-token", admin,
                                               "--storefront-tokens-file", str(tmp_path / "tokens"))).start()
    try:
        with httpx.Client(base_url=server.url, timeout=10) as c:
            def status(token: str) -> int:
                return c.get("/v1/campaigns/no-such", headers={"Authorization": f"Bearer {token}"}).status_code

            assert status(flag_token) == status(file_token) == status(admin) == 404
            assert status(ADMIN_TOKEN) == 401  # the environment's tokens are replaced by the flags
            assert status(STOREFRONT_TOKENS["shop-a"]) == 401
    finally:
        server.stop()


# -- refused at start ----------------------------------------------------------------------------

def serve(redis_server: RedisServer, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([FLASHSALE, "serve", "--port", "1", *args], env=base_env(redis_server.url, **env),
                          capture_output=True, text=True, timeout=60)


@pytest.mark.parametrize(("args", "env", "named"), [
    ((), {"FLASHSALE_STOREFRONT_TOKENS": "shop-a=tok-shop-a"}, "FLASHSALE_STOREFRONT_TOKENS entry 1"),
    ((), {"FLASHSALE_ADMIN_TOKEN": "tok-shop-a"}, "FLASHSALE_ADMIN_TOKEN"),
    (("--admin-token", "tok-shop-a"), {}, "--admin-token"),
    (("--storefront-token", "dG9rLXNob3A="), {}, "--storefront-token entry 1"),
])
def test_a_short_token_is_refused_at_start_in_one_line(redis_server: RedisServer, args: tuple[str, ...],
                                                       env: dict[str, str], named: str) -> None:
    out = serve(redis_server, *args, **env)
    assert out.returncode == 2, out
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1, out.stderr
    assert named in lines[0] and "at least 16" in lines[0] and "secrets.token_urlsafe" in lines[0]
    assert "Traceback" not in out.stderr + out.stdout
    assert "tok-shop-a" not in out.stderr and "dG9rLXNob3A=" not in out.stderr


def test_an_unreadable_or_bad_tokens_file_is_refused_at_start(redis_server: RedisServer, tmp_path: Path) -> None:
    (tmp_path / "latin1").write_bytes("shop-a=clé-0123456789abcdef\n".encode("latin-1"))
    (tmp_path / "short").write_text("# ok\nshop-a=0123456789abcdef\nshop-b=tok-shop-b\n")
    cases = [
        (("--storefront-tokens-file", str(tmp_path / "missing")), {}, "No such file"),
        (("--storefront-tokens-file", str(tmp_path)), {}, "Is a directory"),
        ((), {"FLASHSALE_STOREFRONT_TOKENS_FILE": str(tmp_path / "latin1")}, "not ASCII"),
        ((), {"FLASHSALE_STOREFRONT_TOKENS_FILE": str(tmp_path / "short")},
         "line 3 (storefront shop-b): the token is 10 characters"),
    ]
    for args, env, says in cases:
        out = serve(redis_server, *args, **env)
        assert out.returncode == 2, out
        assert len(out.stderr.strip().splitlines()) == 1 and says in out.stderr, out.stderr
        assert ("--storefront-tokens-file" if args else "FLASHSALE_STOREFRONT_TOKENS_FILE") in out.stderr
        assert "Traceback" not in out.stderr + out.stdout


def test_commands_that_serve_no_api_do_not_fail_for_the_tokens(redis_server: RedisServer) -> None:
    """The writer, reconcile or `campaign show` share the API's environment but use no token."""
    env = base_env(redis_server.url, FLASHSALE_STOREFRONT_TOKENS="shop-a=tok-shop-a", FLASHSALE_ADMIN_TOKEN="short")
    out = subprocess.run([FLASHSALE, "campaign", "show", "no-such-campaign"], env=env, capture_output=True,
                         text=True, timeout=60)
    assert "Traceback" not in out.stderr and "token" not in out.stderr, out.stderr
    assert "no-such-campaign" in out.stderr
