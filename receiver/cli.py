"""The `fluxback` command: serve, check-config, config-schema, deliveries, replay.

Every subcommand takes `--config FILE` (or `$FLUXBACK_CONFIG`). `deliveries`
and `replay` work on the journal directly, so they also answer while the
service is down, which is when an operator needs them most.

Exit codes: 0 success, 1 the command ran and found problems (invalid
configuration, unknown delivery ids, the service could not start), 2 usage errors.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import re
import sys
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from datetime import UTC, datetime

from receiver.app import StartupError, run
from receiver.config import Config, ConfigError, config_schema_text, load_config, read_config_file
from receiver.explain import Page, Story, explained, listed_json, story, story_json
from receiver.journal import DeliveryFilter, DeliveryState, Journal, JournalUnavailable, journal_from_url
from receiver.log import configure_logging
from receiver.ops import airflow_links
from receiver.replay import NotReplayed, replay
from receiver.service import background_services
from receiver.terminal import story_text, table

_ASCII_ID = re.compile(r"[0-9]{1,18}")


def _load(args: argparse.Namespace) -> Config | None:
    """The configuration, or None after printing every error with its key."""
    try:
        return load_config(args.config)
    except ConfigError as error:
        for problem in error.errors:
            print(f"error: {problem}", file=sys.stderr)
        return None


def _serve(args: argparse.Namespace) -> int:
    config = _load(args)
    if config is None:
        return 1
    configure_logging(config.log)
    try:
        run(config, background=background_services)
    except StartupError as error:
        for problem in error.problems:
            print(f"error: {problem}", file=sys.stderr)
        return 1
    except JournalUnavailable as error:
        print(f"error: journal: {error}", file=sys.stderr)
        return 1
    return 0


def _check_config(args: argparse.Namespace) -> int:
    reading = read_config_file(args.config)
    problems = reading.every_problem()
    for problem in problems:
        print(f"error: {problem}", file=sys.stderr)
    if problems:
        return 1
    print(f"configuration OK: {reading.source}")
    return 0


def _config_schema(args: argparse.Namespace) -> int:
    sys.stdout.write(config_schema_text())
    return 0


@asynccontextmanager
async def _opened(config: Config) -> AsyncIterator[Journal]:
    journal = journal_from_url(config.journal, config.journal_password_file)
    await journal.open()
    try:
        yield journal
    finally:
        await journal.close()


async def _list(config: Config, query: DeliveryFilter) -> Page:
    async with _opened(config) as journal:
        return await explained(journal, query)


async def _story(config: Config, delivery_id: int) -> Story | None:
    async with _opened(config) as journal:
        delivery = await journal.get(delivery_id)
    return None if delivery is None else story(delivery, airflow_links(config))


async def _replay(config: Config, ids: Sequence[int]) -> dict[int, NotReplayed | None]:
    async with _opened(config) as journal:
        return await replay(journal, ids, datetime.now(UTC))


def _journal_missing(config: Config) -> bool:
    """Whether the journal file is missing (opening it would create an empty one), after saying so."""
    path = config.sqlite_path
    if path is None or path.exists():
        return False
    print(f"error: journal: no journal at {path}; is this the service's configuration?", file=sys.stderr)
    return True


def _deliveries(args: argparse.Namespace) -> int:
    config = _load(args)
    if config is None or _journal_missing(config):
        return 1
    configure_logging(config.log)
    try:
        if args.show:
            return _show(config, args.show, args.output)
        query = DeliveryFilter(
            revision=args.revision,
            object_key=args.object,
            state=DeliveryState(args.state) if args.state else None,
            dag_id=args.dag_id,
            limit=args.limit,
        )
        found = asyncio.run(_list(config, query)).deliveries
        if args.verbose and args.output == "text":
            links = airflow_links(config)
            print("\n\n".join(story_text(story(d, links)) for d in found) or "no deliveries match")
        elif args.output == "json":
            print(json.dumps([listed_json(d) for d in found], indent=2))
        else:
            print(table(found) if found else "no deliveries match")
    except JournalUnavailable as error:
        print(f"error: journal: {error}", file=sys.stderr)
        return 1
    return 0


def _show(config: Config, words: Sequence[str], output: str) -> int:
    if len(words) != 2 or words[0] != "show" or not _ASCII_ID.fullmatch(words[1]):
        print("error: usage: fluxback deliveries show ID (a delivery id, e.g. `show 42`)", file=sys.stderr)
        return 2
    delivery_id = int(words[1])
    told = asyncio.run(_story(config, delivery_id))
    if told is None:
        print(f"error: delivery {delivery_id}: no such delivery", file=sys.stderr)
        return 1
    print(json.dumps(story_json(told), indent=2) if output == "json" else story_text(told))
    return 0


def _replay_command(args: argparse.Namespace) -> int:
    config = _load(args)
    if config is None or _journal_missing(config):
        return 1
    configure_logging(config.log)
    try:
        problems = asyncio.run(_replay(config, args.ids))
    except JournalUnavailable as error:
        print(f"error: journal: {error}", file=sys.stderr)
        return 1
    for delivery_id, problem in problems.items():
        if problem is None:
            print(f"delivery {delivery_id}: will be processed again")
        else:
            print(f"error: delivery {delivery_id}: {problem.reason}", file=sys.stderr)
    return 0 if not any(problems.values()) else 1


def _positive(text: str) -> int:
    value = int(text)
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {text}")
    return value


def _parser() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument(
        "--config",
        metavar="FILE",
        help="YAML configuration (default: $FLUXBACK_CONFIG, else built-in defaults)",
    )
    parser = argparse.ArgumentParser(
        prog="fluxback", description="Flux CD events in; Airflow task states, DAG runs and asset events out."
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    serve = commands.add_parser("serve", parents=[common], help="run the service")
    serve.set_defaults(handler=_serve)

    check = commands.add_parser(
        "check-config", parents=[common], help="validate the configuration and the files it names"
    )
    check.set_defaults(handler=_check_config)

    schema = commands.add_parser(
        "config-schema", help="print the JSON Schema of the configuration file (docs/config.schema.json)"
    )
    schema.set_defaults(handler=_config_schema)

    deliveries = commands.add_parser(
        "deliveries", parents=[common], help="list deliveries from the journal, newest first"
    )
    deliveries.add_argument("--revision", help="a revision, or a commit (full or leading part)")
    deliveries.add_argument("--state", choices=[s.value for s in DeliveryState])
    deliveries.add_argument("--object", metavar="KIND/NAMESPACE/NAME")
    deliveries.add_argument("--dag-id")
    deliveries.add_argument("--limit", type=_positive, default=50)
    deliveries.add_argument(
        "--verbose", "-v", action="store_true", help="the whole story of each delivery instead of a table"
    )
    deliveries.add_argument("--output", "-o", choices=["text", "json"], default="text")
    deliveries.add_argument(
        "show",
        nargs="*",
        metavar="show ID",
        help="the whole story of one delivery: event, commits and trailers, decisions, actions, links",
    )
    deliveries.set_defaults(handler=_deliveries)

    replay = commands.add_parser("replay", parents=[common], help="process finished or dead deliveries again")
    replay.add_argument("ids", metavar="ID", type=_positive, nargs="+")
    replay.set_defaults(handler=_replay_command)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    code: int = args.handler(args)
    return code
