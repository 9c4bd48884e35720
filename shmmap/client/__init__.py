"""What runs in a client process: the map (``shmmap.connect``), its reader
of shared memory, its cache, its request channel and reader slot, and its
tracer. Nothing here imports the server."""
