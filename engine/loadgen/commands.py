"""The `flashsale` subcommands of engine.loadgen: ``loadgen`` and ``demo``."""

from __future__ import annotations

import os
import sys
from typing import Any

import click
from rich.console import Console

from engine.loadgen.behaviour import Mix
from engine.loadgen.crowd import Scalpers
from engine.loadgen.generator import LoadConfig
from engine.loadgen.observe import Api
from engine.loadgen.record import Record
from engine.loadgen.run import NoApi, RunResult, judge_record, run_async, run_load
from engine.settings import parse_storefront_tokens


def default_token() -> str | None:
    """The first storefront token of ``FLASHSALE_STOREFRONT_TOKENS``, if any."""
    try:
        tokens = parse_storefront_tokens(os.environ.get("FLASHSALE_STOREFRONT_TOKENS", ""))
    except ValueError as exc:  # engine.tokens.TokenError: one line, no traceback
        raise click.UsageError(str(exc)) from None
    return tokens[0][1] if tokens else None


def parse_scalpers(farms: str | None, spread: str) -> Scalpers | None:
    """``--scalpers 20x100`` and ``--scalper-spread 3,5,2``; a usage error naming the flag otherwise."""
    if not farms:
        return None
    try:
        ops, accounts = (int(x) for x in farms.lower().split("x"))
    except ValueError:
        raise click.BadParameter("use OPERATORSxACCOUNTS, e.g. 20x100", param_hint="--scalpers") from None
    try:
        identities, devices, networks = (int(x) for x in spread.split(","))
    except ValueError:
        raise click.BadParameter("use IDENTITIES,DEVICES,NETWORKS, e.g. 3,5,2", param_hint="--scalper-spread") from None
    try:
        return Scalpers(ops, accounts, identities, devices, networks)
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint="--scalpers") from None


@click.command("loadgen")
@click.option("--url", envvar="FLASHSALE_URL", default="http://127.0.0.1:8000", show_default=True,
              help="the API's base URL (FLASHSALE_URL)")
@click.option("--campaign", "campaign_id", required=True, help="campaign id to drive (it alone: the verdict "
              "accounts for every unit)")
@click.option("--users", default=200, show_default=True, help="peak virtual users (keep-alive connections)")
@click.option("--duration", default=60.0, show_default=True, help="time bound of the whole run, seconds")
@click.option("--buyers", default=1_000_000, show_default=True, help="distinct buyers at most")
@click.option("--rate", type=float, default=None, help="offered requests/s at most (default: flat out)")
@click.option("--token", envvar="FLASHSALE_LOADGEN_TOKEN", default=None,
              help="storefront token (default: the first of FLASHSALE_STOREFRONT_TOKENS)")
@click.option("--database-url", envvar="FLASHSALE_DATABASE_URL", default=None,
              help="the ledger: check every confirmed order in it, and run `flashsale reconcile`")
@click.option("--redis-url", envvar="FLASHSALE_REDIS_URL", default=None, help="Redis, for `flashsale reconcile`")
@click.option("--trickle", default=3.0, show_default=True, help="seconds of pre-opening trickle")
@click.option("--decay", default=2.0, show_default=True, help="seconds from sold out to nobody")
@click.option("--keep-going/--stop-at-sellout", default=False, help="keep driving buyers after the sell-out")
@click.option("--bad-share", default=0.005, show_default=True, help="share of buyers sending a bad request")
@click.option("--timeout", default=10.0, show_default=True, help="seconds before a request is retried")
@click.option("--seed", type=int, default=None, help="random seed for the behaviour mix")
@click.option("--record-out", type=click.Path(dir_okay=False), default=None, help="save the run's record (JSON)")
@click.option("--judge", "judge_path", type=click.Path(exists=True, dir_okay=False), default=None,
              help="send nothing: judge a saved record against the live state")
@click.option("--arrive", "arrive_s", type=click.FloatRange(min=0.1), default=None,
              help="instead of the spike: the --buyers arrive at random over this many seconds")
@click.option("--arrive-from", "arrive_from_s", type=float, default=0.0, show_default=True,
              help="with --arrive: seconds after the opening the arrivals start (negative: before it)")
@click.option("--pool", type=click.IntRange(1, 4096), default=64, show_default=True,
              help="with --arrive: connections the arriving buyers share")
@click.option("--scalpers", default=None, metavar="OPERATORSxACCOUNTS",
              help="scalper farms firing at the opening (of the pre-queue in queue mode), e.g. 20x100")
@click.option("--scalper-spread", default="3,5,2", show_default=True, metavar="IDENTITIES,DEVICES,NETWORKS",
              help="per operator: how many identities, devices and /24 networks its accounts share")
@click.option("--poll-cap", type=click.FloatRange(min=0.05), default=5.0, show_default=True,
              help="queue mode: the longest wait between two polls, whatever poll_after_ms says")
@click.option("--token-probe-share", type=click.FloatRange(0, 1), default=0.02, show_default=True,
              help="queue mode: share of admitted buyers who first try without their token or with another's")
