"""RSS/Atom feeds: a guarded fetcher, feedparser mapping, and add/poll services."""
