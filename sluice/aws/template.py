"""The SAM template (`template.yaml`), generated from the code so that table schemas, queue
settings and function configuration never drift from what sluice expects.

`python -m sluice.aws.template > template.yaml` rewrites it; a test checks the committed file
is current and `make test` runs cfn-lint on it. Intrinsic functions use their long form
(`Fn::Sub`), so the file is plain YAML.
"""

from __future__ import annotations

import json
import sys
from typing import Any

import pyarrow as pa

from sluice.config import EnvConfig
from sluice.layout import TYPES, table_name, table_prefix
from sluice.process.schemas import SPECS

PARSER_TIMEOUT_SECONDS = 300
# DESIGN: a queue's visibility timeout is at least six times its consumer's timeout.
VISIBILITY_TIMEOUT_SECONDS = 6 * PARSER_TIMEOUT_SECONDS
# The lease must outlive a Lambda invocation: a parser never extends it.
LEASE_SECONDS = PARSER_TIMEOUT_SECONDS + 60
DEFAULTS = EnvConfig()

HIVE_TYPES = {
    pa.string(): "string",
    pa.int32(): "int",
    pa.int64(): "bigint",
    pa.float64(): "double",
    pa.bool_(): "boolean",
}


def _hive_type(dtype: pa.DataType) -> str:
    if pa.types.is_timestamp(dtype):
        return "timestamp"
    return HIVE_TYPES[dtype]


def sub(text: str) -> dict[str, str]:
    return {"Fn::Sub": text}


def ref(name: str) -> dict[str, str]:
    return {"Ref": name}


def arn(name: str) -> dict[str, list[str]]:
    return {"Fn::GetAtt": [name, "Arn"]}


def _bucket_name(role: str) -> dict[str, str]:
    return sub(f"${{AWS::StackName}}-{role}-${{AWS::AccountId}}")


def _bucket(role: str, *, notify: bool = False) -> dict[str, Any]:
    props: dict[str, Any] = {
        "BucketName": _bucket_name(role),
        "BucketEncryption": {
            "ServerSideEncryptionConfiguration": [
                {"ServerSideEncryptionByDefault": {"SSEAlgorithm": "AES256"}}
            ]
        },
        "PublicAccessBlockConfiguration": {
            "BlockPublicAcls": True,
            "BlockPublicPolicy": True,
            "IgnorePublicAcls": True,
            "RestrictPublicBuckets": True,
        },
    }
    resource: dict[str, Any] = {"Type": "AWS::S3::Bucket", "Properties": props}
    if role == "raw":
        # Raw objects are never modified or deleted by sluice; versioning keeps them safe from
        # everyone else too.
        props["VersioningConfiguration"] = {"Status": "Enabled"}
    if notify:
        props["NotificationConfiguration"] = {
            "QueueConfigurations": [
                {
                    "Event": "s3:ObjectCreated:*",
                    "Queue": arn("ProcessingQueue"),
                    "Filter": {"S3Key": {"Rules": [{"Name": "prefix", "Value": "raw/"}]}},
                }
            ]
        }
        resource["DependsOn"] = "ProcessingQueuePolicy"
    return resource


def _queue(retention: int, dlq: str | None = None) -> dict[str, Any]:
    props: dict[str, Any] = {
        "MessageRetentionPeriod": retention,
        "VisibilityTimeout": VISIBILITY_TIMEOUT_SECONDS,
        "SqsManagedSseEnabled": True,
    }
    if dlq:
        props["RedrivePolicy"] = {
            "deadLetterTargetArn": arn(dlq),
            "maxReceiveCount": DEFAULTS.max_receive_count,
        }
    return {"Type": "AWS::SQS::Queue", "Properties": props}


def _glue_table(type_: str) -> dict[str, Any]:
    schema = SPECS[type_].schema
    return {
        "Type": "AWS::Glue::Table",
        "Properties": {
            "CatalogId": ref("AWS::AccountId"),
            "DatabaseName": ref("GlueDatabase"),
            "TableInput": {
                "Name": table_name(type_),
                "TableType": "EXTERNAL_TABLE",
                "Parameters": {"classification": "parquet", "EXTERNAL": "TRUE"},
                "PartitionKeys": [
                    {"Name": "day", "Type": "string"},
                    {"Name": "hour", "Type": "string"},
                ],
                "StorageDescriptor": {
                    "Location": sub(f"s3://${{VerifiedBucket}}/{table_prefix(type_)}"),
                    "InputFormat": (
                        "org.apache.hadoop.hive.ql.io.parquet.MapredParquetInputFormat"
                    ),
                    "OutputFormat": (
                        "org.apache.hadoop.hive.ql.io.parquet.MapredParquetOutputFormat"
                    ),
                    "SerdeInfo": {
                        "SerializationLibrary": (
                            "org.apache.hadoop.hive.ql.io.parquet.serde.ParquetHiveSerDe"
                        )
                    },
                    "Columns": [{"Name": f.name, "Type": _hive_type(f.type)} for f in schema],
                },
            },
        },
    }


