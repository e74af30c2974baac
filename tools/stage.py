"""Stage configuration and the deploy steps around Chalice: bind a stage to a stream, derive its IAM policy, and
give the deployed event source mapping the failure handling Chalice can't set.

python -m tools.stage enable-stream --stage prod --table-name Users   # UpdateTable (NEW_AND_OLD_IMAGES), then bind
python -m tools.stage add-stage --stage staging [--from dev] [--stream-arn ARN]   # a new stage, copied from one
python -m tools.stage bind --stage dev --stream-arn arn:aws:dynamodb:...:table/Users/stream/2026-...
python -m tools.stage policies         # regenerate every .chalice/policy-<stage>.json
python -m tools.stage apply-failure-handling --stage prod [--alarm-topic-arn ARN]   # after `chalice deploy`: queues,
                                       # bucket, mapping settings, env, alarms, dashboard
python -m tools.stage status --stage prod [--stack-name STACK]   # what is deployed vs what it should be; exit 1 if not
python -m tools.stage merge-template   # regenerate deploy/merge-template.json from schema/users-table.json
python -m tools.stage package --stage prod [--create-table] out/   # `chalice package` with the merge template
python -m tools.stage cleanup --stage dev    # after `chalice delete`: the queues, bucket, alarms, dashboard it leaves

python -m tools.stage queues --stage dev   # the stage's queues and on-failure bucket (before `chalice deploy`)

Each stage has three policy files: `policy-<stage>.json` for the stream handler, `policy-<stage>-reconciler.json`
for the on-failure queue's consumer `reconcile_discarded_batches`, and `policy-<stage>-sweep.json` for the scheduled
sweep `sweep_table` (`lambda_functions.sweep_table` in the stage's config); only the sweep can Scan.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

# The commands' parts, each in its module; re-exported so `tools.stage.<name>` keeps working for their callers.
from chalicelib.config import dead_letter_queue_name, failure_queue_name
from tools.arns import failure_queue_arn, function_arns, split_stream_arn, stage_stream_arn
from tools.deploy_steps import (
    STREAM_VIEW_TYPE,
    apply_failure_handling,
    ask,
    bind,
    cleanup,
    deployed_resources,
    enable_stream,
    ensure_failure_queue,
    ensure_reconciler_queues,
    ensure_stage_queues,
    monitoring_targets,
    stage_queues,
)
from tools.packaging import PACKAGED_PATHS, package
from tools.policies import (
    LOG_WRITES,
    TABLE_WRITE_ACTION,
    expected_policy,
    expected_reconciler_policy,
    expected_sweep_policy,
    handler_policy_file,
    policy_document,
    policy_statements,
    reconciler_policy_document,
    reconciler_policy_file,
    reconciler_statements,
    sweep_policy_document,
    sweep_policy_file,
    write_policies,
)
from tools.project import (
    CHALICE_DIR,
    CONFIG,
    DEPLOYED_DIR,
    HANDLER,
    RECONCILER,
    ROOT,
    SWEEP,
    UnknownStage,
    load_config,
    require_stage,
    stage_names,
    stage_variables,
    write_json,
)

__all__ = [
    "CHALICE_DIR",
    "CONFIG",
    "DEPLOYED_DIR",
    "HANDLER",
    "LOG_WRITES",
    "PACKAGED_PATHS",
    "RECONCILER",
    "ROOT",
    "STREAM_VIEW_TYPE",
    "SWEEP",
    "TABLE_WRITE_ACTION",
    "UnknownStage",
    "apply_failure_handling",
    "ask",
    "bind",
    "cleanup",
    "dead_letter_queue_name",
    "deployed_resources",
    "enable_stream",
    "ensure_failure_queue",
    "ensure_reconciler_queues",
    "ensure_stage_queues",
    "expected_policy",
    "expected_reconciler_policy",
    "expected_sweep_policy",
    "failure_queue_arn",
    "failure_queue_name",
    "function_arns",
    "handler_policy_file",
    "load_config",
    "main",
    "monitoring_targets",
    "package",
    "policy_document",
    "policy_statements",
    "reconciler_policy_document",
    "reconciler_policy_file",
    "reconciler_statements",
    "require_stage",
    "run",
    "split_stream_arn",
    "stage_names",
    "stage_queues",
    "stage_stream_arn",
    "stage_variables",
    "sweep_policy_document",
    "sweep_policy_file",
    "write_json",
    "write_policies",
]  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    """Command line entry point."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = parser.add_subparsers(dest="command", required=True)
    bind_parser = commands.add_parser("bind", help="set a stage's STREAM_ARN and regenerate its policy")
    bind_parser.add_argument("--stage", required=True)
    bind_parser.add_argument("--stream-arn", required=True)
    add_parser = commands.add_parser("add-stage", help="add a stage, its settings copied from an existing one")
    add_parser.add_argument("--stage", required=True, help="the new stage's name (lower case, digits, '-')")
    add_parser.add_argument("--from", dest="source", help="the stage to copy (default: the config's first)")
    add_parser.add_argument("--stream-arn", default="", help="bind it to this stream now (default: unbound)")
    commands.add_parser("policies", help="regenerate every stage's policy file")
    enable_parser = commands.add_parser("enable-stream", help="turn on a table's stream and bind a stage to it")
    enable_parser.add_argument("--stage", required=True)
    enable_parser.add_argument("--table-name", required=True)
    apply_parser = commands.add_parser(
        "apply-failure-handling", help="give a `chalice deploy`ed mapping its failure handling and filter"
    )
    apply_parser.add_argument("--stage", required=True)
    apply_parser.add_argument("--alarm-topic-arn", default="", help="SNS topic the alarms notify (default: none)")
    status_parser = commands.add_parser("status", help="what is deployed, compared with what it should be")
    status_parser.add_argument("--stage", required=True)
    status_parser.add_argument("--stack-name", help="read a CloudFormation stack instead of .chalice/deployed/")
    queues_parser = commands.add_parser(
        "queues", help="make the stage's queues and on-failure bucket (before the first `chalice deploy`)"
    )
    queues_parser.add_argument("--stage", required=True)
    commands.add_parser("merge-template", help="regenerate deploy/merge-template.json from the table's schema")
    package_parser = commands.add_parser("package", help="`chalice package` with the merge template")
    package_parser.add_argument("--stage", required=True)
    package_parser.add_argument("--create-table", action="store_true", help="the stack creates the users table")
    package_parser.add_argument("out", type=Path)
    cleanup_parser = commands.add_parser("cleanup", help="after `chalice delete`: delete what the deploy steps made")
    cleanup_parser.add_argument("--stage", required=True)
    cleanup_parser.add_argument("--yes", action="store_true", help="delete without asking")
    args = parser.parse_args(argv)
    from tools.errors import report_errors

    return report_errors(lambda: run(args), known=(ValueError,))


