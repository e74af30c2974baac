"""Stage configuration: bind a stage to a stream ARN, and derive its least-privilege IAM policy from that ARN.

python -m tools.stage bind --stage dev --stream-arn arn:aws:dynamodb:...:table/Users/stream/2026-...
python -m tools.stage policies        # regenerate every .chalice/policy-<stage>.json
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from chalicelib.config import UNBOUND_STREAM_ARN

ROOT = Path(__file__).resolve().parent.parent
CHALICE_DIR = ROOT / ".chalice"
CONFIG = CHALICE_DIR / "config.json"
HANDLER = "sync_is_personal_email"


def split_stream_arn(stream_arn: str) -> tuple[str, str, str, str]:
    """(partition, region, account, table name) of a DynamoDB stream ARN; ValueError if it isn't one."""
    parts = stream_arn.split(":", 5)
    resource = parts[5].split("/") if len(parts) == 6 and parts[2] == "dynamodb" else []
    if len(resource) != 4 or resource[0] != "table" or resource[2] != "stream" or not all(resource):
        raise ValueError("not a DynamoDB stream ARN: arn:aws:dynamodb:REGION:ACCOUNT:table/NAME/stream/LABEL")
    return parts[1], parts[3], parts[4], resource[1]


def policy_document(app_name: str, stage: str, stream_arn: str) -> dict[str, Any]:
    """The function's policy: only the actions the code and the event source mapping use, on known ARNs."""
    partition, region, account, table = split_stream_arn(stream_arn)
    table_arn = f"arn:{partition}:dynamodb:{region}:{account}:table/{table}"
    log_group = f"arn:{partition}:logs:{region}:{account}:log-group:/aws/lambda/{app_name}-{stage}-{HANDLER}"
    return {
        "Version": "2012-10-17",
        "Statement": [
            {
                "Sid": "KeepTheFlagInSync",
                "Effect": "Allow",
                "Action": ["dynamodb:UpdateItem", "dynamodb:BatchGetItem"],
                "Resource": table_arn,
            },
            {
                "Sid": "ReadTheStream",
                "Effect": "Allow",
                "Action": ["dynamodb:DescribeStream", "dynamodb:GetRecords", "dynamodb:GetShardIterator"],
                "Resource": stream_arn,
            },
            {
                "Sid": "FindTheStream",
                "Effect": "Allow",
                "Action": ["dynamodb:ListStreams"],
                "Resource": f"{table_arn}/stream/*",
            },
            {
                "Sid": "WriteLogs",
                "Effect": "Allow",
                "Action": ["logs:CreateLogGroup", "logs:CreateLogStream", "logs:PutLogEvents"],
                "Resource": [log_group, f"{log_group}:log-stream:*"],
            },
        ],
    }


def load_config() -> dict[str, Any]:
    """The Chalice project config."""
    return json.loads(CONFIG.read_text())


def stage_stream_arn(config: dict[str, Any], stage: str) -> str:
    """The stage's STREAM_ARN, or the unbound placeholder."""
    return config["stages"][stage].get("environment_variables", {}).get("STREAM_ARN") or UNBOUND_STREAM_ARN


def expected_policy(config: dict[str, Any], stage: str) -> dict[str, Any]:
    """The policy a stage's file must hold, derived from its STREAM_ARN."""
    return policy_document(config["app_name"], stage, stage_stream_arn(config, stage))


def write_json(path: Path, document: dict[str, Any]) -> None:
    """Write JSON the way the repo keeps it: two-space indent, trailing newline."""
    path.write_text(json.dumps(document, indent=2) + "\n")


def write_policies(config: dict[str, Any]) -> list[Path]:
    """Regenerate every stage's policy file from its STREAM_ARN."""
    written = []
    for stage, stage_config in config["stages"].items():
        path = CHALICE_DIR / stage_config.get("iam_policy_file", f"policy-{stage}.json")
        write_json(path, expected_policy(config, stage))
        written.append(path)
    return written


def bind(stage: str, stream_arn: str) -> None:
    """Set a stage's STREAM_ARN in .chalice/config.json and regenerate the policies."""
    split_stream_arn(stream_arn)
    config = load_config()
    if stage not in config["stages"]:
        raise ValueError(f"no stage {stage!r} in .chalice/config.json (stages: {', '.join(config['stages'])})")
    config["stages"][stage].setdefault("environment_variables", {})["STREAM_ARN"] = stream_arn
    write_json(CONFIG, config)
    write_policies(config)


def main(argv: list[str] | None = None) -> int:
    """Command line entry point."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = parser.add_subparsers(dest="command", required=True)
    bind_parser = commands.add_parser("bind", help="set a stage's STREAM_ARN and regenerate its policy")
    bind_parser.add_argument("--stage", required=True)
    bind_parser.add_argument("--stream-arn", required=True)
    commands.add_parser("policies", help="regenerate every stage's policy file")
    args = parser.parse_args(argv)
    try:
        if args.command == "bind":
            bind(args.stage, args.stream_arn)
            print(f"stage {args.stage} bound; .chalice/config.json and its policy file updated")
        else:
            for path in write_policies(load_config()):
                print(f"wrote {path.relative_to(ROOT)}")
    except ValueError as problem:
        print(f"error: {problem}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
