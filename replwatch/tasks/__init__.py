"""The daemon side of sync tasks: supervising their processes, watching their progress,
their lifecycle through the admin API, the persisted task state and `replwatch sync status`.

Kept out of the syncer engine (replwatch/sync/): the engine runs one task in its own process
and never imports this package; this package builds on the engine's records (checkpoint,
task report, sources).
"""
