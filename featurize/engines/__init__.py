"""Where shards are embedded. ``plan.py`` (driver: what is still to compute), ``base.py`` (the ``Engine``
interface), ``local.py`` (one model in this process, the default), ``ray.py`` (a Ray cluster) and
``merge.py`` (driver: finished batches kept on disk, then one cache written)."""
