"""paystream: a payments API for GraphQL clients."""

__version__ = "0.1.0"
