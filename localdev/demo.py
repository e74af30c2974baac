"""The original walkthrough, end to end on DynamoDB Local: real table, real stream, the Chalice handler.

python -m localdev.demo            # or: make demo
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from chalicelib.attributes import AttributeNames, attribute_conflict
from localdev import lifecycle


@dataclass
class Step:
    """One client action of the walkthrough, and what the table must show after it."""

    title: str
    action: Callable[[Any, str], None]
    expect: dict[str, bool]


def put(item_id: str, email_attribute: str, email: str) -> Callable[[Any, str], None]:
    """A client creating an item with an e-mail, as in the console walkthrough."""
    return lambda client, table: client.put_item(
        TableName=table, Item={"Id": {"S": item_id}, email_attribute: {"S": email}}
    )


def set_attribute(item_id: str, name: str, value: str) -> Callable[[Any, str], None]:
    """A client changing one attribute of an item."""
    return lambda client, table: client.update_item(
        TableName=table,
        Key={"Id": {"S": item_id}},
        UpdateExpression="SET #a = :v",
        ExpressionAttributeNames={"#a": name},
        ExpressionAttributeValues={":v": {"S": value}},
    )


def walkthrough(attributes: AttributeNames) -> list[Step]:
    """The walkthrough's steps, on the stage's e-mail attribute."""
    email = attributes.email
    return [
        Step("create ID1 <john@example.com>", put("ID1", email, "john@example.com"), {"ID1": False}),
        Step("create ID2 <john@gmail.com>", put("ID2", email, "john@gmail.com"), {"ID1": False, "ID2": True}),
        Step("change ID1's e-mail to john@outlook.com", set_attribute("ID1", email, "john@outlook.com"),
             {"ID1": True, "ID2": True}),
        Step("change ID1's e-mail to john@hotmail.com", set_attribute("ID1", email, "john@hotmail.com"),
             {"ID1": True, "ID2": True}),
        Step("change ID2's Name (not the e-mail)", set_attribute("ID2", "Name", "John"), {"ID1": True, "ID2": True}),
    ]  # fmt: skip


def table_rows(client: Any, table: str, attributes: AttributeNames) -> list[dict[str, str]]:
    """Every item of the table, sorted by Id, as printable strings (columns named as the stage names them)."""
    items = client.scan(TableName=table, ConsistentRead=True)["Items"]
    rows = []
    for item in sorted(items, key=lambda i: i["Id"]["S"]):
        flag = item.get(attributes.flag, {}).get("BOOL")
        rows.append(
            {
                "Id": item["Id"]["S"],
                attributes.email: item.get(attributes.email, {}).get("S", "-"),
                attributes.flag: "-" if flag is None else str(flag).lower(),
                "Name": item.get("Name", {}).get("S", "-"),
            }
        )
    return rows


def render_table(rows: list[dict[str, str]]) -> str:
    """A plain-text table."""
    if not rows:
        return "(no items)"
    columns = list(rows[0])
    widths = {c: max(len(c), *(len(r[c]) for r in rows)) for c in columns}
    lines = ["  ".join(c.ljust(widths[c]) for c in columns), "  ".join("-" * widths[c] for c in columns)]
    lines += ["  ".join(r[c].ljust(widths[c]) for c in columns) for r in rows]
    return "\n".join(lines)


def run(verbose: bool = False) -> int:
    """Run the walkthrough; 0 when every step left the table as expected."""
    from chalicelib.config import ConfigError
    from localdev.dynamodb_local import DynamoDBLocal, create_table, table_definition

    print("starting DynamoDB Local ...", flush=True)
    with DynamoDBLocal() as engine:
        os.environ.update(engine.environment())
        from localdev.invoker import ChaliceInvoker
        from localdev.mapping import LocalEventSourceMapping, serialized
        from localdev.walkthrough import WALKTHROUGH_ENVIRONMENT, WALKTHROUGH_STAGE
        from tools.failure_handling import DEPLOYED_FUNCTION

        client = engine.client()
        definition = table_definition()
        table = definition["TableName"]
        stream_arn = create_table(client, definition)
        view_type = definition["StreamSpecification"]["StreamViewType"]
        print(f"DynamoDB Local on {engine.endpoint}: table {table}, stream {view_type}")

        invoker = ChaliceInvoker(
            WALKTHROUGH_STAGE,
            quiet=not verbose,
            deployed_overrides=DEPLOYED_FUNCTION,
            environment=WALKTHROUGH_ENVIRONMENT,
        )
        settings = invoker.settings
        attributes = settings.attributes
        conflict = attribute_conflict([key["AttributeName"] for key in definition["KeySchema"]], attributes)
        if conflict:
            invoker.close()
            raise ConfigError(f"the walkthrough's settings: {conflict}")
        steps = walkthrough(attributes)
        # The deployed mapping's filter, retries, bisection and lanes; the Chalice test client runs one call at a time.
        mapping = LocalEventSourceMapping.for_stage(engine.streams_client(), stream_arn, serialized(invoker), settings)
        print(f"local event source mapping: batch size {settings.batch_size}, from {settings.starting_position}\n")
        print(f"{'step':<45} {'records':>7} {'writes':>6}  {attributes.flag} after")
        failures = 0
        for number, step in enumerate(steps, 1):
            seen = len(invoker.collector.summaries)
            step.action(client, table)
            mapping.drain()
            batches = invoker.collector.summaries[seen:]
            records = sum(b["records"] for b in batches)
            writes = sum(b["writes"] for b in batches)
            flags = {row["Id"]: row[attributes.flag] for row in table_rows(client, table, attributes)}
            ok = all(flags.get(item_id) == str(value).lower() for item_id, value in step.expect.items())
            failures += not ok
            shown = ", ".join(f"{k}={v}" for k, v in flags.items())
            print(f"{number}. {step.title:<42} {records:>7} {writes:>6}  {shown}{'' if ok else '  <-- UNEXPECTED'}")
        summaries = invoker.collector.summaries
        print()
        print(render_table(table_rows(client, table, attributes)))
        print(
            f"\n{len(steps)} client writes -> {sum(s['records'] for s in summaries)} stream records in "
            f"{len(summaries)} batches -> {sum(s['writes'] for s in summaries)} handler writes "
            f"({sum(s['already_correct'] for s in summaries)} items already correct, "
            f"{sum(s['superseded'] for s in summaries)} superseded, {sum(s['failed'] for s in summaries)} failed)"
        )
        invoker.close()
    print("walkthrough: OK" if not failures else f"walkthrough: {failures} step(s) UNEXPECTED")
    return 0 if not failures else 1


def main(argv: list[str] | None = None) -> int:
    """Command line entry point."""
    parser = argparse.ArgumentParser(description="Run the walkthrough on DynamoDB Local.")
    parser.add_argument("--verbose", action="store_true", help="also print the handler's JSON log lines and metrics")
    args = parser.parse_args(argv)
    with lifecycle.handle_signals():
        # Imported once the handlers are in place (boto3 takes a while): a Ctrl-C while it loads exits cleanly too.
        from chalicelib.config import ConfigError
        from localdev.dynamodb_local import EngineFailed, PrerequisiteMissing
        from tools.errors import report_errors

        known = (PrerequisiteMissing, EngineFailed, ConfigError)
        return report_errors(lambda: run(verbose=args.verbose), known)


if __name__ == "__main__":
    sys.exit(main())
