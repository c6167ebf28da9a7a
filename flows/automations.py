"""A Prefect automation that notifies when any vistune flow run fails or crashes.

    python -m flows.automations apply --webhook-url https://hooks.example.com/...   # POSTs JSON {subject, body}
    python -m flows.automations apply --block slack-webhook/team-alerts           # any notification block

`apply` talks to the server at PREFECT_API_URL and replaces an automation of the same name, so running it
again is safe. The trigger matches the flows by name (`VISTUNE_FLOWS`), not by tag: runs started in-process
(`vistune run`) carry no deployment tags. The server's actions service sends the notification, so the
webhook URL must be reachable from the server.
"""

from __future__ import annotations

import argparse
from datetime import timedelta
from uuid import UUID

from prefect.automations import Automation, EventTrigger, SendNotification

AUTOMATION_NAME = "vistune-flow-run-failed"
WEBHOOK_BLOCK = "vistune-failure-webhook"  # the CustomWebhookNotificationBlock `--webhook-url` saves
VISTUNE_FLOWS = ["pipeline", "ingest", "generate", "curate", "train"]

SUBJECT = "vistune: flow run {{ flow_run.name }} ({{ flow.name }}) is {{ flow_run.state.name }}"
BODY = """Flow run {{ flow_run.name }} of flow {{ flow.name }} entered {{ flow_run.state.name }}:
{{ flow_run.state.message }}
{{ flow_run|ui_url }}"""


def automation(block_document_id: UUID) -> Automation:
    """The automation: one notification per vistune flow run that enters Failed or Crashed."""
    return Automation(
        name=AUTOMATION_NAME,
        description="Notify when a vistune flow run (" + ", ".join(VISTUNE_FLOWS) + ") fails or crashes.",
        enabled=True,
        trigger=EventTrigger(
            expect={"prefect.flow-run.Failed", "prefect.flow-run.Crashed"},
            match={"prefect.resource.id": "prefect.flow-run.*"},
            match_related={"prefect.resource.role": "flow", "prefect.resource.name": VISTUNE_FLOWS},
            posture="Reactive",
            threshold=1,
            within=timedelta(0),
        ),
        actions=[SendNotification(block_document_id=block_document_id, subject=SUBJECT, body=BODY)],
    )


def notification_block_id(*, webhook_url: str | None = None, block: str | None = None) -> UUID:
    """Save a webhook notification block for `webhook_url`, or load the block named `block` (`type-slug/name`)."""
    from prefect.blocks.core import Block
    from prefect.blocks.notifications import CustomWebhookNotificationBlock

    if webhook_url:
        saved = CustomWebhookNotificationBlock(
            name=WEBHOOK_BLOCK, url=webhook_url, method="POST",
            json_data={"subject": "{{subject}}", "body": "{{body}}"},
        )
        return saved.save(WEBHOOK_BLOCK, overwrite=True)
    if not block or "/" not in block:
        raise SystemExit("give --webhook-url URL, or --block TYPE-SLUG/NAME of an existing notification block")
    loaded = Block.load(block)
    assert loaded._block_document_id is not None
    return loaded._block_document_id


def apply(block_document_id: UUID) -> UUID:
    """Create the automation on the server, replacing one of the same name; returns its id."""
    from prefect.client.orchestration import get_client

    with get_client(sync_client=True) as client:
        for existing in client.read_automations_by_name(AUTOMATION_NAME):
            client.delete_automation(existing.id)
    return automation(block_document_id).create().id


def main(argv: list[str] | None = None) -> None:
    """`python -m flows.automations apply (--webhook-url URL | --block TYPE-SLUG/NAME)`."""
    parser = argparse.ArgumentParser(prog="python -m flows.automations", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    apply_parser = sub.add_parser("apply", help="create (or replace) the automation on the server at PREFECT_API_URL")
    target = apply_parser.add_mutually_exclusive_group(required=True)
    target.add_argument("--webhook-url", metavar="URL", help=f"POST JSON {{subject, body}} here (saved as block "
                                                             f"{WEBHOOK_BLOCK!r})")
    target.add_argument("--block", metavar="TYPE-SLUG/NAME", help="an existing notification block, "
                                                                 "e.g. slack-webhook/team-alerts")
    args = parser.parse_args(argv)
    block_id = notification_block_id(webhook_url=args.webhook_url, block=args.block)
    automation_id = apply(block_id)
    print(f"automation {AUTOMATION_NAME!r} ({automation_id}) notifies block {block_id} when a vistune flow run "
          "fails or crashes")


if __name__ == "__main__":
    main()
