"""kvcache: a memcached-compatible cache daemon, consistent-hashed (ketama) across daemons."""
