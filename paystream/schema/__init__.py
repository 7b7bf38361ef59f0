"""The schema's GraphQL types and extensions (the root types live in ``resolvers``)."""
