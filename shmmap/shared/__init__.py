"""What clients and the daemon both run: the key and value codec, the wire
protocol, the segments' names and modes, a generation's view, the map's
lock, the errors and the C core's status codes. Nothing here imports the
client or the server."""
