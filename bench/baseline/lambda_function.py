# The original walkthrough's Lambda function, kept for comparison only: the benchmark's baseline. Never deployed.
#
# A faithful copy of the walkthrough lab's code (the DynamoDB triggers lab this product grew from), adapted in
# one place only, so it can run against DynamoDB Local: the table name comes from the TABLE_NAME environment
# variable (default "CloudAcademyLabs", the lab's table) instead of being a literal. Everything else is as the
# walkthrough has it: a boto3 resource built at import, records processed one after another, one unconditional
# UpdateItem per INSERT/MODIFY whose old and new e-mail and flag differ, and the 3-domain suffix check.
import json
import os

import boto3

DDB = boto3.resource("dynamodb").Table(os.environ.get("TABLE_NAME", "CloudAcademyLabs"))


def lambda_handler(event, context):
    records = event["Records"]
    print("Received %s records" % len(records))
    for record in records:
        print(record)
        # if new record or update
        if record["eventName"].upper() in {"INSERT", "MODIFY"}:
            # primary key
            record_id = record["dynamodb"]["Keys"]["Id"]["S"]
            # init local vars
            old_email = old_is_personal = new_email = new_is_personal = None
            # new and old images
            old_image = record["dynamodb"].get("OldImage") or {}
            new_image = record["dynamodb"].get("NewImage") or {}
            # old values (optional, only on update)
            if "Email" in old_image:
                old_email = old_image["Email"]["S"]
            if "IsPersonalEmail" in old_image:
                old_is_personal = old_image["IsPersonalEmail"]["BOOL"]
            # new values
            if "Email" in new_image:
                new_email = new_image["Email"]["S"]
                new_is_personal = is_personal_email(new_email)
            # avoid recursion on update and write only if strictly needed
            if old_email != new_email and old_is_personal != new_is_personal:
                update_record(record_id, new_is_personal)
    print("Processed %s records" % len(records))


def update_record(record_id, is_personal):
    print("Updating %s: IsPersonalEmail=%s" % (record_id, is_personal))
    DDB.update_item(
        Key={"Id": record_id},
        UpdateExpression="SET IsPersonalEmail = :val",
        ExpressionAttributeValues={":val": is_personal or False},
    )


def is_personal_email(email):
    domains = {"gmail.com", "outlook.com", "hotmail.com"}
    return any(email.endswith(domain) for domain in domains)
