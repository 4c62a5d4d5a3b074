"""The edges: the Redis Streams and Service Bus backends of the bus port, the Redis state, and
the MATI, Entra ID and Sentinel clients with their HTTP and TLS plumbing. Each translates its
library's exceptions into the core's error tree."""
