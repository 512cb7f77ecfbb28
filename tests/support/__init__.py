"""The tests' one harness: everything a test module needs besides its own scenario. Test
modules import from here, never from one another.

- servers: server builds, RedisProcess / ServerSet, free_port, wait_for, wait_synced,
  BlackHole, BackgroundWriter, online_replicas;
- monitor: make_monitor, MonitorLoop / watching (async), Driver (plain code), replica_view,
  node_view, describe;
- daemons: cli, RunningDaemon (`replwatch run`), start_routing_daemon, fetch, series / value,
  parse_metrics / sample_value, CONTRACT, child_pids;
- netns: StarvedLink (namespace + veth, tbf or htb throttle), require_netns, MarkedWriter;
- syncing, datasets: sync tasks between test servers (in threads, or as `replwatch sync run`
  processes), the every-type dataset;
- clustering, sentinels: a real Redis Cluster, Sentinel processes;
- promstack: Prometheus, Alertmanager and a webhook receiver;
- faults: the black-holed fleet and /metrics under load (also used by bench/fault_scale.py);
- hostile: a scripted hostile RESP server;
- tlsfiles: a throw-away PKI;
- outside_workload, outside_checker, outside_pairs: the syncer seen from outside (issue 17):
  the workload, the independent checker, the pairs of builds and their shared scenarios;
- status: made-up snapshots and routing tables for the status surfaces;
- browser: headless Chromium (the `browser` fixture) and the page's durations.

Fixtures built on these live in tests/conftest.py.
"""
