"""The ``shmmap`` command (cli.main) and what its commands show: top,
doctor, trace, the demo; serve's options, which the launcher shares."""
