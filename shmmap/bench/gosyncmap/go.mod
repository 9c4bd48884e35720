module shmmap/bench/gosyncmap

go 1.19
