"""Many workers sharing many streams (``SSE_CLUSTER_URL``): leases in Redis with
fencing tokens, takeover after a crash, balance. See :mod:`.worker`."""
