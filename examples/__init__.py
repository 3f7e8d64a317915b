"""Examples that use the five daemons together, each a package of its own
(`examples.orders`: the order service). Nothing under `core/` or a daemon imports them."""
