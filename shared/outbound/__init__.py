"""Outbound HTTP to partners and webhooks: the SSRF guard at connect time (:mod:`.guard`), the aiohttp sender
with bounded answers (:mod:`.partner_http`), Standard Webhooks signatures (:mod:`.signing`) and which answers
to retry (:mod:`.retry_decisions`). One set of rules for every service that calls out."""
