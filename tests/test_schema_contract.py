"""schema.graphql is the code's schema, and the code breaks nothing that was published.

"Published" is schema.graphql as committed at HEAD (the working file when git or the commit is
not there). On a clean clone (CI) HEAD and the working tree agree, so the breaking check then
compares the code against the file; the tests of ``breaking_changes`` below use hand-written
before/after pairs so the check itself is known to fail when it should.
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest
from click.testing import CliRunner

from paystream.cli import main
from paystream.resolvers.contract import (
    BreakingChange,
    accepted_changes,
    breaking_changes,
    schema_sdl,
    sdl_digest,
    unaccepted_changes,
)

ROOT = Path(__file__).resolve().parent.parent
SCHEMA_FILE = ROOT / "schema.graphql"
BREAKING_FILE = ROOT / "schema.breaking"

# DESIGN.md section 2, the names the issues refer to, verbatim.
DESIGN_SECTION_2 = """
scalar Decimal
scalar DateTime
enum PaymentStatus { PENDING SUCCEEDED FAILED }
type Payment {
  id: ID!  status: PaymentStatus!  amount: Decimal!  currency: String!
  sourceAccount: Account!  destinationAccount: Account!
  reference: String  failureReason: String
  createdAt: DateTime!  updatedAt: DateTime!
}
type Account {
  id: ID!  name: String!  currency: String!
  balance: Decimal
  payments(first: Int = 20, after: String): PaymentConnection!
}
type PaymentConnection { edges: [PaymentEdge!]!  pageInfo: PageInfo! }
type PaymentEdge { cursor: String!  node: Payment! }
type PageInfo { hasNextPage: Boolean!  endCursor: String }
input CreatePaymentInput {
  idempotencyKey: String!  sourceAccountId: ID!  destinationAccountId: ID!
  amount: Decimal!  currency: String!  reference: String
}
type Query {
  payment(id: ID!): Payment
  account(id: ID!): Account
  payments(accountId: ID!, first: Int = 20, after: String): PaymentConnection!
}
type Mutation { createPayment(input: CreatePaymentInput!): Payment! }
type Subscription {
  paymentStatus(id: ID!): Payment!
  accountActivity(accountId: ID!): Payment!
}
"""

# DESIGN.md section 2c (inquiry, issue 19), with the types it extends as far as it needs.
DESIGN_SECTION_2C = """
scalar Decimal
scalar DateTime
enum PaymentStatus { PENDING AUTHORIZED SUCCEEDED FAILED CANCELED }
type PageInfo { hasNextPage: Boolean!  endCursor: String }
enum EntryKind { PAYMENT REFUND CAPTURE HOLD RELEASE FUNDING }
type LedgerEntry {
  id: ID!  kind: EntryKind!  amount: Decimal!
  balanceAfter: Decimal!  createdAt: DateTime!  payment: Payment  refund: Refund
}
type LedgerEntryConnection { edges: [LedgerEntryEdge!]!  pageInfo: PageInfo! }
type LedgerEntryEdge { cursor: String!  node: LedgerEntry! }
type MetadataEntry { key: String!  value: String! }
input MetadataEntryInput { key: String!  value: String! }
enum PaymentDirection { INCOMING OUTGOING }
input PaymentFilter {
  status: PaymentStatus  direction: PaymentDirection  createdFrom: DateTime  createdTo: DateTime
  reference: String  metadataKey: String  metadataValue: String
}
type Account {
  entries(first: Int = 20, after: String, from: DateTime, to: DateTime): LedgerEntryConnection!
  balanceAt(at: DateTime!): Decimal
  payments(first: Int = 20, after: String, filter: PaymentFilter): PaymentConnection!
  metadata: [MetadataEntry!]!
}
type Payment { metadata: [MetadataEntry!]! }
type Refund { metadata: [MetadataEntry!]! }
type PaymentConnection { pageInfo: PageInfo! }
input CreatePaymentInput {
  idempotencyKey: String!  sourceAccountId: ID!  destinationAccountId: ID!
  amount: Decimal!  currency: String!  metadata: [MetadataEntryInput!]
}
input CreateAccountInput {
  idempotencyKey: String!  name: String!  currency: String!  metadata: [MetadataEntryInput!]
}
input RefundPaymentInput {
  idempotencyKey: String!  paymentId: ID!  metadata: [MetadataEntryInput!]
}
type Query {
  payments(accountId: ID!, first: Int = 20, after: String, filter: PaymentFilter): PaymentConnection!
}
"""

BEFORE = """
type Query { payment(id: ID!): Payment }
enum PaymentStatus { PENDING SUCCEEDED FAILED }
type Payment { id: ID!  status: PaymentStatus!  reference: String  failureReason: String }
"""


def published_sdl() -> str:
    """schema.graphql as committed at HEAD; the working file without git or before the first
    commit that has it."""
    git = shutil.which("git")
    if git is not None:
        done = subprocess.run([git, "show", "HEAD:schema.graphql"], cwd=ROOT,
                              capture_output=True, text=True, check=False)
        if done.returncode == 0:
            return done.stdout
    return SCHEMA_FILE.read_text()


def test_schema_graphql_is_the_schema_the_code_serves() -> None:
    assert SCHEMA_FILE.read_text() == schema_sdl(), (
        "schema.graphql differs from the code's schema: run `paystream schema > schema.graphql`"
        " and review the diff (breaking changes must also be listed in schema.breaking)"
    )


def test_the_code_breaks_nothing_published_unless_accepted() -> None:
    missing = unaccepted_changes(published_sdl(), schema_sdl(), BREAKING_FILE.read_text())
    assert not missing, (
        "breaking changes against the published schema.graphql (HEAD). Keep the old names, or,"
        " if the break is intended, add these lines to schema.breaking with a comment saying"
        " why:\n" + "\n".join(missing)
    )


def test_the_code_keeps_every_name_of_the_design_contract() -> None:
    assert breaking_changes(DESIGN_SECTION_2, schema_sdl()) == []


def test_the_code_has_every_inquiry_name_of_the_design_contract() -> None:
    assert breaking_changes(DESIGN_SECTION_2C, schema_sdl()) == []


def test_cli_prints_the_schema() -> None:
    done = CliRunner().invoke(main, ["schema"])
    assert done.exit_code == 0, done.output
    assert done.output == schema_sdl()


def test_additions_are_not_breaking() -> None:
    after = BEFORE.replace("failureReason: String", "failureReason: String  note: String") \
        .replace("payment(id: ID!)", "payment(id: ID!, at: String)") \
        .replace("FAILED }", "FAILED CANCELED }")
    assert after != BEFORE
    assert breaking_changes(BEFORE, after) == []


def test_a_renamed_field_is_a_removal() -> None:
    after = BEFORE.replace("failureReason:", "failure:")
    assert breaking_changes(BEFORE, after) == [
        BreakingChange("FIELD_REMOVED", "Field Payment.failureReason was removed.")
    ]


@pytest.mark.parametrize(("before", "after", "kind"), [
    ("reference: String", "reference: Int", "FIELD_CHANGED_KIND"),
    ("status: PaymentStatus!", "status: PaymentStatus", "FIELD_CHANGED_KIND"),
    ("SUCCEEDED FAILED", "SUCCEEDED", "VALUE_REMOVED_FROM_ENUM"),
    ("payment(id: ID!)", "payment(id: ID!, at: String!)", "REQUIRED_ARG_ADDED"),
    ("payment(id: ID!)", "payment(key: ID!)", "ARG_REMOVED"),
])
def test_each_kind_of_break_is_found(before: str, after: str, kind: str) -> None:
    assert before in BEFORE
    changed = BEFORE.replace(before, after)
    assert kind in {change.kind for change in breaking_changes(BEFORE, changed)}


def test_a_listed_break_is_accepted_against_the_schema_it_was_listed_for() -> None:
    after = BEFORE.replace("  reference: String", "")
    missing = unaccepted_changes(BEFORE, after, "")
    assert missing == [f"{sdl_digest(BEFORE)} FIELD_REMOVED Field Payment.reference was removed."]
    listed = "# Payment.reference: unused, partners told on 2024-05-01\n" + \
        missing[0].replace(" ", "   ") + "\n"
    assert unaccepted_changes(BEFORE, after, listed) == []
    # The same entry accepts nothing against another published schema.
    other = BEFORE + "type Extra { x: Int }\n"
    assert unaccepted_changes(other, other.replace("  reference: String", ""), listed) == [
        f"{sdl_digest(other)} FIELD_REMOVED Field Payment.reference was removed."
    ]


def test_schema_breaking_file_parses() -> None:
    entries = accepted_changes(BREAKING_FILE.read_text())
    for entry in entries:
        digest, kind, description = entry.split(" ", 2)
        assert len(digest) == 12 and kind.isupper() and description, entry
    assert accepted_changes("# only a comment\n\n") == set()
