"""shmmap: a key-value map shared by processes through POSIX shared memory."""
