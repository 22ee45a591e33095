"""Local, real infrastructure for the demo and the tests: a Kafka broker from Maven Central, a throwaway
PostgreSQL cluster, an HTTP receiver and an SMTP sink, all on 127.0.0.1. Nothing here runs in production."""
