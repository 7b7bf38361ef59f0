"""Services: what resolvers and the CLI call. They own the transactions and talk to the
database, the cache and the broker; resolvers stay thin adapters."""
