"""Fetching posters over HTTP without Beam: a polite client (rate limits, retries, robots.txt,
allowlist, size caps) and the parsers that find where a film's poster is."""
