"""The upstream tier (``serve --upstream``): the daemon as a host-wide near
cache of a key range of Redis. ``base`` is what any upstream gives the
daemon (Upstream, Write, Update), ``redisnode`` one Redis server,
``values`` how Redis' keys and values look in the map, ``nearcache`` the
daemon's side: writes forwarded, updates committed, the stats."""
