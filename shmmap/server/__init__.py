"""What runs in the daemon process (``shmmap serve``): the server and its
transport, dispatch, request handlers, the map's writer, promotion, the
reader slots, statistics, metrics, the trace recorder and the log."""
