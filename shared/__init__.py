"""The common library of the member-export services: event models (the wire contract), settings, Kafka
plumbing, the catalog, the query store and the pure domain logic they share."""
