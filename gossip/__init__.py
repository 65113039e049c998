"""Who talks to whom and when: membership, sampling and round protocols. Never imports torch."""
