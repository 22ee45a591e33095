"""The extractor: turns run requests into member batches, paging the query store by key."""
