"""GraphQL types of webhook endpoints and their delivery log (DESIGN.md section 2b)."""

from __future__ import annotations

from datetime import datetime

import strawberry

from ..db.webhooks import DeliveryRow, EndpointRow


@strawberry.type(description="Where the caller's webhooks are POSTed, and which events.")
class WebhookEndpoint:
    row: strawberry.Private[EndpointRow]

    @strawberry.field
    def id(self) -> strawberry.ID:
        return strawberry.ID(str(self.row.id))

    @strawberry.field
    def url(self) -> str:
        return self.row.url

    @strawberry.field
    def events(self) -> list[str]:
        return list(self.row.events)

    @strawberry.field(description="ENABLED, or DISABLED after failing for 3 days (until "
                      "enableWebhookEndpoint).")
    def status(self) -> str:
        return self.row.status

    @strawberry.field
    def created_at(self) -> datetime:
        return self.row.created_at


@strawberry.type(description="An endpoint with its signing secret, shown this once.")
class WebhookEndpointCreated:
    endpoint: WebhookEndpoint
    secret: str


@strawberry.type(description="One attempt to deliver an event to an endpoint.")
class WebhookDelivery:
    row: strawberry.Private[DeliveryRow]

    @strawberry.field(description="Pass as `after` to list older attempts.")
    def id(self) -> strawberry.ID:
        return strawberry.ID(str(self.row.id))

    @strawberry.field(description="The event's id (the Paystream-Event-Id header).")
    def event_id(self) -> strawberry.ID:
        return strawberry.ID(str(self.row.event_id))

    @strawberry.field
    def attempt(self) -> int:
        return self.row.attempt

    @strawberry.field(description="The HTTP status answered; null when none came back.")
    def response_status(self) -> int | None:
        return self.row.response_status

    @strawberry.field(description="What went wrong; null for a 2xx answer.")
    def error(self) -> str | None:
        return self.row.error

    @strawberry.field
    def at(self) -> datetime:
        return self.row.at
