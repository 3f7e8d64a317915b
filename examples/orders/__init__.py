"""The order/payment service built on all five daemons (see examples/orders/README.md).

Modules: `cluster` (the local cluster from the daemons' launch declarations, on free ports),
`store` (orders and users in shardstore, the status compare-and-set), `service` (ids,
product pages, invoices, the two jobs), `jobs` (the embedded scheduler worker),
`http_api` (the JSON HTTP API), `load` (the load and its checks), `demo` (`make demo`).
"""