def _environment() -> dict[str, Any]:
    return {
        "Variables": {
            "SLUICE_BACKEND": "aws",
            "SLUICE_BUCKET_RAW": ref("RawBucket"),
            "SLUICE_BUCKET_VERIFIED": ref("VerifiedBucket"),
            "SLUICE_BUCKET_QUARANTINE": ref("QuarantineBucket"),
            "SLUICE_BUCKET_LAKE": ref("LakeBucket"),
            "SLUICE_QUEUE_PROCESSING": ref("ProcessingQueue"),
            "SLUICE_QUEUE_PROCESSING_DLQ": ref("ProcessingDLQ"),
            "SLUICE_LEDGER_TABLE": ref("LedgerTable"),
            "SLUICE_GLUE_DATABASE": ref("GlueDatabase"),
            "SLUICE_ATHENA_WORKGROUP": ref("AthenaWorkGroup"),
            "SLUICE_LEASE_SECONDS": str(LEASE_SECONDS),
            "SLUICE_VISIBILITY_TIMEOUT_SECONDS": str(VISIBILITY_TIMEOUT_SECONDS),
        }
    }


def _s3_objects(bucket: str, actions: list[str]) -> dict[str, Any]:
    return {"Effect": "Allow", "Action": actions, "Resource": sub(f"${{{bucket}.Arn}}/*")}


def _glue_partitions() -> dict[str, Any]:
    return {
        "Effect": "Allow",
        "Action": [
            "glue:GetTable",
            "glue:GetPartitions",
            "glue:BatchCreatePartition",
        ],
        "Resource": [
            sub("arn:${AWS::Partition}:glue:${AWS::Region}:${AWS::AccountId}:catalog"),
            sub(
                "arn:${AWS::Partition}:glue:${AWS::Region}:${AWS::AccountId}:database/${GlueDatabase}"
            ),
            sub(
                "arn:${AWS::Partition}:glue:${AWS::Region}:${AWS::AccountId}:table/${GlueDatabase}/*"
            ),
        ],
    }


def _ledger_access(actions: list[str]) -> dict[str, Any]:
    return {
        "Effect": "Allow",
        "Action": actions,
        "Resource": [arn("LedgerTable"), sub("${LedgerTable.Arn}/index/*")],
    }


