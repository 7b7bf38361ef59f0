"""Webhooks to partner back ends: the sender role (``paystream webhooks``) and what the API
shares with it (secrets at rest, URL rules, the payload a partner may see)."""