def next_steps(stage: str, bound: bool) -> str:
    """What to run after `add-stage`: up to the stage's first `chalice deploy` and the failure handling after it."""
    tool = f"python -m tools.stage {{}} --stage {stage}"
    steps = [tool.format("queues")] if bound else [tool.format("enable-stream") + " --table-name <table>"]
    steps += [f"chalice deploy --stage {stage}", tool.format("apply-failure-handling")]
    return ", then ".join(f"`{step}`" for step in steps)


def run(args: argparse.Namespace) -> int:
    """Carry out one parsed command."""
    if args.command == "bind":
        bind(args.stage, args.stream_arn)
        print(f"stage {args.stage} bound; .chalice/config.json and its policy file updated")
    elif args.command == "add-stage":
        from tools.new_stage import add_stage

        for path in add_stage(args.stage, args.source, args.stream_arn):
            print(f"wrote {path.relative_to(ROOT)}")
        print(f"stage {args.stage} added (docs/adopting.md); next: {next_steps(args.stage, bool(args.stream_arn))}")
    elif args.command == "policies":
        for path in write_policies(load_config()):
            print(f"wrote {path.relative_to(ROOT)}")
    elif args.command == "enable-stream":
        stream_arn = enable_stream(args.stage, args.table_name)
        print(f"stream {stream_arn} is on; stage {args.stage} bound to it (.chalice/config.json, policy file)")
    elif args.command == "apply-failure-handling":
        made = apply_failure_handling(args.stage, args.alarm_topic_arn)
        print(
            f"mapping of stage {args.stage}: failure handling and filter applied, on-failure bucket {made.bucket_arn}"
        )
        print(f"alarms and dashboard created: {load_config()['app_name']}-{args.stage}[-<alarm>]")
        print("run this again after every `chalice deploy` of the stage (it is idempotent)")
    elif args.command == "status":
        from tools.status import run_status

        return run_status(args.stage, args.stack_name)
    elif args.command == "queues":
        made = ensure_stage_queues(args.stage)
        print(f"on-failure bucket {made.bucket_name} and queue {made.failure_queue_arn} ready for `chalice deploy`")
    elif args.command == "cleanup":
        deleted = cleanup(args.stage, lambda lines: ask(lines, args.yes))
        print(f"deleted {len(deleted)} resource(s) of stage {args.stage}" if deleted else "nothing deleted")
    elif args.command == "merge-template":
        from tools.merge_template import write_merge_template

        print(f"wrote {write_merge_template().relative_to(ROOT)}")
    else:
        print(f"wrote {package(args.stage, args.out, args.create_table)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
