"""Bounces and complaints: reports that come back after sending, read three ways
(`newsletter bounces ingest`, the mailbox poller, provider webhooks) and handled by
one code path, `newsletter.bounces.intake`."""
