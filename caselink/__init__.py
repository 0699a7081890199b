"""caselink: turn alerting webhooks into Datadog Case Management links.

The package holds the core, one module per concern, in the order a webhook
travels through it: config, events, rules, store, datadog, worker. `web` and
`cli` are the two front doors; `handlers/` (beside this package) turns each
sender's payload into events.
"""
