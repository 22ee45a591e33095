"""Pure domain objects and rules: no Kafka, HTTP or database client is imported below this package."""