def build_template() -> dict[str, Any]:
    from sluice.backends.ledger.dynamodb_items import table_definition

    ledger = table_definition("placeholder")
    ledger.pop("TableName", None)
    ledger["BillingMode"] = "PAY_PER_REQUEST"
    ledger["PointInTimeRecoverySpecification"] = {"PointInTimeRecoveryEnabled": True}
    resources: dict[str, Any] = {
        "RawBucket": _bucket("raw", notify=True),
        "VerifiedBucket": _bucket("verified"),
        "QuarantineBucket": _bucket("quarantine"),
        "LakeBucket": _bucket("lake"),
        "ProcessingDLQ": _queue(DEFAULTS.dlq_retention_seconds),
        "ProcessingQueue": _queue(DEFAULTS.retention_seconds, "ProcessingDLQ"),
        "ProcessingQueuePolicy": {
            "Type": "AWS::SQS::QueuePolicy",
            "Properties": {
                "Queues": [ref("ProcessingQueue")],
                "PolicyDocument": {
                    "Version": "2012-10-17",
                    "Statement": [
                        {
                            "Effect": "Allow",
                            "Principal": {"Service": "s3.amazonaws.com"},
                            "Action": "sqs:SendMessage",
                            "Resource": arn("ProcessingQueue"),
                            "Condition": {
                                "ArnLike": {
                                    "aws:SourceArn": sub(
                                        "arn:${AWS::Partition}:s3:::${AWS::StackName}-raw-"
                                        "${AWS::AccountId}"
                                    )
                                },
                                "StringEquals": {"aws:SourceAccount": ref("AWS::AccountId")},
                            },
                        }
                    ],
                },
            },
        },
        "LedgerTable": {"Type": "AWS::DynamoDB::Table", "Properties": ledger},
        "GlueDatabase": {
            "Type": "AWS::Glue::Database",
            "Properties": {
                "CatalogId": ref("AWS::AccountId"),
                "DatabaseInput": {"Name": sub("${AWS::StackName}_sluice")},
            },
        },
        **{f"Glue{t.title().replace('_', '')}Table": _glue_table(t) for t in TYPES},
        "AthenaWorkGroup": {
            "Type": "AWS::Athena::WorkGroup",
            "Properties": {
                "Name": sub("${AWS::StackName}-sluice"),
                "WorkGroupConfiguration": {
                    "EnforceWorkGroupConfiguration": True,
                    "ResultConfiguration": {
                        "OutputLocation": sub("s3://${LakeBucket}/athena-results/")
                    },
                },
            },
        },
        "ParserFunction": {
            "Type": "AWS::Serverless::Function",
            "Properties": {
                "Handler": "sluice.aws.handlers.parser_handler",
                "Timeout": PARSER_TIMEOUT_SECONDS,
                "MemorySize": 1769,  # one full vCPU
                "Events": {
                    "Processing": {
                        "Type": "SQS",
                        "Properties": {
                            "Queue": arn("ProcessingQueue"),
                            "BatchSize": 10,
                            "FunctionResponseTypes": ["ReportBatchItemFailures"],
                        },
                    }
                },
                "Policies": [
                    {
                        "Statement": [
                            _s3_objects("RawBucket", ["s3:GetObject", "s3:GetObjectVersion"]),
                            _s3_objects("VerifiedBucket", ["s3:PutObject", "s3:DeleteObject"]),
                            _s3_objects("QuarantineBucket", ["s3:PutObject", "s3:DeleteObject"]),
                            _ledger_access(
                                [
                                    "dynamodb:GetItem",
                                    "dynamodb:PutItem",
                                    "dynamodb:UpdateItem",
                                    "dynamodb:Query",
                                    "dynamodb:TransactWriteItems",
                                    "dynamodb:ConditionCheckItem",
                                ]
                            ),
                            {
                                "Effect": "Allow",
                                "Action": ["sqs:SendMessage", "sqs:GetQueueAttributes"],
                                "Resource": arn("ProcessingDLQ"),
                            },
                            _glue_partitions(),
                        ]
                    }
                ],
            },
        },
        "ReconcilerFunction": {
            "Type": "AWS::Serverless::Function",
            "Properties": {
                "Handler": "sluice.aws.handlers.reconciler_handler",
                "Timeout": 600,
                "MemorySize": 1024,
                "Events": {
                    "Every15Minutes": {
                        "Type": "Schedule",
                        "Properties": {"Schedule": "rate(15 minutes)"},
                    }
                },
                "Policies": [
                    {
                        "Statement": [
                            {
                                "Effect": "Allow",
                                "Action": "s3:ListBucket",
                                "Resource": arn("RawBucket"),
                            },
                            _ledger_access(["dynamodb:GetItem", "dynamodb:Query"]),
                            {
                                "Effect": "Allow",
                                "Action": ["sqs:SendMessage", "sqs:GetQueueUrl"],
                                "Resource": arn("ProcessingQueue"),
                            },
                            _glue_partitions(),
                        ]
                    }
                ],
            },
        },
    }
    return {
        "AWSTemplateFormatVersion": "2010-09-09",
        "Transform": "AWS::Serverless-2016-10-31",
        "Description": "sluice: a telemetry data lake that can be replayed",
        "Parameters": {
            "PyArrowLayerArn": {
                "Type": "String",
                "Default": "",
                "Description": "A Lambda layer with pyarrow (e.g. AWS SDK for pandas); empty: none",
            }
        },
        "Conditions": {
            "HasPyArrowLayer": {"Fn::Not": [{"Fn::Equals": [ref("PyArrowLayerArn"), ""]}]}
        },
        "Globals": {
            "Function": {
                "Runtime": "python3.13",
                "CodeUri": ".",
                "Architectures": ["x86_64"],
                "Environment": _environment(),
                "Layers": {
                    "Fn::If": ["HasPyArrowLayer", [ref("PyArrowLayerArn")], ref("AWS::NoValue")]
                },
            }
        },
        "Resources": resources,
        "Outputs": {
            name: {"Value": ref(name)}
            for name in (
                "RawBucket",
                "VerifiedBucket",
                "QuarantineBucket",
                "LakeBucket",
                "ProcessingQueue",
                "ProcessingDLQ",
                "LedgerTable",
                "GlueDatabase",
                "AthenaWorkGroup",
            )
        },
    }


def render() -> str:
    """YAML text of the template (JSON is YAML; this keeps the file free of a yaml dependency
    while staying readable one key per line)."""
    return (
        "# Generated by `python -m sluice.aws.template`; do not edit by hand.\n"
        + json.dumps(build_template(), indent=2)
        + "\n"
    )


if __name__ == "__main__":
    sys.stdout.write(render())
