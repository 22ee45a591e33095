"""The dispatcher: renders member batches into HTTP requests and delivers them with retries."""