@click.option("--progress/--no-progress", default=True, show_default=True)
def loadgen(url: str, campaign_id: str, users: int, duration: float, buyers: int, rate: float | None,
            token: str | None, database_url: str | None, redis_url: str | None, trickle: float, decay: float,
            keep_going: bool, bad_share: float, timeout: float, seed: int | None, record_out: str | None,
            judge_path: str | None, arrive_s: float | None, arrive_from_s: float, pool: int,
            scalpers: str | None, scalper_spread: str, poll_cap: float, token_probe_share: float,
            progress: bool) -> None:
    """Launch-day spike against a running API; checks every invariant at the end (exit 1 if one broke).

    Queue-mode campaigns are driven through the waiting room (join, poll, reserve with the admission
    token); every buyer sends their own buyer signals, --scalpers adds farms of accounts."""
    token = token or default_token()
    if not token:
        raise click.UsageError("no storefront token: pass --token or set FLASHSALE_STOREFRONT_TOKENS")
    console = Console(highlight=False)
    if judge_path:
        api = Api(url, token, campaign_id)
        try:
            record = Record.load(judge_path)
        except (OSError, ValueError, TypeError, KeyError) as exc:
            raise click.BadParameter(f"{judge_path} is not a saved run record ({exc.__class__.__name__}: {exc})",
                                     param_hint="--judge") from exc
        coro: Any = judge_record(api, record, console=console, database_url=database_url,
                                 redis_url=redis_url)
    else:
        cfg = LoadConfig(url=url, campaign_id=campaign_id, token=token, users=users, duration_s=duration,
                         buyers=buyers, rate=rate, mix=Mix(bad=bad_share, token_probe=token_probe_share),
                         trickle_s=trickle, decay_s=decay, timeout_s=timeout, stop_at_sellout=not keep_going,
                         seed=seed, arrive_s=arrive_s, arrive_from_s=arrive_from_s, pool=pool,
                         scalpers=parse_scalpers(scalpers, scalper_spread), poll_cap_s=poll_cap)
        coro = run_load(cfg, console=console, database_url=database_url, redis_url=redis_url,
                        progress=progress, record_out=record_out)
    try:
        result: RunResult = run_async(coro)
    except NoApi as exc:
        click.echo(f"flashsale loadgen: {exc}", err=True)
        sys.exit(2)
    sys.exit(result.verdict.exit_code)


@click.command("demo")
@click.option("--buyers", default=300_000, show_default=True, help="simulated buyers on their way")
@click.option("--units", type=int, default=None, help="scale the tranche to this many units (default: the file's)")
@click.option("--users", default=256, show_default=True, help="peak virtual users (connections)")
@click.option("--time-bound", default=80.0, show_default=True, help="seconds of load at most")
@click.option("--opens-in", default=5.0, show_default=True, help="seconds from loading the campaign to its opening")
@click.option("--workers", default=2, show_default=True, help="API worker processes")
@click.option("--campaign-file", type=click.Path(exists=True, dir_okay=False), default=None,
              help="campaign TOML (default: campaigns/yulebao-2014-p1.toml)")
@click.option("--database-url", default=None, help="ledger (default: SQLite in a temporary directory)")
@click.option("--serve", is_flag=True, help="keep the API and the dashboard up afterwards")
@click.option("--progress/--no-progress", default=True, show_default=True)
@click.option("--seed", type=int, default=None)
@click.option("--queue", is_flag=True, help="a queued launch: waiting room, pre-queue draw, admission, scalper farms")
@click.option("--admit-per-second", type=click.IntRange(1, 1_000_000), default=2000, show_default=True,
              help="with --queue: positions admitted per second")
@click.option("--cluster", is_flag=True, help="on a private Redis Cluster (3 masters, a replica each) in the demo's "
                                              "directory, instead of one redis-server")
def demo(buyers: int, units: int | None, users: int, time_bound: float, opens_in: float, workers: int,
         campaign_file: str | None, database_url: str | None, serve: bool, progress: bool, seed: int | None,
         queue: bool, admit_per_second: int, cluster: bool) -> None:
    """Launch day on this machine: private Redis, API, writer, the Yulebao spike, and the verdict."""
    from engine.demo import DemoConfig, run_demo
    from engine.loadgen.campaigns import YULEBAO_P1

    cfg = DemoConfig(buyers=buyers, units=units, users=users, time_bound_s=time_bound, opens_in_s=opens_in,
                     workers=workers, campaign_file=campaign_file or str(YULEBAO_P1), database_url=database_url,
                     serve=serve, progress=progress, seed=seed, queue=queue, admit_per_second=admit_per_second,
                     cluster=cluster)
    console = Console(highlight=False)
    try:
        code = run_demo(cfg, console)
    except (RuntimeError, FileNotFoundError, NoApi) as exc:
        console.print(f"[red]flashsale demo: {exc}[/red]")
        sys.exit(2)
    sys.exit(code)


COMMANDS: list[click.Command] = [loadgen, demo]
